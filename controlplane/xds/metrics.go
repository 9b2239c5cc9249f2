package xds

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus series. Names used by alert rules
// and dashboards (observability/): petmesh_xds_convergence_seconds,
// petmesh_xds_nacks_total, petmesh_controlplane_connected_proxies,
// petmesh_controlplane_proxy_stale.
type metrics struct {
	convergence    *prometheus.HistogramVec
	nacks          *prometheus.CounterVec
	snapshotErrors *prometheus.CounterVec
	published      prometheus.Counter
	rebuilds       prometheus.Counter
	rebuildSeconds prometheus.Histogram
	routeVersion   prometheus.Gauge
	storeErrors    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		convergence: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "petmesh_xds_convergence_seconds",
			Help:    "Time from a change's acceptance (route table version stored, registry change seen) to a proxy's ACK of the version carrying it, by type.",
			Buckets: []float64{.005, .01, .025, .05, .1, .2, .5, 1, 2, 5, 10, 30},
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_xds_nacks_total", Help: "Configurations rejected by proxies (NACK), by type.",
		}, []string{"type"}),
		snapshotErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_controlplane_snapshot_errors_total",
			Help: "Node snapshots not published, by reason (translate: the translator failed; inconsistent: the consistency check failed).",
		}, []string{"reason"}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_controlplane_snapshots_published_total", Help: "Node snapshots handed to the xDS cache (at least one type changed).",
		}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_controlplane_rebuilds_total", Help: "Debounced rebuilds of every node's snapshot.",
		}),
		rebuildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "petmesh_controlplane_rebuild_duration_seconds", Help: "Duration of a rebuild of every node's snapshot.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		routeVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "petmesh_controlplane_route_version", Help: "Route table version being served.",
		}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_controlplane_store_errors_total", Help: "Failed reads of a route table version from the store.",
		}),
	}
	// Every type's NACK counter and convergence histogram exist from the
	// start at 0. For the counter, increase() is then 0, not empty, until
	// a proxy NACKs (the PetmeshProxyNACKing alert and the NACK panel read
	// it). For the histogram, a series born at its first observation
	// would be first scraped with that observation already counted, so
	// rate() would never see the first changes (a quiet mesh's only
	// ones): the convergence panels stayed empty.
	for _, t := range Types {
		m.nacks.WithLabelValues(ShortType(t))
		m.convergence.WithLabelValues(ShortType(t))
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.convergence, m.nacks, m.snapshotErrors, m.published, m.rebuilds, m.rebuildSeconds, m.routeVersion, m.storeErrors, proxyCollector{s}} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}

var (
	connectedDesc = prometheus.NewDesc("petmesh_controlplane_connected_proxies",
		"Proxies with at least one open ADS stream, by kind.", []string{"kind"}, nil)
	staleDesc = prometheus.NewDesc("petmesh_controlplane_proxy_stale",
		"1 when a connected proxy has not ACKed its latest configuration for longer than the stale threshold (60s by default), else 0.", []string{"node"}, nil)
)

// proxyCollector computes the per-proxy gauges at scrape time from the
// server's state, so they are never out of date and need no goroutine.
type proxyCollector struct{ s *Server }

func (c proxyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- connectedDesc
	ch <- staleDesc
}

func (c proxyCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{"edge": 0, "sidecar": 0, "proxyless": 0}
	for _, p := range c.s.Status() {
		if !p.Connected {
			continue
		}
		counts[p.Kind]++
		v := 0.0
		if p.Stale {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(staleDesc, prometheus.GaugeValue, v, p.ID)
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, float64(n), k)
	}
}
