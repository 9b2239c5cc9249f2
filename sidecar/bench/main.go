// Command bench measures the sidecar's resource use and added latency at a
// fixed request rate: it builds and starts the real control plane and
// sidecar binaries, the app (this program with -serve-app) and an
// in-process token issuer, then drives a fixed-rate (open-loop) load at the
// app directly and through the sidecar's inbound listener (token verified
// on every request) at the same time, and
// reports p50/p99/p99.9 latencies, the added latency, and the sidecar's
// RSS and CPU from /proc. Linux only.
//
//	go run ./sidecar/bench -rps 1000 -duration 30s
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/petmesh/petmesh/internal/jwtauth"
)

const regToken = "bench-registration-token-0123456789"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	rps := flag.Int("rps", 1000, "fixed request rate")
	dur := flag.Duration("duration", 30*time.Second, "measured duration per target")
	warm := flag.Duration("warmup", 5*time.Second, "warm-up at the same rate before measuring")
	accessLog := flag.Bool("access-log", true, "sidecar access log on (as in production)")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the sidecar during the measured window to this file")
	heapProfile := flag.String("heapprofile", "", "write a heap profile and a goroutine dump (<file>.goroutines) of the sidecar at the end of the measured window")
	cpus := flag.Int("sidecar-cpus", 0, "the sidecar's -cpus (GOMAXPROCS); 0 keeps the sidecar's default")
	sidecarBin := flag.String("sidecar-bin", "", "run this sidecar binary instead of building ./sidecar/cmd/sidecar (e.g. an older build, for a before/after comparison)")
	sequential := flag.Bool("sequential", false, "measure the app directly first and then through the sidecar, instead of both at once")
	sidecarEnv := flag.String("sidecar-env", "", "space-separated VAR=value pairs added to the sidecar's environment (e.g. \"GOGC=50 GOMEMLIMIT=12MiB\")")
	ldflags := flag.String("ldflags", "", "go build -ldflags for the sidecar built here (e.g. \"-s -w\": no symbol table or DWARF)")
	refs := flag.String("references", "", "after the sidecar's run, measure these reference proxies in front of the same app at the same rate, one at a time: comma-separated "+strings.Join(referenceNames, ", ")+", or all")
	serveApp := flag.Bool("serve-app", false, "internal: serve the benchmark app (the bench starts itself with it as a child process)")
	serveProxy := flag.String("serve-proxy", "", "internal: serve this Go reference proxy in front of -backend")
	backend := flag.String("backend", "", "internal: the -serve-proxy backend, host:port")
	flag.Parse()
	if *serveApp {
		return runApp(ctx)
	}
	if *serveProxy != "" {
		return runProxy(ctx, *serveProxy, *backend)
	}
	var refNames []string
	if *refs == "all" {
		refNames = referenceNames
	} else if *refs != "" {
		refNames = strings.Split(*refs, ",")
		for _, n := range refNames {
			if !slices.Contains(referenceNames, n) {
				return fmt.Errorf("-references: unknown %q (want %s, or all)", n, strings.Join(referenceNames, ", "))
			}
		}
	}

	dir, err := os.MkdirTemp("", "petmesh-bench-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	pkgs := []string{"./controlplane/cmd/controlplane", "./sidecar/cmd/sidecar"}
	scBin := filepath.Join(dir, "sidecar")
	if *sidecarBin != "" {
		pkgs, scBin = pkgs[:1], *sidecarBin
	}
	for _, pkg := range pkgs {
		args := []string{"build", "-o", dir}
		if *ldflags != "" && strings.HasSuffix(pkg, "/sidecar") {
			args = append(args, "-ldflags", *ldflags)
		}
		cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	}

	// Issuer: JWKS served in-process, one token for the load.
	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: filepath.Join(dir, "keys")})
	if err != nil {
		return err
	}
	is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: "bench", Audience: []string{"petmesh"}, TTL: time.Hour, Keys: ks})
	if err != nil {
		return err
	}
	tok, err := is.Issue("bench-user", []string{"viewer"})
	if err != nil {
		return err
	}
	jwksURL, closeJWKS, err := serve(ks.JWKSHandler())
	if err != nil {
		return err
	}
	defer closeJWKS()

	// The app runs in its own process (this program with -serve-app), so
	// that it does not share a Go runtime with the load generator.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	app, err := start(ctx, self, []string{"-serve-app"}, "http")
	if err != nil {
		return err
	}
	defer app.stop()
	appAddr := app.addrs["http"]
	appURL := "http://" + appAddr

	table := filepath.Join(dir, "table.yaml")
	if err := os.WriteFile(table, []byte("routes:\n  - name: pets\n    match: {prefix: /pets}\n    targets: [{service: pets}]\nservices:\n  pets:\n    bulkhead: {max_concurrent: 1024}\n"), 0o600); err != nil {
		return err
	}
	cp, err := start(ctx, filepath.Join(dir, "controlplane"), []string{
		"-xds-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0", "-store-dir", filepath.Join(dir, "store"),
		"-initial-table", table, "-jwks-url", jwksURL, "-issuer", "bench",
		"CONTROLPLANE_REGISTRATION_TOKEN=" + regToken,
	}, "xds", "api")
	if err != nil {
		return err
	}
	defer cp.stop()
	scArgs := []string{
		"-service", "pets", "-instance", "pets-bench", "-app-addr", appAddr,
		"-inbound-addr", "127.0.0.1:0", "-outbound-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0",
		"-xds-addr", cp.addrs["xds"], "-registry-url", "http://" + cp.addrs["api"],
		"-access-log=" + strconv.FormatBool(*accessLog), "-pprof=" + strconv.FormatBool(*profile != "" || *heapProfile != ""),
		"SIDECAR_REGISTRATION_TOKEN=" + regToken,
	}
	if *cpus > 0 {
		scArgs = append(scArgs, "-cpus", strconv.Itoa(*cpus))
	}
	scArgs = append(scArgs, strings.Fields(*sidecarEnv)...)
	sc, err := start(ctx, scBin, scArgs, "inbound", "outbound", "admin")
	if err != nil {
		return err
	}
	defer sc.stop()
	if err := waitReady(ctx, "http://"+sc.addrs["admin"]+"/readyz"); err != nil {
		return err
	}

	hdr := http.Header{"Authorization": {"Bearer " + tok.Raw}}
	scCPUs := "its default -cpus"
	if *cpus > 0 {
		scCPUs = fmt.Sprintf("-cpus %d", *cpus)
	}
	mode := "direct and via the sidecar at the same time"
	if *sequential {
		mode = "direct first, then via the sidecar"
	}
	fmt.Printf("petmesh sidecar benchmark: %d rps open-loop per target (%s), %v measured after %v warm-up, sidecar %s on a %d-CPU machine, access log %v, admin http://%s\n",
		*rps, mode, *dur, *warm, scCPUs, numCPU(), *accessLog, sc.addrs["admin"])
	if *sidecarEnv != "" || *ldflags != "" {
		fmt.Printf("sidecar environment %q, -ldflags %q\n", *sidecarEnv, *ldflags)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("machine load average at start: %s", b)
	}

	// Both loads run at the same time by default, so that the direct and
	// the sidecar figures see the same machine (a shared machine's load
	// changes from one minute to the next); -sequential runs the direct
	// load first, alone.
	var direct *result
	directErr := make(chan error, 1)
	runDirect := func() {
		var err error
		direct, err = load(ctx, appURL+"/pets/42", nil, *rps, *warm, *dur, nil)
		directErr <- err
	}
	if *sequential {
		runDirect()
		if err := <-directErr; err != nil {
			return err
		}
	} else {
		go runDirect()
	}
	var cpu0, cpu1, app0, app1 cpuTimes
	var served0, served1 float64
	var maxRSS int64
	admin := "http://" + sc.addrs["admin"]
	via, err := load(ctx, "http://"+sc.addrs["inbound"]+"/pets/42", hdr, *rps, *warm, *dur, func(phase string) {
		switch phase {
		case "start":
			served0 = inboundRequests(admin)
			cpu0 = cpuSeconds(sc.cmd.Process.Pid)
			app0 = cpuSeconds(app.cmd.Process.Pid)
			if *profile != "" {
				go fetchProfile("http://"+sc.addrs["admin"], *dur, *profile)
			}
		case "sample":
			maxRSS = max(maxRSS, rssKB(sc.cmd.Process.Pid))
		case "end":
			cpu1 = cpuSeconds(sc.cmd.Process.Pid)
			app1 = cpuSeconds(app.cmd.Process.Pid)
			served1 = inboundRequests(admin)
			if *heapProfile != "" {
				save("http://"+sc.addrs["admin"]+"/debug/pprof/heap", *heapProfile)
				save("http://"+sc.addrs["admin"]+"/debug/pprof/goroutine?debug=1", *heapProfile+".goroutines")
			}
		}
	})
	if err != nil {
		return err
	}
	if !*sequential {
		if err := <-directErr; err != nil {
			return err
		}
	}
	fmt.Printf("\n%-22s %8s %8s %8s %8s %8s %7s\n", "target", "sent", "errors", "p50", "p90", "p99", "p99.9")
	direct.print("app direct")
	via.print("sidecar inbound (JWT)")
	fmt.Printf("\nadded latency by the sidecar: p50 %v, p99 %v\n",
		(via.q(0.50) - direct.q(0.50)).Round(time.Microsecond), (via.q(0.99) - direct.q(0.99)).Round(time.Microsecond))
	user, sys := (cpu1.user-cpu0.user)/dur.Seconds(), (cpu1.sys-cpu0.sys)/dur.Seconds()
	// Per request handled in the window (the sidecar's own counter), not
	// per request scheduled: a sidecar that fell behind served fewer.
	served := served1 - served0
	perReq := 0.0
	if served > 0 {
		perReq = (user + sys) * dur.Seconds() * 1e6 / served
	}
	fmt.Printf("sidecar CPU: %.3f vCPU (utime+stime over the measured window: user %.3f, system %.3f); %.0f requests handled in the window (%.0f/s), %.0f µs CPU per request; at that cost %d rps take %.3f vCPU\n",
		user+sys, user, sys, served, served/dur.Seconds(), perReq, *rps, perReq*float64(*rps)/1e6)
	// The app, a minimal Go net/http server with a fixed answer, is the
	// reference: it served the direct load and the sidecar's in the same
	// window (in -sequential mode only the sidecar's).
	appServed := served
	if !*sequential {
		appServed += float64(len(direct.lat))
	}
	if appServed > 0 {
		appCPU := (app1.user - app0.user) + (app1.sys - app0.sys)
		fmt.Printf("reference: the app (Go net/http, fixed answer) used %.0f µs CPU per request it served in the same window (%.0f requests); the sidecar costs %.2f× that per request\n",
			appCPU*1e6/appServed, appServed, perReq/(appCPU*1e6/appServed))
	}
	if vcs, ivcs := ctxSwitches(sc.cmd.Process.Pid); vcs > 0 {
		fmt.Printf("sidecar context switches since start: %d voluntary, %d involuntary\n", vcs, ivcs)
	}
	fmt.Printf("sidecar RSS: max %.1f MB during the window, %.1f MB at the end (%s; %s)\n", float64(maxRSS)/1024, float64(rssKB(sc.cmd.Process.Pid))/1024,
		rssParts(sc.cmd.Process.Pid), pssParts(sc.cmd.Process.Pid))
	if b, err := httpGet("http://" + sc.addrs["admin"] + "/metrics"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			for _, m := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes ", "go_goroutines ", "go_memstats_sys_bytes "} {
				if strings.HasPrefix(line, m) {
					v, _ := strconv.ParseFloat(strings.TrimPrefix(line, m), 64)
					if m == "go_goroutines " {
						fmt.Printf("  %s%.0f", m, v)
					} else {
						fmt.Printf("  %s%.1f MB", m, v/(1<<20))
					}
				}
			}
		}
		fmt.Println()
	}
	if len(refNames) > 0 {
		fmt.Printf("\nreference proxies in front of the same app, %d rps, one at a time after the sidecar (%v warm-up, %v measured):\n", *rps, *warm, *dur)
		for _, name := range refNames {
			r, err := startReference(ctx, self, dir, name, appAddr)
			if err != nil {
				return err
			}
			err = measureReference(ctx, r, *rps, *warm, *dur, perReq)
			r.p.stop()
			if err != nil {
				return err
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("machine load average at the end: %s", b)
	}
	return nil
}

type result struct {
	lat    []time.Duration
	sent   int
	errors int
	first  string
}

func (r *result) q(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(int(p*float64(len(r.lat))), len(r.lat)-1)]
}

func (r *result) print(name string) {
	fmt.Printf("%-22s %8d %8d %8v %8v %8v %7v\n", name, r.sent, r.errors,
		r.q(0.5).Round(time.Microsecond), r.q(0.9).Round(time.Microsecond), r.q(0.99).Round(time.Microsecond), r.q(0.999).Round(time.Microsecond))
	if r.first != "" {
		fmt.Printf("  first error: %s\n", r.first)
	}
}

// load sends requests at a fixed rate (open loop: one goroutine per
// request on a schedule; latency counted from the scheduled time, so a
// stall is not hidden) for warm+dur, recording only the last dur.
func load(ctx context.Context, url string, hdr http.Header, rps int, warm, dur time.Duration, hook func(string)) (*result, error) {
	tr := &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	interval := time.Second / time.Duration(rps)
	total := int((warm + dur) / interval)
	warmN := int(warm / interval)
	res := &result{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if hook != nil {
			if i == warmN {
				hook("start")
			}
			if i%500 == 0 {
				hook("sample")
			}
		}
		measure := i >= warmN
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			for k, v := range hdr {
				req.Header[k] = v
			}
			resp, err := client.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			d := time.Since(at)
			if !measure {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			res.sent++
			if err != nil {
				res.errors++
				if res.first == "" {
					res.first = err.Error()
				}
				return
			}
			res.lat = append(res.lat, d)
		})
	}
	if hook != nil {
		hook("end")
	}
	wg.Wait()
	slices.Sort(res.lat)
	return res, nil
}

type proc struct {
	cmd   *exec.Cmd
	addrs map[string]string
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// start runs bin with args (entries with "=" and no leading "-" are
// environment variables) and waits for the named listeners.
func start(ctx context.Context, bin string, args []string, names ...string) (*proc, error) {
	var flags, env []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") && strings.Contains(a, "=") {
			env = append(env, a)
		} else {
			flags = append(flags, a)
		}
	}
	cmd := exec.Command(bin, flags...)
	cmd.Env = append(os.Environ(), env...)
	pr, pw := io.Pipe()
	cmd.Stderr, cmd.Stdout = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, addrs: map[string]string{}}
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		closed := false
		var mu sync.Mutex
		for sc.Scan() {
			// Only "listening" lines are decoded: the access log runs
			// through here at the benchmark's rate.
			line := sc.Bytes()
			if bytes.Contains(line, []byte(`"msg":"access"`)) {
				continue
			}
			var rec struct{ Msg, Name, Addr string }
			if bytes.Contains(line, []byte(`"listening"`)) && json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" {
				mu.Lock()
				p.addrs[rec.Name] = rec.Addr
				all := true
				for _, n := range names {
					if p.addrs[n] == "" {
						all = false
					}
				}
				mu.Unlock()
				if all && !closed {
					closed = true
					close(found)
				}
			} else if strings.Contains(sc.Text(), `"level":"ERROR"`) || !strings.HasPrefix(sc.Text(), "{") {
				fmt.Fprintln(os.Stderr, filepath.Base(bin)+":", sc.Text())
			}
		}
	}()
	select {
	case <-found:
		return p, nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("%s did not announce %v", bin, names)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return nil, ctx.Err()
	}
}

// fetchProfile saves a CPU profile of the sidecar covering d.
func fetchProfile(admin string, d time.Duration, file string) {
	resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", admin, int(d.Seconds())))
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	_ = os.WriteFile(file, b, 0o600)
}

// runApp serves the app, a small JSON answer like a cached GET, until ctx
// is done, announcing its address as a "listening" line.
func runApp(ctx context.Context) error {
	body := []byte(`{"id":"42","name":"Rex","species":"Dog","age":3,"tags":["good","boy"]}`)
	url, closeApp, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	if err != nil {
		return err
	}
	defer closeApp()
	fmt.Printf("{\"msg\":\"listening\",\"name\":\"http\",\"addr\":%q}\n", strings.TrimPrefix(url, "http://"))
	<-ctx.Done()
	return nil
}

// save writes the body of GET url to file.
func save(url, file string) {
	resp, err := http.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	_ = os.WriteFile(file, b, 0o600)
}

func serve(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("sidecar not ready within 30s")
}

type cpuTimes struct{ user, sys float64 }

// cpuSeconds is utime and stime of pid from /proc/<pid>/stat.
func cpuSeconds(pid int) cpuTimes {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuTimes{}
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return cpuTimes{user: ut / 100, sys: st / 100} // USER_HZ
}

// ctxSwitches sums the voluntary and involuntary context switches of every
// thread of pid.
func ctxSwitches(pid int) (vol, invol int64) {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				vol += n
			} else if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				invol += n
			}
		}
	}
	return vol, invol
}

// rssParts is the anonymous and file-backed (the mapped binary) parts of
// pid's RSS.
func rssParts(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	var parts []string
	for line := range strings.SplitSeq(string(b), "\n") {
		for _, k := range []string{"RssAnon:", "RssFile:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				parts = append(parts, fmt.Sprintf("%s %.1f MB", strings.TrimSuffix(k, ":"), float64(n)/1024))
			}
		}
	}
	return strings.Join(parts, ", ")
}

// pssParts is pid's proportional set size (shared file pages divided
// among the processes mapping them) and its anonymous and file parts,
// from /proc/<pid>/smaps_rollup.
func pssParts(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return ""
	}
	var parts []string
	for line := range strings.SplitSeq(string(b), "\n") {
		for _, k := range []string{"Pss:", "Pss_Anon:", "Pss_File:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				parts = append(parts, fmt.Sprintf("%s %.1f MB", strings.TrimSuffix(k, ":"), float64(n)/1024))
			}
		}
	}
	return strings.Join(parts, ", ")
}

// inboundRequests sums petmesh_dataplane_requests_total of the inbound
// listener from the sidecar's /metrics.
func inboundRequests(admin string) float64 {
	b, err := httpGet(admin + "/metrics")
	if err != nil {
		return 0
	}
	sum := 0.0
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "petmesh_dataplane_requests_total{") && strings.Contains(line, `listener="inbound"`) {
			if i := strings.LastIndexByte(line, ' '); i > 0 {
				v, _ := strconv.ParseFloat(line[i+1:], 64)
				sum += v
			}
		}
	}
	return sum
}

func httpGet(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	return io.ReadAll(resp.Body)
}

// rssKB is VmRSS of pid in KiB.
func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}
