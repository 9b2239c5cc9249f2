package registry

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the registry's Prometheus collectors. Every series carries a
// constant backend label ("memory" or "consul"), so both backends can
// register on one Registerer.
type metrics struct {
	instances   *prometheus.GaugeVec
	errors      *prometheus.CounterVec
	coalesced   prometheus.Counter
	watchers    prometheus.Gauge
	expired     prometheus.Counter
	stateErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, backend string) (*metrics, error) {
	cl := prometheus.Labels{"backend": backend}
	m := &metrics{
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "petmesh_registry_instances", ConstLabels: cl,
			Help: "Registered instances in the last registry snapshot, by service and health.",
		}, []string{"service", "health"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_registry_watch_errors_total", ConstLabels: cl,
			Help: "Failed registry watch queries (Consul blocking queries), by kind (catalog, health).",
		}, []string{"kind"}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_registry_watch_coalesced_total", ConstLabels: cl,
			Help: "Snapshots replaced by a newer one before a slow watcher read them.",
		}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "petmesh_registry_watchers", ConstLabels: cl,
			Help: "Open registry watch channels.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_registry_expired_total", ConstLabels: cl,
			Help: "Instances removed by the built-in registry because their TTL lapsed.",
		}),
		stateErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_registry_state_errors_total", ConstLabels: cl,
			Help: "Failed reads (at start) and writes of the built-in registry's state file.",
		}),
	}
	m.errors.WithLabelValues("catalog")
	m.errors.WithLabelValues("health")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.instances, m.errors, m.coalesced, m.watchers, m.expired, m.stateErrors} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("registry metrics: already registered (one %s backend per registerer): %w", backend, err)
			}
			return nil, fmt.Errorf("registry metrics: %w", err)
		}
	}
	return m, nil
}

// observe sets the instance gauges from s.
func (m *metrics) observe(s Snapshot) {
	m.instances.Reset()
	for name, l := range s.Services {
		counts := map[Health]int{}
		for _, in := range l {
			counts[in.Health]++
		}
		for h, n := range counts {
			m.instances.WithLabelValues(name, string(h)).Set(float64(n))
		}
	}
}
