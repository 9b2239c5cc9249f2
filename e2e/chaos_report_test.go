package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// chaosResult is one scenario's outcome: a row of RESILIENCE.md and an
// entry of results/chaos/chaos.json.
type chaosResult struct {
	Scenario string `json:"scenario"`
	// Mesh is the registry of the topology: builtin or consul.
	Mesh string `json:"mesh"`
	// Fault says what was done, FaultSeconds how long the fault lasted
	// (the process down, the delay or aborts on, the database read-only).
	Fault        string  `json:"fault"`
	FaultSeconds float64 `json:"fault_seconds"`
	RateRPS      int     `json:"rate_rps"`
	LoadSeconds  float64 `json:"load_seconds"`
	Sent         int     `json:"sent"`
	OK           int     `json:"ok"`
	Failed       int     `json:"failed"`
	// Failures counts the failed requests by reason.
	Failures  map[string]int `json:"failures,omitempty"`
	LatencyMS struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
		Max float64 `json:"max"`
		// GeneratorLagP99: how late the generator itself started its
		// requests (99th percentile): when it is large, the test process
		// was starved of CPU and the latencies say more about the machine
		// than about the mesh.
		GeneratorLagP99 float64 `json:"generator_lag_p99"`
	} `json:"latency_ms"`
	// LastFailureS is the time from the fault to the last failed request
	// (by due time); nil when no request failed after the fault.
	LastFailureS *float64 `json:"last_failure_after_fault_s"`
	// RoutedAroundS is the time from the fault until the mesh stopped
	// sending to the faulty part (what that means is in Detected); nil
	// when it does not apply.
	RoutedAroundS *float64 `json:"routed_around_after_fault_s,omitempty"`
	Detected      string   `json:"routed_around_means,omitempty"`
	// RestoredS is the time from the end of the fault (the process
	// started again, the fault removed) until the mesh was back at full
	// strength (what that means is in Restored).
	RestoredS *float64 `json:"restored_after_fault_end_s,omitempty"`
	Restored  string   `json:"restored_means,omitempty"`
	// Measures holds scenario-specific figures (retries, ejections,
	// write answers, sync run counts).
	Measures   map[string]any `json:"measures,omitempty"`
	Thresholds []string       `json:"thresholds"`
	Violations []string       `json:"violations,omitempty"`
	Pass       bool           `json:"pass"`
	Timeline   []chaosSecond  `json:"timeline,omitempty"`

	t       *testing.T
	ld      *chaosLoad
	loaded  bool
	faultAt time.Duration // since the load started; -1 before the fault
}

// threshold records a pass condition of the scenario and fails the test
// (and the row) when ok is false.
func (r *chaosResult) threshold(ok bool, desc, format string, args ...any) {
	r.t.Helper()
	r.Thresholds = append(r.Thresholds, desc)
	if !ok {
		msg := desc + ": " + fmt.Sprintf(format, args...)
		r.Violations = append(r.Violations, msg)
		r.t.Error(msg)
	}
}

// measure records a scenario-specific figure.
func (r *chaosResult) measure(key string, v any) {
	if r.Measures == nil {
		r.Measures = map[string]any{}
	}
	r.Measures[key] = v
}

// load fills the load figures from the samples of ld (stopped).
func (r *chaosResult) load(samples []chaosSample, rate int) chaosStats {
	st := summarizeLoad(samples)
	r.RateRPS, r.Sent, r.OK, r.Failed = rate, st.Sent, st.OK, st.Failed
	if len(samples) > 0 {
		r.LoadSeconds = round3(samples[len(samples)-1].At.Seconds())
	}
	if len(st.Failures) > 0 {
		r.Failures = st.Failures
	}
	r.LatencyMS.P50, r.LatencyMS.P99, r.LatencyMS.Max = millis(st.P50), millis(st.P99), millis(st.Max)
	r.LatencyMS.GeneratorLagP99 = millis(st.LagP99)
	r.Timeline = st.Seconds
	if r.faultAt >= 0 && st.LastFailure >= r.faultAt {
		r.LastFailureS = secondsPtr(st.LastFailure - r.faultAt)
	}
	return st
}

func secondsPtr(d time.Duration) *float64 {
	v := round3(d.Seconds())
	return &v
}

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

// chaosReport collects the results of a TestChaos run.
type chaosReport struct {
	mu      sync.Mutex
	Started time.Time      `json:"started"`
	Config  map[string]any `json:"conditions"`
	Results []*chaosResult `json:"scenarios"`
}

func (rep *chaosReport) add(r *chaosResult) {
	rep.mu.Lock()
	rep.Results = append(rep.Results, r)
	rep.mu.Unlock()
}

// markdown renders the results table.
func (rep *chaosReport) markdown() string {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	var b strings.Builder
	keys := slices.Sorted(maps.Keys(rep.Config))
	var cond []string
	for _, k := range keys {
		cond = append(cond, fmt.Sprintf("%s %v", k, rep.Config[k]))
	}
	fmt.Fprintf(&b, "Run of %s; %s.\n\n", rep.Started.UTC().Format("2006-01-02 15:04 MST"), strings.Join(cond, ", "))
	b.WriteString("| scenario | mesh | fault | sent | failed | p50 / p99 / max ms (generator lag p99) | last failure after fault | routed around after | restored after | result |\n")
	b.WriteString("| --- | --- | --- | ---: | --- | --- | --- | --- | --- | --- |\n")
	opt := func(v *float64) string {
		if v == nil {
			return "—"
		}
		return fmt.Sprintf("%.2f s", *v)
	}
	for _, r := range rep.Results {
		failed := fmt.Sprint(r.Failed)
		if r.Failed > 0 {
			var rs []string
			for _, k := range slices.Sorted(maps.Keys(r.Failures)) {
				rs = append(rs, fmt.Sprintf("%d × %s", r.Failures[k], k))
			}
			failed += " (" + strings.Join(rs, "; ") + ")"
		}
		result := "pass"
		if !r.Pass {
			result = "**FAIL**: " + strings.Join(r.Violations, "; ")
		}
		fmt.Fprintf(&b, "| %s | %s | %s (%.0f s) | %d | %s | %.1f / %.1f / %.1f (%.1f) | %s | %s | %s | %s |\n",
			chaosMDEscape(r.Scenario), r.Mesh, chaosMDEscape(r.Fault), r.FaultSeconds, r.Sent, chaosMDEscape(failed),
			r.LatencyMS.P50, r.LatencyMS.P99, r.LatencyMS.Max, r.LatencyMS.GeneratorLagP99,
			opt(r.LastFailureS), opt(r.RoutedAroundS), opt(r.RestoredS), chaosMDEscape(result))
	}
	b.WriteString("\nPer scenario, what \"routed around\" and \"restored\" mean, the thresholds and the measures:\n\n")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "- **%s** (%s)", chaosMDEscape(r.Scenario), r.Mesh)
		if r.Detected != "" {
			fmt.Fprintf(&b, "; routed around: %s", r.Detected)
		}
		if r.Restored != "" {
			fmt.Fprintf(&b, "; restored: %s", r.Restored)
		}
		fmt.Fprintf(&b, ". Thresholds: %s.", strings.Join(r.Thresholds, "; "))
		if len(r.Measures) > 0 {
			var ms []string
			for _, k := range slices.Sorted(maps.Keys(r.Measures)) {
				ms = append(ms, fmt.Sprintf("%s %v", k, r.Measures[k]))
			}
			fmt.Fprintf(&b, " Measures: %s.", strings.Join(ms, ", "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func chaosMDEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// Markers of the generated table in RESILIENCE.md.
const (
	chaosTableBegin = "<!-- chaos-table:begin (generated by make chaos) -->"
	chaosTableEnd   = "<!-- chaos-table:end -->"
)

// spliceChaosTable replaces what lies between the markers of doc with table.
func spliceChaosTable(doc, table string) (string, error) {
	i := strings.Index(doc, chaosTableBegin)
	j := strings.Index(doc, chaosTableEnd)
	if i < 0 || j < i {
		return "", errors.New("the document has no chaos-table markers in order")
	}
	return doc[:i+len(chaosTableBegin)] + "\n" + table + doc[j:], nil
}

// write saves the report: chaos.json and chaos.md into
// PETMESH_CHAOS_RESULTS, and the table into the document named by
// PETMESH_CHAOS_DOC (RESILIENCE.md under make chaos). Nothing is written
// when neither is set.
func (rep *chaosReport) write(t *testing.T) {
	dir, doc := os.Getenv("PETMESH_CHAOS_RESULTS"), os.Getenv("PETMESH_CHAOS_DOC")
	table := rep.markdown()
	t.Logf("chaos results:\n%s", table)
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Error(err)
			return
		}
		rep.mu.Lock()
		b, err := json.MarshalIndent(rep, "", "  ")
		rep.mu.Unlock()
		if err != nil {
			t.Error(err)
			return
		}
		for name, data := range map[string][]byte{"chaos.json": append(b, '\n'), "chaos.md": []byte(table)} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	if doc != "" {
		old, err := os.ReadFile(doc)
		if err != nil {
			t.Error(err)
			return
		}
		out, err := spliceChaosTable(string(old), table)
		if err != nil {
			t.Errorf("%s: %v", doc, err)
			return
		}
		if err := os.WriteFile(doc, []byte(out), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// loadAverage returns the 1-minute load average (0 when unknown).
func chaosLoadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var v float64
	_, _ = fmt.Sscan(string(b), &v)
	return v
}

// machine describes where the run happened.
func chaosMachine() string {
	return fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
}

// TestChaosStats: the load statistics and the report's table from known
// samples (the scenarios themselves need the whole mesh: TestChaos).
func TestChaosStats(t *testing.T) {
	ms := time.Millisecond
	samples := []chaosSample{
		{At: 0, Latency: 2 * ms, Lag: 1 * ms},
		{At: 500 * ms, Latency: 4 * ms},
		{At: 1100 * ms, Latency: 3 * ms, Status: 503, Reason: "503 unavailable: no healthy upstream"},
		{At: 1200 * ms, Latency: 900 * ms, Status: 200},
		{At: 2500 * ms, Latency: 1 * ms, Reason: "transport: connection refused"},
		{At: 2600 * ms, Latency: 5 * ms},
		{At: 3100 * ms, Latency: 6 * ms, Status: 503, Reason: "503 unavailable: no healthy upstream"},
		{At: 3200 * ms, Latency: 2 * ms},
	}
	st := summarizeLoad(samples)
	if st.Sent != 8 || st.OK != 5 || st.Failed != 3 {
		t.Errorf("sent/ok/failed %d/%d/%d, want 8/5/3", st.Sent, st.OK, st.Failed)
	}
	if st.Failures["503 unavailable: no healthy upstream"] != 2 || st.Failures["transport: connection refused"] != 1 {
		t.Errorf("failures %v", st.Failures)
	}
	if st.FirstFailure != 1100*ms || st.LastFailure != 3100*ms {
		t.Errorf("first/last failure %v/%v, want 1.1s/3.1s", st.FirstFailure, st.LastFailure)
	}
	if st.P50 != 3*ms || st.P99 != 900*ms || st.Max != 900*ms {
		t.Errorf("p50/p99/max %v/%v/%v, want 3ms/900ms/900ms", st.P50, st.P99, st.Max)
	}
	if len(st.Seconds) != 4 || st.Seconds[1].Sent != 2 || st.Seconds[1].Failed != 1 || st.Seconds[1].P99MS != 900 || st.Seconds[3].Failed != 1 {
		t.Errorf("seconds %+v", st.Seconds)
	}

	r := &chaosResult{t: t, Scenario: "kill | pipe", Mesh: "builtin", Fault: "SIGKILL", FaultSeconds: 5, faultAt: 1000 * ms}
	r.load(samples, 200)
	if r.LastFailureS == nil || *r.LastFailureS != 2.1 {
		t.Errorf("last failure after fault %v, want 2.1", r.LastFailureS)
	}
	r.RoutedAroundS = secondsPtr(420 * ms)
	r.threshold(true, "zero failed requests", "")
	r.Pass = true
	rep := &chaosReport{Started: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Config: map[string]any{"rate_rps": 200}}
	rep.add(r)
	table := rep.markdown()
	for _, want := range []string{
		"| kill \\| pipe | builtin | SIGKILL (5 s) | 8 | 3 (2 × 503 unavailable: no healthy upstream; 1 × transport: connection refused) | 3.0 / 900.0 / 900.0 (1.0) | 2.10 s | 0.42 s | — | pass |",
		"Run of 2026-01-02 03:04 UTC; rate_rps 200.",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}

	doc := "# R\n\nintro\n" + chaosTableBegin + "\nold table\n" + chaosTableEnd + "\nafter\n"
	out, err := spliceChaosTable(doc, "new table\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := "# R\n\nintro\n" + chaosTableBegin + "\nnew table\n" + chaosTableEnd + "\nafter\n"; out != want {
		t.Errorf("spliced:\n%s\nwant:\n%s", out, want)
	}
	if _, err := spliceChaosTable("no markers", "x"); err == nil {
		t.Error("splicing into a document without markers succeeded")
	}
}
