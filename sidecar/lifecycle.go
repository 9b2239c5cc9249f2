package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/httpx"
)

// Backoff bounds of registry retries.
const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// lifecycle owns the app health checks and the instance's registration:
// it waits for the app to be healthy, opens the inbound gate, registers,
// and then reports the app's health (which also renews the TTL) every tick.
type lifecycle struct {
	log       *slog.Logger
	reg       registry.Registrar // nil with -registry none
	regInfo   registry.Registration
	appURL    string
	client    *http.Client
	interval  time.Duration // app check and heartbeat period
	startPoll time.Duration // app check period before it is first healthy

	gate       *gate
	configured func() bool // the data plane has a complete configuration
	healthy    atomic.Bool // the app's health (after the thresholds) is passing
	registered atomic.Bool

	// Consecutive-result thresholds (as Envoy's unhealthy_threshold and
	// healthy_threshold, Consul's failures_before_critical and
	// success_before_passing): a passing app turns critical after
	// unhealthyThreshold failed checks in a row, a critical one passing
	// after healthyThreshold passed checks in a row. Until the app has
	// passed once, as in Envoy at startup, one passed check is enough
	// (nothing is registered before it).
	unhealthyThreshold int
	healthyThreshold   int

	mu         sync.Mutex
	current    registry.Health // the app's health after the thresholds ("" before the first check)
	output     string          // its check output
	failures   int             // consecutive failed checks
	successes  int             // consecutive passed checks
	passedOnce bool            // the app has been passing

	mHealthy     prometheus.Gauge
	mRegistered  prometheus.Gauge
	mTransitions *prometheus.CounterVec
	mRegErrors   *prometheus.CounterVec
	mChecks      *prometheus.CounterVec
}

func newLifecycle(cfg Config, log *slog.Logger, reg registry.Registrar, info registry.Registration, g *gate, configured func() bool, pr prometheus.Registerer) (*lifecycle, error) {
	l := &lifecycle{
		log:                log,
		reg:                reg,
		regInfo:            info,
		appURL:             "http://" + cfg.AppAddr + cfg.AppHealthPath,
		client:             &http.Client{Timeout: cfg.HealthTimeout, Transport: &http.Transport{MaxIdleConns: 1, IdleConnTimeout: 2 * cfg.HealthInterval}},
		interval:           min(cfg.HealthInterval, cfg.TTL/3),
		startPoll:          min(cfg.HealthInterval, 200*time.Millisecond),
		gate:               g,
		configured:         configured,
		unhealthyThreshold: max(cfg.UnhealthyThreshold, 1),
		healthyThreshold:   max(cfg.HealthyThreshold, 1),
		mHealthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "petmesh_sidecar_app_healthy", Help: "1 while the app's health (after -unhealthy-threshold and -healthy-threshold) is passing.",
		}),
		mRegistered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "petmesh_sidecar_registered", Help: "1 while the instance is registered.",
		}),
		mTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_sidecar_app_health_transitions_total", Help: "App health transitions by new health.",
		}, []string{"health"}),
		mRegErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_sidecar_registry_errors_total", Help: "Failed registry calls by operation.",
		}, []string{"op"}),
		mChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_sidecar_app_checks_total", Help: "App health checks by result (passing or critical), before the thresholds.",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{l.mHealthy, l.mRegistered, l.mTransitions, l.mRegErrors, l.mChecks} {
		if err := pr.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return l, nil
}

// checkApp probes the app's health endpoint once: 2xx is passing.
func (l *lifecycle) checkApp(ctx context.Context) (registry.Health, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.appURL, nil)
	if err != nil {
		return registry.HealthCritical, err.Error()
	}
	req.Header.Set("traceparent", unsampledTraceparent())
	resp, err := l.client.Do(req)
	if err != nil {
		return registry.HealthCritical, fmt.Sprintf("GET %s: %v", l.appURL, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return registry.HealthCritical, fmt.Sprintf("GET %s: status %d", l.appURL, resp.StatusCode)
	}
	return registry.HealthPassing, fmt.Sprintf("GET %s: status %d", l.appURL, resp.StatusCode)
}

// unsampledTraceparent returns a W3C trace context whose sampled flag is
// off, for the health probes: the app's parent-based sampler follows it,
// so a probe every few seconds per instance is neither a trace of its own
// in Jaeger nor an exemplar that hides a real request's trace.
func unsampledTraceparent() string {
	return fmt.Sprintf("00-%016x%016x-%016x-00", rand.Uint64()|1, rand.Uint64(), rand.Uint64()|1)
}

// observe records one check result and applies the thresholds: the
// reported health changes only after enough consecutive results of the
// other kind. Each transition is logged.
func (l *lifecycle) observe(h registry.Health, output string) {
	l.mChecks.WithLabelValues(string(h)).Inc()
	l.mu.Lock()
	prev := l.current
	if h == registry.HealthPassing {
		l.successes++
		l.failures = 0
	} else {
		l.failures++
		l.successes = 0
	}
	next := prev
	switch {
	case prev == "":
		next = h // the first check: nothing to smooth yet
	case prev == registry.HealthPassing && h != registry.HealthPassing && l.failures >= l.unhealthyThreshold:
		next = h
	case prev != registry.HealthPassing && h == registry.HealthPassing && (l.successes >= l.healthyThreshold || !l.passedOnce):
		next = h
	}
	if next == registry.HealthPassing {
		l.passedOnce = true
	}
	switch {
	case next == h:
		l.output = output
	case h != registry.HealthPassing:
		// Still passing: say so, and why it may not stay so.
		l.output = fmt.Sprintf("passing (%d of %d consecutive failures before critical; last: %s)", l.failures, l.unhealthyThreshold, output)
	default:
		l.output = fmt.Sprintf("critical (%d of %d consecutive passes before passing; last: %s)", l.successes, l.healthyThreshold, output)
	}
	l.current = next
	failures := l.failures
	l.mu.Unlock()
	l.healthy.Store(next == registry.HealthPassing)
	if next == registry.HealthPassing {
		l.mHealthy.Set(1)
	} else {
		l.mHealthy.Set(0)
	}
	if prev == next {
		if h != registry.HealthPassing && next == registry.HealthPassing {
			l.log.Info("app health check failed; still passing", "consecutive_failures", failures, "unhealthy_threshold", l.unhealthyThreshold, "output", output)
		}
		return
	}
	l.mTransitions.WithLabelValues(string(next)).Inc()
	from := string(prev)
	if from == "" {
		from = "unknown"
	}
	lvl := slog.LevelInfo
	if next != registry.HealthPassing {
		lvl = slog.LevelWarn
	}
	l.log.Log(context.Background(), lvl, "app health transition", "from", from, "to", string(next), "output", output)
}

// health returns the app's health after the thresholds and its output.
func (l *lifecycle) health() (registry.Health, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.current, l.output
}

// run drives the lifecycle until ctx is done. It returns an error only for
// a registration the registry refuses as invalid (a configuration error).
func (l *lifecycle) run(ctx context.Context) error {
	// Phase 1: wait for the app and for a complete configuration (the
	// inbound listener cannot serve without its routes).
	waitLogged := time.Now()
	for {
		h, out := l.checkApp(ctx)
		if ctx.Err() != nil {
			return nil
		}
		l.observe(h, out)
		h, out = l.health()
		cfgOK := l.configured()
		if h == registry.HealthPassing && cfgOK {
			break
		}
		if time.Since(waitLogged) > 10*time.Second {
			l.log.Info("waiting before registering", "app_health", string(h), "app_output", out, "configured", cfgOK)
			waitLogged = time.Now()
		}
		if !sleep(ctx, l.startPoll) {
			return nil
		}
	}
	l.gate.open.Store(true)
	l.log.Info("app healthy and configured: inbound open", "url", l.appURL)

	// Phase 2: register, then report health every tick.
	backoff := minBackoff
	for {
		wait := l.interval
		if l.reg != nil {
			if err := l.report(ctx); err != nil {
				var ve *registry.ValidationError
				if errors.As(err, &ve) {
					return fmt.Errorf("registration refused: %w", err)
				}
				if ctx.Err() != nil {
					return nil
				}
				wait = min(backoff/2+rand.N(backoff/2+1), l.interval)
				backoff = min(backoff*2, maxBackoff)
			} else {
				backoff = minBackoff
			}
		}
		if !sleep(ctx, wait) {
			return nil
		}
		h, out := l.checkApp(ctx)
		if ctx.Err() != nil {
			return nil
		}
		l.observe(h, out)
	}
}

// report registers the instance when it is not registered, then sets its
// health (which renews the TTL).
func (l *lifecycle) report(ctx context.Context) error {
	h, out := l.health()
	if !l.registered.Load() {
		if err := l.reg.Register(ctx, l.regInfo); err != nil {
			l.mRegErrors.WithLabelValues("register").Inc()
			l.log.Warn("registration failed; retrying", "error", err)
			return err
		}
		l.registered.Store(true)
		l.mRegistered.Set(1)
		l.log.Info("registered", "address", l.regInfo.Address, "port", l.regInfo.Port, "version", l.regInfo.Version, "ttl", l.regInfo.TTL.String())
		if h == registry.HealthPassing {
			return nil // a registration starts passing
		}
	}
	err := l.reg.SetHealth(ctx, l.regInfo.ID, h, out)
	if errors.Is(err, registry.ErrNotFound) {
		// Expired (control plane restarted, long pause): register again.
		l.log.Warn("registry lost the instance; registering again")
		l.registered.Store(false)
		l.mRegistered.Set(0)
		return l.report(ctx)
	}
	if err != nil {
		l.mRegErrors.WithLabelValues("heartbeat").Inc()
		l.log.Warn("heartbeat failed; retrying", "error", err)
	}
	return err
}

// deregister removes the instance if it was registered.
func (l *lifecycle) deregister(ctx context.Context) {
	if l.reg == nil || !l.registered.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := l.reg.Deregister(ctx, l.regInfo.ID)
	if err != nil && !errors.Is(err, registry.ErrNotFound) {
		l.mRegErrors.WithLabelValues("deregister").Inc()
		l.log.Error("deregistration failed; the instance will expire with its TTL", "error", err)
		return
	}
	l.registered.Store(false)
	l.mRegistered.Set(0)
	l.log.Info("deregistered")
}

// sleep waits d or until ctx is done; false when ctx is done.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// gate answers 503 on the inbound listener until the app has been healthy
// once, so no traffic reaches an app that is still starting.
type gate struct {
	open atomic.Bool
	next http.Handler
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !g.open.Load() {
		w.Header().Set("Retry-After", "1")
		httpx.WriteError(w, httpx.Unavailable("the app is not ready yet"))
		return
	}
	g.next.ServeHTTP(w, r)
}
