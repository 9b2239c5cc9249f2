// Package bench is the side-by-side benchmark harness behind `make bench`:
// one fixed backend, the same load against it directly, through nginx,
// HAProxy, Caddy, Traefik and through petmesh (edge public route, edge
// JWT route, edge → sidecar → app), alternating targets in rounds, with
// wrk for closed-loop throughput and an open-loop fixed-rate generator
// for latency percentiles. See BENCHMARKS.md at the repository root.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"time"
)

// Target names, in the order they are measured within a round.
const (
	TargetDirect  = "direct"
	TargetNginx   = "nginx"
	TargetHAProxy = "haproxy"
	TargetCaddy   = "caddy"
	TargetTraefik = "traefik"
	TargetPublic  = "petmesh-public"
	TargetJWT     = "petmesh-jwt"
	TargetMesh    = "petmesh-mesh"
)

// AllTargets is every target the harness knows, in measuring order.
var AllTargets = []string{TargetDirect, TargetNginx, TargetHAProxy, TargetCaddy, TargetTraefik, TargetPublic, TargetJWT, TargetMesh}

// Config of one harness run. Zero values take the defaults noted.
type Config struct {
	// Targets to measure (default AllTargets). A peer whose binary is not
	// found is skipped and listed in Report.Skipped, unless Require is set.
	Targets []string
	// Require makes a missing peer an error instead of a skip.
	Require     bool
	BinDir      string // petmesh binaries (edge, sidecar, controlplane); required for petmesh targets
	WorkDir     string // configs and logs (default: a temp dir, removed unless KeepWorkDir)
	KeepWorkDir bool

	Nginx, HAProxy, Caddy, Traefik, Wrk string // binaries (default: found on PATH; Traefik: none)

	Rounds   int           // default 3
	Duration time.Duration // wrk duration per target and round (default 10s)
	Warmup   time.Duration // wrk once per target before the rounds (default 3s)
	Threads  int           // wrk -t (default 2)
	Conns    int           // wrk -c, and the fixed-rate load's connections (default 64)
	Rate     int           // fixed-rate requests per second (default 1000)
	// RateDuration is the fixed-rate window per target and round (default
	// Duration); each window is preceded by a 500ms unrecorded lead-in.
	RateDuration time.Duration
	// ProfileDir, when set, receives CPU and allocation profiles of the
	// edge and the sidecar taken during an extra wrk run per petmesh
	// target after the rounds (not part of the figures).
	ProfileDir string
	// ProfileRel, when set, makes the profile paths in the report
	// relative to it (the report's own directory).
	ProfileRel string
	Log        io.Writer // progress (default io.Discard)
}

func (c *Config) defaults() {
	if len(c.Targets) == 0 {
		c.Targets = AllTargets
	}
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	}
	if c.Threads <= 0 {
		c.Threads = 2
	}
	if c.Conns <= 0 {
		c.Conns = 64
	}
	if c.Rate <= 0 {
		c.Rate = 1000
	}
	if c.RateDuration <= 0 {
		c.RateDuration = c.Duration
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	look := func(p *string, name string) {
		if *p == "" {
			if path, err := exec.LookPath(name); err == nil {
				*p = path
			}
		}
	}
	look(&c.Nginx, "nginx")
	look(&c.HAProxy, "haproxy")
	look(&c.Caddy, "caddy")
	look(&c.Wrk, "wrk")
}

// Report is the harness's result, written as JSON.
type Report struct {
	Generated  time.Time      `json:"generated"`
	Commit     string         `json:"commit"`
	Conditions Conditions     `json:"conditions"`
	Targets    []TargetResult `json:"targets"`
	Skipped    []Skipped      `json:"skipped,omitempty"`
	Profiles   []string       `json:"profiles,omitempty"`
}

// Conditions of the run.
type Conditions struct {
	CPUModel     string     `json:"cpu_model"`
	CPUs         int        `json:"cpus"`
	GoVersion    string     `json:"go_version"`
	LoadBefore   [3]float64 `json:"load_average_before"`
	LoadAfter    [3]float64 `json:"load_average_after"`
	Rounds       int        `json:"rounds"`
	Duration     string     `json:"wrk_duration"`
	Warmup       string     `json:"wrk_warmup"`
	Threads      int        `json:"wrk_threads"`
	Conns        int        `json:"wrk_connections"`
	Rate         int        `json:"fixed_rate_rps"`
	RateDuration string     `json:"fixed_rate_duration"`
	Backend      string     `json:"backend"`
	WallSeconds  float64    `json:"wall_seconds"`
}

// Skipped is a target that was not measured, and why.
type Skipped struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// TargetResult is one target's rounds and their medians.
type TargetResult struct {
	Name    string `json:"name"`
	Desc    string `json:"description"`
	Version string `json:"version"`
	// Medians over rounds.
	RPS         float64 `json:"rps"`
	WrkP50      float64 `json:"wrk_p50_ms"`
	WrkP99      float64 `json:"wrk_p99_ms"`
	FixedP50    float64 `json:"fixed_p50_ms"`
	FixedP90    float64 `json:"fixed_p90_ms"`
	FixedP99    float64 `json:"fixed_p99_ms"`
	FixedP999   float64 `json:"fixed_p999_ms"`
	CPUPer1k    float64 `json:"cpu_ms_per_1k_requests"`
	RSSMB       float64 `json:"rss_mb"`
	WrkErrors   int64   `json:"wrk_errors"`
	FixedErrors int64   `json:"fixed_errors"`
	Rounds      []Round `json:"rounds"`
}

// Round is one target's measurements in one round.
type Round struct {
	Round int             `json:"round"`
	Wrk   WrkResult       `json:"wrk"`
	Fixed FixedRateResult `json:"fixed"`
	// CPUPer1k is the CPU time of the target's own processes (the proxy,
	// not the backend or the load generator) per 1,000 requests during the
	// wrk run, in milliseconds. Zero for direct.
	CPUPer1k float64 `json:"cpu_ms_per_1k_requests"`
	RSSMB    float64 `json:"rss_mb"`
}

// ErrMissing is returned (wrapped) when a required program is not found.
var ErrMissing = errors.New("not found")

// Run starts the backend and every target, measures them in alternating
// rounds and returns the report. Every process it started is stopped
// before it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	began := time.Now()
	if cfg.Wrk == "" {
		return nil, fmt.Errorf("wrk: %w (apt-get install wrk)", ErrMissing)
	}
	if cfg.Nginx == "" {
		return nil, fmt.Errorf("nginx (the backend): %w (apt-get install nginx-light)", ErrMissing)
	}
	if cfg.WorkDir == "" {
		d, err := os.MkdirTemp("", "petmesh-bench-")
		if err != nil {
			return nil, err
		}
		cfg.WorkDir = d
		if !cfg.KeepWorkDir {
			defer func() { _ = os.RemoveAll(d) }()
		}
	}
	model, ncpu := CPUModel()
	rep := &Report{Generated: began.UTC(), Commit: gitDescribe(), Conditions: Conditions{
		CPUModel: model, CPUs: ncpu, GoVersion: runtime.Version(), LoadBefore: LoadAvg(),
		Rounds: cfg.Rounds, Duration: cfg.Duration.String(), Warmup: cfg.Warmup.String(),
		Threads: cfg.Threads, Conns: cfg.Conns, Rate: cfg.Rate, RateDuration: cfg.RateDuration.String(),
	}}

	var stops []func()
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()
	backend, err := startBackend(ctx, cfg.WorkDir, cfg.Nginx)
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	stops = append(stops, backend.procs[0].stop)
	rep.Conditions.Backend = "nginx " + backend.Version + " (1 worker, fixed " + fmt.Sprint(len(BackendBody)) + "-byte JSON answer from its configuration, no access log)"
	backendPort := portOf(backend.URL)

	want := map[string]bool{}
	for _, n := range cfg.Targets {
		if !slices.Contains(AllTargets, n) {
			return nil, fmt.Errorf("unknown target %q (known: %v)", n, AllTargets)
		}
		want[n] = true
	}
	byName := map[string]*target{}
	skip := func(name, reason string) error {
		if cfg.Require {
			return fmt.Errorf("%s: %s", name, reason)
		}
		rep.Skipped = append(rep.Skipped, Skipped{Name: name, Reason: reason})
		fmt.Fprintf(cfg.Log, "skipping %s: %s\n", name, reason)
		return nil
	}
	if want[TargetDirect] {
		byName[TargetDirect] = &target{Name: TargetDirect, Desc: "the backend itself (nginx), no proxy", Version: backend.Version, URL: backend.URL}
	}
	peers := []struct {
		name, bin string
		start     func(context.Context, string, string, int) (*target, error)
		desc      string
	}{
		{TargetNginx, cfg.Nginx, startNginxProxy, "nginx reverse proxy"},
		{TargetHAProxy, cfg.HAProxy, startHAProxy, "HAProxy, HTTP mode"},
		{TargetCaddy, cfg.Caddy, startCaddy, "Caddy reverse_proxy"},
		{TargetTraefik, cfg.Traefik, startTraefik, "Traefik, file provider"},
	}
	for _, p := range peers {
		if !want[p.name] {
			continue
		}
		if p.bin == "" {
			if err := skip(p.name, "binary "+ErrMissing.Error()); err != nil {
				return nil, err
			}
			continue
		}
		fmt.Fprintf(cfg.Log, "starting %s (%s)\n", p.name, p.bin)
		t, err := p.start(ctx, cfg.WorkDir, p.bin, backendPort)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		t.Desc = p.desc
		stops = append(stops, func() {
			for _, pr := range t.procs {
				pr.stop()
			}
		})
		byName[p.name] = t
	}
	var mesh *petmesh
	if want[TargetPublic] || want[TargetJWT] || want[TargetMesh] {
		if cfg.BinDir == "" {
			return nil, errors.New("petmesh targets need Config.BinDir (edge, sidecar, controlplane)")
		}
		fmt.Fprintln(cfg.Log, "starting petmesh (control plane, edge, sidecar)")
		m, ts, err := startPetmesh(ctx, cfg.WorkDir, cfg.BinDir, backendPort)
		if err != nil {
			return nil, fmt.Errorf("petmesh: %w", err)
		}
		mesh = m
		stops = append(stops, m.stop)
		for _, t := range ts {
			if want[t.Name] {
				byName[t.Name] = t
			}
		}
	}
	var order []*target
	for _, n := range AllTargets {
		if t, ok := byName[n]; ok {
			order = append(order, t)
		}
	}
	if len(order) == 0 {
		return nil, errors.New("no target to measure")
	}

	wrk := func(t *target, d time.Duration) (*WrkResult, error) {
		return RunWrk(ctx, WrkConfig{Bin: cfg.Wrk, URL: t.URL, Header: t.headerLine(), Threads: cfg.Threads, Conns: cfg.Conns, Duration: d})
	}
	if cfg.Warmup > 0 {
		for _, t := range order {
			fmt.Fprintf(cfg.Log, "warm-up %s (%v)\n", t.Name, cfg.Warmup)
			if _, err := wrk(t, cfg.Warmup); err != nil {
				return nil, err
			}
		}
	}
	rounds := map[string][]Round{}
	for r := 1; r <= cfg.Rounds; r++ {
		if mesh != nil {
			if err := mesh.refresh(ctx); err != nil {
				return nil, fmt.Errorf("token: %w", err)
			}
		}
		// Each round starts one target later, so that no target is always
		// measured right after the same neighbour.
		for i := range order {
			t := order[(i+r-1)%len(order)]
			cpu0 := t.cpu()
			w, err := wrk(t, cfg.Duration)
			if err != nil {
				return nil, err
			}
			cpu := t.cpu() - cpu0
			rss := float64(t.rss()) / (1 << 20)
			f, err := FixedRate(ctx, FixedRateConfig{URL: t.URL, Header: t.Header, Rate: cfg.Rate, Conns: cfg.Conns, Lead: 500 * time.Millisecond, Duration: cfg.RateDuration})
			if err != nil {
				return nil, fmt.Errorf("%s fixed rate: %w", t.Name, err)
			}
			rd := Round{Round: r, Wrk: *w, Fixed: *f, RSSMB: rss}
			if len(t.procs) > 0 && w.Requests > 0 {
				rd.CPUPer1k = float64(cpu.Microseconds()) / 1000 / float64(w.Requests) * 1000
			}
			rounds[t.Name] = append(rounds[t.Name], rd)
			fmt.Fprintf(cfg.Log, "round %d %-15s wrk %9.0f req/s p99 %7.2f ms errors %d | %d rps p50 %6.2f p99 %7.2f p99.9 %7.2f ms errors %d\n",
				r, t.Name, w.RPS, w.P99, w.Errors, cfg.Rate, f.Latency.P50, f.Latency.P99, f.Latency.P999, f.Errors)
		}
	}
	for _, t := range order {
		rep.Targets = append(rep.Targets, summarize(t, rounds[t.Name]))
	}
	if cfg.ProfileDir != "" && mesh != nil {
		files, err := profile(ctx, cfg, mesh, byName, wrk)
		if err != nil {
			return nil, err
		}
		rep.Profiles = files
	}
	rep.Conditions.LoadAfter = LoadAvg()
	rep.Conditions.WallSeconds = time.Since(began).Seconds()
	return rep, nil
}

// summarize takes the medians of a target's rounds.
func summarize(t *target, rs []Round) TargetResult {
	tr := TargetResult{Name: t.Name, Desc: t.Desc, Version: t.Version, Rounds: rs}
	med := func(f func(Round) float64) float64 {
		v := make([]float64, 0, len(rs))
		for _, r := range rs {
			v = append(v, f(r))
		}
		return median(v)
	}
	tr.RPS = med(func(r Round) float64 { return r.Wrk.RPS })
	tr.WrkP50 = med(func(r Round) float64 { return r.Wrk.P50 })
	tr.WrkP99 = med(func(r Round) float64 { return r.Wrk.P99 })
	tr.FixedP50 = med(func(r Round) float64 { return r.Fixed.Latency.P50 })
	tr.FixedP90 = med(func(r Round) float64 { return r.Fixed.Latency.P90 })
	tr.FixedP99 = med(func(r Round) float64 { return r.Fixed.Latency.P99 })
	tr.FixedP999 = med(func(r Round) float64 { return r.Fixed.Latency.P999 })
	tr.CPUPer1k = med(func(r Round) float64 { return r.CPUPer1k })
	tr.RSSMB = med(func(r Round) float64 { return r.RSSMB })
	for _, r := range rs {
		tr.WrkErrors += r.Wrk.Errors
		tr.FixedErrors += r.Fixed.Errors
	}
	return tr
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// profile takes a CPU and an allocation profile of the edge (during a wrk
// run of the JWT route) and of the sidecar (during a run of the mesh
// route), each over Duration, and writes them to ProfileDir.
func profile(ctx context.Context, cfg Config, m *petmesh, byName map[string]*target, wrk func(*target, time.Duration) (*WrkResult, error)) ([]string, error) {
	if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
		return nil, err
	}
	secs := max(int(cfg.Duration/time.Second), 1)
	var files []string
	for _, p := range []struct {
		target, who, admin string
	}{
		{TargetJWT, "edge", m.edgeAdmin},
		{TargetMesh, "sidecar", m.sidecarAdmin},
	} {
		t, ok := byName[p.target]
		if !ok {
			continue
		}
		for _, kind := range []string{"cpu", "allocs"} {
			path := "/debug/pprof/profile"
			if kind == "allocs" {
				path = "/debug/pprof/allocs"
			}
			src := fmt.Sprintf("%s%s?seconds=%d", p.admin, path, secs)
			file := filepath.Join(cfg.ProfileDir, fmt.Sprintf("%s-%s.pprof", p.who, kind))
			fmt.Fprintf(cfg.Log, "profiling %s (%s) during %s\n", p.who, kind, p.target)
			errc := make(chan error, 1)
			go func() { errc <- fetch(ctx, src, file, time.Duration(secs+30)*time.Second) }()
			if _, err := wrk(t, time.Duration(secs)*time.Second+time.Second); err != nil {
				return nil, err
			}
			if err := <-errc; err != nil {
				return nil, fmt.Errorf("profile %s %s: %w", p.who, kind, err)
			}
			if rel, err := filepath.Rel(cfg.ProfileRel, file); err == nil && cfg.ProfileRel != "" {
				file = rel
			}
			files = append(files, file)
		}
	}
	return files, nil
}

func fetch(ctx context.Context, url, file string, timeout time.Duration) error {
	client := &http.Client{Timeout: timeout}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func portOf(raw string) int {
	u, err := url.Parse(raw)
	if err != nil {
		return 0
	}
	port, _ := strconv.Atoi(u.Port())
	return port
}
