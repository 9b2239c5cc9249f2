package sidecar

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil"
)

const thresholdTestToken = "threshold-test-registration-token"

// flakyApp is a real HTTP app whose health endpoint fails (500) or hangs
// past the probe timeout for the next N checks.
type flakyApp struct {
	srv     *httptest.Server
	fail    atomic.Int32 // checks still to answer 500
	hang    atomic.Int32 // checks still to hang until the client gives up
	checks  atomic.Int32
	release chan struct{}
}

func newFlakyApp(t *testing.T) *flakyApp {
	a := &flakyApp{release: make(chan struct{})}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.checks.Add(1)
		if a.hang.Add(-1) >= 0 {
			select { // the probe's timeout cancels the request
			case <-r.Context().Done():
			case <-a.release:
			}
			return
		}
		if a.fail.Add(-1) >= 0 {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(func() { close(a.release); a.srv.Close() })
	return a
}

// startRegistry serves the built-in registry's API (the control plane's
// handler over a Memory) on a loopback socket.
func startRegistry(t *testing.T, wrap func(http.Handler) http.Handler) (*registry.Memory, *httptest.Server) {
	mem, err := registry.NewMemory(registry.MemoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := registry.NewHandler(mem, registry.HandlerOptions{Token: thresholdTestToken})
	if err != nil {
		t.Fatal(err)
	}
	var hh http.Handler = h
	if wrap != nil {
		hh = wrap(h)
	}
	srv := httptest.NewServer(hh)
	t.Cleanup(srv.Close)
	return mem, srv
}

// TestHealthThresholds: a passing app is reported critical only after
// -unhealthy-threshold (3) consecutive failed checks, errors and timeouts
// alike, and passing again only after -healthy-threshold (2) consecutive
// passes. The app and the registry are real servers; each step is one
// check followed by one heartbeat, and the registry is read back.
func TestHealthThresholds(t *testing.T) {
	app := newFlakyApp(t)
	mem, regSrv := startRegistry(t, nil)
	cfg := Config{
		Registry: RegistryBuiltin, RegistryURL: regSrv.URL, RegistrationToken: thresholdTestToken,
		AppAddr: strings.TrimPrefix(app.srv.URL, "http://"), AppHealthPath: "/health",
		HealthInterval: time.Second, HealthTimeout: 300 * time.Millisecond, TTL: 30 * time.Second,
		UnhealthyThreshold: 3, HealthyThreshold: 2,
	}
	reg, err := newRegistrar(cfg)
	if err != nil {
		t.Fatal(err)
	}
	info := registry.Registration{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 7001, Version: "v1", TTL: cfg.TTL}
	pr := prometheus.NewRegistry()
	l, err := newLifecycle(cfg, telemetry.NewLogger(io.Discard, 0), reg, info, &gate{}, func() bool { return true }, pr)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	step := func(t *testing.T) registry.Health {
		t.Helper()
		l.observe(l.checkApp(ctx))
		if err := l.report(ctx); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
		snap, err := mem.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		inst, ok := snap.Instance(info.ID)
		if !ok {
			t.Fatal("the instance is not registered")
		}
		h, _ := l.health()
		if inst.Health != h {
			t.Fatalf("registry has %s, the sidecar %s", inst.Health, h)
		}
		return inst.Health
	}
	if h := step(t); h != registry.HealthPassing {
		t.Fatalf("start: %s, want passing", h)
	}

	tests := []struct {
		desc       string
		fail, hang int32
		want       []registry.Health // after each check, failing ones first
	}{
		{desc: "one failure stays passing", fail: 1, want: []registry.Health{registry.HealthPassing, registry.HealthPassing}},
		{desc: "two failures stay passing", fail: 2, want: []registry.Health{registry.HealthPassing, registry.HealthPassing, registry.HealthPassing}},
		{desc: "one timeout stays passing", hang: 1, want: []registry.Health{registry.HealthPassing, registry.HealthPassing}},
		{desc: "two failures then a pass reset the count", fail: 2, want: []registry.Health{registry.HealthPassing, registry.HealthPassing, registry.HealthPassing}},
		{desc: "three failures are critical, two passes passing", fail: 3, want: []registry.Health{
			registry.HealthPassing, registry.HealthPassing, registry.HealthCritical, // failures
			registry.HealthCritical, registry.HealthPassing, // passes
		}},
		{desc: "three timeouts are critical", hang: 3, want: []registry.Health{
			registry.HealthPassing, registry.HealthPassing, registry.HealthCritical,
			registry.HealthCritical, registry.HealthPassing,
		}},
		{desc: "three failures again are critical", fail: 3, want: []registry.Health{
			registry.HealthPassing, registry.HealthPassing, registry.HealthCritical,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			app.fail.Store(tc.fail)
			app.hang.Store(tc.hang)
			for i, want := range tc.want {
				if got := step(t); got != want {
					t.Fatalf("check %d: %s, want %s (output %q)", i+1, got, want, func() string { _, o := l.health(); return o }())
				}
			}
		})
	}
	// The last case left the app critical: pass, fail, pass, pass
	// recovers only on the second pair (a failure restarts the count).
	for i, want := range []registry.Health{registry.HealthCritical} {
		if got := step(t); got != want {
			t.Fatalf("recovery check %d: %s, want %s", i+1, got, want)
		}
	}
	app.fail.Store(1)
	for i, want := range []registry.Health{registry.HealthCritical, registry.HealthCritical, registry.HealthPassing} {
		if got := step(t); got != want {
			t.Fatalf("pass/fail/pass/pass check %d: %s, want %s", i+2, got, want)
		}
	}
	if n := promtest.ToFloat64(l.mChecks.WithLabelValues(string(registry.HealthCritical))); n != 16 {
		t.Errorf("petmesh_sidecar_app_checks_total{result=critical} = %v, want 16", n)
	}
}

// TestHeartbeatsAreNotTraced: every registry call of the sidecar (register,
// heartbeats) carries a valid W3C trace context with the sampled flag off,
// so the registry API, traced with the default parent-based sampler, records
// no span for them, while it does for a call without a trace context.
func TestHeartbeatsAreNotTraced(t *testing.T) {
	tel, rec := recordingTelemetry()
	var mu sync.Mutex
	var seen []string
	_, regSrv := startRegistry(t, func(next http.Handler) http.Handler {
		traced := httpx.Standard(tel, "registry", 64<<10)(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, r.Header.Get("traceparent"))
			mu.Unlock()
			traced.ServeHTTP(w, r)
		})
	})
	app := newFlakyApp(t)
	cfg := Config{
		Registry: RegistryBuiltin, RegistryURL: regSrv.URL, RegistrationToken: thresholdTestToken,
		AppAddr: strings.TrimPrefix(app.srv.URL, "http://"), AppHealthPath: "/health",
		HealthInterval: time.Second, HealthTimeout: time.Second, TTL: 30 * time.Second,
	}
	reg, err := newRegistrar(cfg)
	if err != nil {
		t.Fatal(err)
	}
	info := registry.Registration{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 7001, Version: "v1", TTL: cfg.TTL}
	l, err := newLifecycle(cfg, telemetry.NewLogger(io.Discard, 0), reg, info, &gate{}, func() bool { return true }, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	l.observe(registry.HealthCritical, "starting") // the first report registers, the next ones heartbeat
	for range 3 {
		if err := l.report(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	calls := append([]string(nil), seen...)
	mu.Unlock()
	if len(calls) != 4 { // register + SetHealth, then two heartbeats
		t.Fatalf("%d registry calls, want 4 (register, then a heartbeat per report)", len(calls))
	}
	for i, tp := range calls {
		wantUnsampled(t, fmt.Sprintf("registry call %d", i), tp)
		if i > 0 && tp == calls[i-1] {
			t.Errorf("registry calls %d and %d share the traceparent %q", i-1, i, tp)
		}
	}
	// The control: the same server traces a call without a trace context,
	// and that span is the only one.
	resp, err := http.Get(regSrv.URL + registry.PathInstances)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := len(rec.Ended()); n != 1 {
			return fmt.Errorf("the registry recorded %d spans for 4 sidecar calls and one plain call, want 1", n)
		}
		return nil
	})
}
