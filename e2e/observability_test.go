package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/petmesh/petmesh/dev/launcher"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/promtest"
	"github.com/petmesh/petmesh/observability"
)

// obsRateInterval replaces Grafana's $__rate_interval in the dashboards'
// queries: 1m over a 1s scrape interval, as Grafana would pick it for a
// short range.
const obsRateInterval = "1m"

// TestObservability runs a real Prometheus that scrapes every process of
// the mesh (edge admin, control plane API, every sidecar admin, every
// app's admin) every second with petmesh's alert rules loaded, drives
// traffic of every kind the dashboards show, and asserts that every
// target is up, that every dashboard panel's and alert rule's PromQL
// returns data (an alert that is empty by design while the mesh is
// healthy: its expression without the threshold, see
// observability.SplitThreshold), that every rule evaluates, and that
// every process's /metrics passes `promtool check metrics`.
func TestObservability(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	// Before the mesh: skip (or fail) at once when Prometheus is missing.
	promtest.Bin(t)
	promtool := promtest.PromtoolBin(t)
	exprs, err := observability.Exprs()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := observability.AlertRules()
	if err != nil {
		t.Fatal(err)
	}

	m := startMesh(t, "builtin", "")
	// The scrape targets are those of the committed make-run configuration
	// (prometheus.local.yml) rendered for the test's ports, as `make run
	// OBS=1` renders it; they must be every process's metrics endpoint.
	targets, targetLabels := m.localScrapeConfig(t)
	n := 0
	for _, addrs := range targets {
		n += len(addrs)
	}
	p := promtest.StartWith(t, promtest.Options{
		Targets:   targets,
		RuleFiles: []string{filepath.Join(testutil.RepoRoot(t), "observability", "prometheus", "alerts.yml")},
	})
	ctx := testutil.Context(t)

	t.Run("every target is up", func(t *testing.T) {
		p.WaitForTargetsUp(ctx, 30*time.Second)
		ts, err := p.Targets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		byJob := map[string]int{}
		for _, tg := range ts {
			byJob[tg.Job]++
		}
		for job, addrs := range targets {
			if byJob[job] != len(addrs) {
				t.Errorf("job %s: %d active targets, want %d (%v)", job, byJob[job], len(addrs), addrs)
			}
		}
		if len(ts) != n {
			t.Errorf("%d active targets, want %d", len(ts), n)
		}
	})

	t.Run("promtool check metrics", func(t *testing.T) {
		jobs := make([]string, 0, len(targets))
		for job := range targets {
			jobs = append(jobs, job)
		}
		sort.Strings(jobs)
		for _, job := range jobs {
			for _, addr := range targets[job] {
				t.Run(job+" "+addr, func(t *testing.T) { checkMetrics(t, m, promtool, addr) })
			}
		}
	})

	// Background traffic keeps the request rates of the last minute
	// non-zero while the queries run.
	ld := m.startLoad(1, "/pets?limit=5", m.token("alice"))
	t.Run("traffic", func(t *testing.T) { m.driveObservedTraffic(t, p) })

	t.Run("every panel and rule returns data", func(t *testing.T) {
		if len(exprs) < 30+len(rules) {
			t.Fatalf("only %d expressions", len(exprs))
		}
		testutil.Eventually(t, 60*time.Second, func() error {
			failed := map[string]string{}
			for _, e := range exprs {
				if why := exprHasData(ctx, p, e); why != "" {
					failed[e.Source] = why
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d expressions return no data:\n%s\nseries of the metrics they read:\n%s",
					len(failed), len(exprs), joinSorted(failed), seriesOf(ctx, p, exprs, failed))
			}
			return nil
		})
		t.Logf("%d expressions (%d alert rules) return data", len(exprs), len(rules))
	})

	t.Run("every grouping label exists", func(t *testing.T) {
		for _, e := range exprs {
			if why := labelsExist(ctx, p, e, targetLabels); why != "" {
				t.Errorf("%s: %s", e.Source, why)
			}
		}
	})

	t.Run("every rule is loaded and evaluates", func(t *testing.T) {
		want := map[string]bool{}
		for _, r := range rules {
			want[r.Alert+r.Record] = true
		}
		testutil.Eventually(t, 20*time.Second, func() error {
			loaded, err := p.Rules(ctx)
			if err != nil {
				return err
			}
			got := map[string]promtest.Rule{}
			for _, r := range loaded {
				got[r.Name] = r
			}
			var bad []string
			for name := range want {
				r, ok := got[name]
				switch {
				case !ok:
					bad = append(bad, name+": not loaded")
				case r.Health != "ok":
					bad = append(bad, fmt.Sprintf("%s: health %q %s", name, r.Health, r.LastError))
				}
			}
			if len(got) != len(want) {
				bad = append(bad, fmt.Sprintf("%d rules loaded, want %d", len(got), len(want)))
			}
			// A healthy mesh: nothing is down, stale or without a sync.
			for _, quiet := range []string{"PetmeshInstanceDown", "PetmeshProxyStale", "PetmeshSyncNoSuccess", "PetmeshProxyNACKing"} {
				if r := got[quiet]; r.State != "inactive" {
					bad = append(bad, fmt.Sprintf("%s is %s on a healthy mesh", quiet, r.State))
				}
			}
			if len(bad) > 0 {
				sort.Strings(bad)
				return errors.New(strings.Join(bad, "\n"))
			}
			return nil
		})
	})
	checkLoad(t, ld, 1)

	// After the background load, whose requests must all succeed.
	t.Run("retry and ejection panels read real counters", func(t *testing.T) {
		m.failPets(t, p, m.token("alice"), m.token("ops"))
	})
}

// localScrapeConfig renders observability/prometheus/prometheus.local.yml
// for the mesh's addresses (launcher.RenderPrometheusConfig, as `make run
// OBS=1` does) and returns its targets by job, and the names of the
// target labels it attaches (service, petmesh_instance). Targets of
// processes this mesh does not run (Consul, Jaeger, Prometheus itself)
// keep their dev address and are left out. It fails t unless the
// remaining targets are exactly m.scrapeTargets().
func (m *mesh) localScrapeConfig(t *testing.T) (map[string][]string, map[string]bool) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(testutil.RepoRoot(t), "observability", "prometheus", "prometheus.local.yml"))
	if err != nil {
		t.Fatal(err)
	}
	rendered, _, err := launcher.RenderPrometheusConfig(src, m.a)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string          `yaml:"targets"`
				Labels  map[string]string `yaml:"labels"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(rendered, &cfg); err != nil {
		t.Fatalf("rendered prometheus.local.yml: %v", err)
	}
	ours := map[string]bool{}
	for _, addrs := range m.scrapeTargets() {
		for _, a := range addrs {
			ours[a] = true
		}
	}
	others := map[string]bool{m.a.Edge: true, m.a.XDS: true, m.a.Standin: true}
	for _, i := range []launcher.Instance{m.pets1, m.pets2, m.syncI, m.stats} {
		others[i.Addrs.App], others[i.Addrs.Inbound], others[i.Addrs.Outbound] = true, true, true
	}
	targets, labels := map[string][]string{}, map[string]bool{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				switch {
				case ours[tg]:
					targets[sc.JobName] = append(targets[sc.JobName], tg)
					for l := range st.Labels {
						labels[l] = true
					}
				case others[tg]:
					t.Errorf("prometheus.local.yml job %s scrapes %s, which is not a metrics endpoint", sc.JobName, tg)
				default:
					t.Logf("prometheus.local.yml job %s: %s is not run by this mesh", sc.JobName, tg)
				}
			}
		}
	}
	want := m.scrapeTargets()
	for job := range want {
		sort.Strings(want[job])
		sort.Strings(targets[job])
		if !slices.Equal(targets[job], want[job]) {
			t.Errorf("prometheus.local.yml job %s scrapes %v of this mesh, want %v", job, targets[job], want[job])
		}
	}
	for job := range targets {
		if _, ok := want[job]; !ok {
			t.Errorf("prometheus.local.yml job %s scrapes %v, expected under another job", job, targets[job])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return targets, labels
}

// scrapeTargets returns every metrics endpoint of the mesh by job, with
// the job names of observability/prometheus (the rules rely on them).
// The Petfinder stand-in is a dev/test double, not a petmesh process, and
// has no metrics.
func (m *mesh) scrapeTargets() map[string][]string {
	return map[string][]string{
		"edge":         {m.a.EdgeAdmin},
		"controlplane": {m.a.API},
		"sidecar":      {m.pets1.Addrs.SidecarAdmin, m.pets2.Addrs.SidecarAdmin, m.syncI.Addrs.SidecarAdmin, m.stats.Addrs.SidecarAdmin},
		"pets":         {m.pets1.Addrs.AppAdmin, m.pets2.Addrs.AppAdmin},
		"sync":         {m.syncI.Addrs.AppAdmin},
		"stats":        {m.stats.Addrs.AppAdmin},
	}
}

// checkMetrics runs `promtool check metrics` over one process's /metrics
// (the classic text format Prometheus scrapes by default).
func checkMetrics(t *testing.T, m *mesh, promtool, addr string) {
	t.Helper()
	resp, body, err := m.do(http.MethodGet, "http://"+addr+"/metrics", "", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v %v", resp, err)
	}
	if !bytes.Contains(body, []byte("\npetmesh_")) {
		t.Errorf("no petmesh_* metric in /metrics")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// exprHasData returns "" when e returns data from p, else why not. An
// alert of the form "E op C" (observability.SplitThreshold) must
// evaluate, and E must return data: the threshold filters every sample
// out while the mesh is healthy, but E reads series that must exist.
func exprHasData(ctx context.Context, p *promtest.Prometheus, e observability.Expr) string {
	q := e.Query(obsRateInterval)
	if e.Alert != "" {
		if base, threshold, ok := observability.SplitThreshold(q); ok {
			if _, err := p.Query(ctx, q); err != nil {
				return err.Error()
			}
			r, err := p.Query(ctx, base)
			if err != nil {
				return err.Error()
			}
			if !r.HasData() {
				return fmt.Sprintf("no data from %q (the alert without %q)", base, threshold)
			}
			return ""
		}
	}
	r, err := p.Query(ctx, q)
	if err != nil {
		return err.Error()
	}
	if !r.HasData() {
		return fmt.Sprintf("no data from %q", q)
	}
	return ""
}

// labelsExist returns "" when every label e groups or matches by
// (observability.GroupingLabels) is on at least one series of the
// metrics e reads, or is a target label the scrape configuration
// attaches (whose presence in every topology observability's and deploy's
// tests check); else which label is missing. A missing label would group
// everything under "" without any error.
func labelsExist(ctx context.Context, p *promtest.Prometheus, e observability.Expr, targetLabels map[string]bool) string {
	q := e.Query(obsRateInterval)
	names := metricName.FindAllString(q, -1)
	for _, n := range []string{"up", "process_start_time_seconds"} {
		if regexp.MustCompile(`\b` + n + `\b`).MatchString(q) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "reads no known metric"
	}
	var missing []string
	for _, l := range observability.GroupingLabels(q) {
		if targetLabels[l] {
			continue
		}
		sel := fmt.Sprintf(`count({__name__=~%q, %s!=""})`, strings.Join(names, "|"), l)
		r, err := p.Query(ctx, sel)
		if err != nil {
			return err.Error()
		}
		if !r.HasData() {
			missing = append(missing, l)
		}
	}
	if len(missing) > 0 {
		return fmt.Sprintf("no series of %v has the label(s) %v", names, missing)
	}
	return ""
}

var metricName = regexp.MustCompile(`\bpetmesh_[a-z0-9_]+`)

// seriesOf counts, per job, the series of every petmesh metric the failed
// expressions read: it tells a metric no process exposes from one that
// exists but had no samples in the window.
func seriesOf(ctx context.Context, p *promtest.Prometheus, exprs []observability.Expr, failed map[string]string) string {
	names := map[string]bool{}
	for _, e := range exprs {
		if _, ok := failed[e.Source]; ok {
			for _, n := range metricName.FindAllString(e.PromQL, -1) {
				names[n] = true
			}
		}
	}
	out := map[string]string{}
	for n := range names {
		r, err := p.Query(ctx, "count by (job) ("+n+")")
		if err != nil {
			out[n] = err.Error()
			continue
		}
		var per []string
		for _, s := range r.Vector {
			per = append(per, fmt.Sprintf("%s=%g", s.Metric["job"], s.Value))
		}
		sort.Strings(per)
		out[n] = "[" + strings.Join(per, " ") + "]"
	}
	return joinSorted(out)
}

func joinSorted(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s: %s\n", k, m[k])
	}
	return b.String()
}

// driveObservedTraffic sends requests of every kind the dashboards and
// rules count: logins (good and bad), pets reads, a 404, a 401, a 403, a
// rate-limited request, a sync run, a stats query, and a configuration
// change that trips the circuit breaker of cluster stats at the edge and
// is rolled back.
func (m *mesh) driveObservedTraffic(t *testing.T, p *promtest.Prometheus) {
	alice, ops := m.token("alice"), m.token("ops")
	expect := func(method, path, token string, body any, want int) {
		t.Helper()
		resp, b, err := m.do(method, m.edgeURL(path), token, body)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		if resp.StatusCode != want {
			t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
		}
	}
	for range 20 {
		expect(http.MethodGet, "/pets?limit=10", alice, nil, http.StatusOK)
	}
	expect(http.MethodGet, "/pets/no-such-pet", alice, nil, http.StatusNotFound)
	expect(http.MethodGet, "/no-such-route", alice, nil, http.StatusNotFound)
	expect(http.MethodGet, "/pets", "", nil, http.StatusUnauthorized)
	expect(http.MethodGet, "/pets", "not-a-token", nil, http.StatusUnauthorized)
	expect(http.MethodGet, "/sync/runs", alice, nil, http.StatusForbidden)
	expect(http.MethodGet, "/stats/requests?window=1h&by=route", ops, nil, http.StatusOK)
	if _, status, _ := m.login("alice", "wrong"); status != http.StatusUnauthorized {
		t.Errorf("login with a wrong password: status %d, want 401", status)
	}

	// A sync run through the edge.
	resp, body, err := m.do(http.MethodPost, m.edgeURL("/sync/runs"), ops, nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /sync/runs: %v %v: %s", resp, err, body)
	}
	var run struct{ ID, Status string }
	if err := json.Unmarshal(body, &run); err != nil || run.ID == "" {
		t.Fatalf("run: %v: %s", err, body)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if err := m.getJSON(m.edgeURL("/sync/runs/"+run.ID), ops, &run); err != nil {
			return err
		}
		if run.Status == "running" {
			return fmt.Errorf("run %s still running", run.ID)
		}
		return nil
	})
	if run.Status != "succeeded" {
		t.Errorf("sync run %s: %s", run.ID, run.Status)
	}

	// Rate limit of the /auth/ route (10/s, burst 20, per client IP):
	// the requests are cheap 404s of the edge's own handler.
	limited := false
	for i := 0; i < 200 && !limited; i++ {
		resp, _, err := m.do(http.MethodGet, m.edgeURL("/auth/no-such-thing"), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		limited = resp.StatusCode == http.StatusTooManyRequests
	}
	if !limited {
		t.Errorf("no 429 from the /auth/ route's rate limit in 200 requests")
	}

	m.tripCircuit(t, p, ops)
}

// changeTable stores the current route table as modified by change (of
// the table's "services" map) with message through the control plane API
// at api (a base URL; m.apiURL("") is the mesh's own), waits until every
// proxy has ACKed it, and returns the version it replaced; rollbackTable
// goes back.
func (m *mesh) changeTable(t *testing.T, api, ops, message string, change func(services map[string]any)) (prev int) {
	t.Helper()
	var cur struct {
		Version int            `json:"version"`
		Table   map[string]any `json:"table"`
	}
	if err := m.getJSON(api+"/v1/routes", ops, &cur); err != nil {
		t.Fatal(err)
	}
	services, _ := cur.Table["services"].(map[string]any)
	if services == nil {
		t.Fatalf("no services in the route table: %v", cur.Table)
	}
	change(services)
	b, err := json.Marshal(map[string]any{"table": cur.Table, "message": message})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPut, api+"/v1/routes", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+ops)
	req.Header.Set("If-Match", strconv.Quote(strconv.Itoa(cur.Version)))
	resp, err := m.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s/v1/routes: status %d", api, resp.StatusCode)
	}
	testutil.Eventually(t, 20*time.Second, func() error { return m.allSynced(cur.Version + 1) })
	return cur.Version
}

// rollbackTable rolls the route table back to version prev with petctl
// and waits until every proxy has ACKed the new version.
func (m *mesh) rollbackTable(t *testing.T, prev int) {
	t.Helper()
	if out, err := m.runPetctl("routes", "rollback", strconv.Itoa(prev)); err != nil {
		t.Fatalf("petctl routes rollback: %v\n%s", err, out)
	}
	testutil.Eventually(t, 20*time.Second, func() error { return m.allSynced(prev + 2) })
}

// failPets makes both pets sidecars answer every request with an injected
// 503 until the edge has retried one and ejected a pets instance, as
// Prometheus sees it, so that the dashboards' retry and ejection panels
// show the real counters and not only their "or … * 0" fallback; then it
// rolls the table back. The ejection lasts its base_ejection_time (10s);
// outlier detection never ejects the last pets instance.
func (m *mesh) failPets(t *testing.T, p *promtest.Prometheus, alice, ops string) {
	t.Helper()
	prev := m.changeTable(t, m.apiURL(""), ops, "e2e: pets fails", func(services map[string]any) {
		pets, _ := services["pets"].(map[string]any)
		if pets == nil {
			t.Fatal("no service pets in the route table")
		}
		pets["fault"] = map[string]any{"abort": map[string]any{"percent": 100, "status": 503}}
	})
	ctx := testutil.Context(t)
	testutil.Eventually(t, 30*time.Second, func() error {
		resp, body, err := m.do(http.MethodGet, m.edgeURL("/pets?limit=1"), alice, nil)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("GET /pets with pets failing: status %d, want 503: %s", resp.StatusCode, body)
		}
		for _, q := range []string{
			`sum(petmesh_dataplane_upstream_rq_retry_total{job="edge", cluster="pets"}) > 0`,
			`sum(petmesh_dataplane_outlier_ejections_total{job="edge", cluster="pets"}) > 0`,
		} {
			r, err := p.Query(ctx, q)
			if err != nil {
				return err
			}
			if !r.HasData() {
				return fmt.Errorf("no data from %s yet", q)
			}
		}
		return nil
	})
	m.rollbackTable(t, prev)
}

// tripCircuit stores a route table whose stats service allows one request
// at a time, sends bursts to /stats until the edge sheds one (503, circuit
// open), lets the circuit close again, and rolls the table back. The
// change also makes every proxy ACK two new versions (convergence).
func (m *mesh) tripCircuit(t *testing.T, p *promtest.Prometheus, ops string) {
	t.Helper()
	prev := m.changeTable(t, m.apiURL(""), ops, "e2e: stats one request at a time", func(services map[string]any) {
		stats, _ := services["stats"].(map[string]any)
		if stats == nil {
			t.Fatal("no service stats in the route table")
		}
		stats["circuit_breaker"] = map[string]any{"max_requests": 1}
	})

	url := m.edgeURL("/stats/requests?window=1h&by=route")
	testutil.Eventually(t, 20*time.Second, func() error {
		var wg sync.WaitGroup
		var mu sync.Mutex
		shed := 0
		for range 32 {
			wg.Go(func() {
				resp, _, err := m.do(http.MethodGet, url, ops, nil)
				if err == nil && resp.StatusCode == http.StatusServiceUnavailable {
					mu.Lock()
					shed++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if shed == 0 {
			return errors.New("no request of a burst of 32 was shed")
		}
		return nil
	})
	// One request at a time is admitted, which closes the circuit; the
	// gauge the PetmeshCircuitOpen alert reads goes back to 0.
	ctx := testutil.Context(t)
	testutil.Eventually(t, 20*time.Second, func() error {
		if _, _, err := m.do(http.MethodGet, url, ops, nil); err != nil {
			return err
		}
		r, err := p.Query(ctx, `petmesh_dataplane_circuit_open{job="edge", cluster="stats", resource="requests"}`)
		if err != nil {
			return err
		}
		if len(r.Vector) != 1 || r.Vector[0].Value != 0 {
			return fmt.Errorf("circuit_open of stats at the edge: %+v, want one series at 0", r.Vector)
		}
		return nil
	})

	m.rollbackTable(t, prev)
}
