package client_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/controlplane/xds/xdstest"
	"github.com/petmesh/petmesh/internal/xds/client"
)

// realCP is the real control-plane xDS server (see xdstest) with
// helpers that change its inputs.
type realCP struct{ *xdstest.ControlPlane }

// startRealCP runs the real control plane, serving gRPC with serveOpts,
// until the test ends.
func startRealCP(t testing.TB, serveOpts ...grpc.ServerOption) *realCP {
	t.Helper()
	return &realCP{xdstest.Start(t, xdstest.Options{
		Server:       xds.Options{QuietPeriod: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond},
		ServeOptions: serveOpts,
	})}
}

// proxy is an ADS client of the real control plane whose Apply records
// every snapshot it accepts and can be told to reject.
type proxy struct {
	c    *client.Client
	prom *prometheus.Registry

	mu      sync.Mutex
	applied []*client.Snapshot
	reject  func(*client.Snapshot) error
}

func (p *proxy) applies() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.applied)
}

// startProxy runs a client with cfg (Server, Node, Apply and the backoff
// filled in when empty) until the test ends.
func startProxy(t testing.TB, cfg client.Config) *proxy {
	t.Helper()
	p := &proxy{prom: prometheus.NewRegistry()}
	if cfg.Node == nil {
		cfg.Node = xdstest.EdgeNode("e1")
	}
	cfg.Apply = func(_ context.Context, s *client.Snapshot) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.reject != nil {
			if err := p.reject(s); err != nil {
				return err
			}
		}
		p.applied = append(p.applied, s)
		return nil
	}
	if cfg.BackoffMin == 0 {
		cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Registerer = p.prom
	p.c = xdstest.StartClient(t, cfg)
	return p
}

// metric returns the value of a counter or gauge in reg (0 when absent)
// whose labels include want.
func metric(t testing.TB, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}
