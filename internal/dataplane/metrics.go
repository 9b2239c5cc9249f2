package dataplane

import (
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	retries        *prometheus.CounterVec
	retryOverflow  *prometheus.CounterVec
	ejections      *prometheus.CounterVec
	lbPanic        *prometheus.CounterVec
	circuitOpen    *prometheus.GaugeVec
	healthy        *prometheus.GaugeVec
	rateLimited    *prometheus.CounterVec
	configApplied  prometheus.Counter
	configRejected prometheus.Counter
	configTime     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_dataplane_requests_total", Help: "Requests by listener, route, cluster and response status.",
		}, []string{"listener", "route", "cluster", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "petmesh_dataplane_request_duration_seconds", Help: "Request duration by listener, route and cluster.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"listener", "route", "cluster"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_dataplane_upstream_rq_retry_total", Help: "Upstream request retries by cluster.",
		}, []string{"cluster"}),
		retryOverflow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_dataplane_upstream_rq_retry_overflow_total", Help: "Retries not attempted because the retry budget was exhausted, by cluster.",
		}, []string{"cluster"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_dataplane_outlier_ejections_total", Help: "Outlier detection ejections by cluster.",
		}, []string{"cluster"}),
		lbPanic: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_dataplane_lb_panic_total", Help: "Endpoint picks made in panic mode (fewer available endpoints than healthy_panic_threshold: every endpoint is balanced over), by cluster.",
		}, []string{"cluster"}),
		circuitOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "petmesh_dataplane_circuit_open", Help: "1 while a circuit-breaker threshold of the cluster is reached (resource: requests, pending, connections).",
		}, []string{"cluster", "resource"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "petmesh_dataplane_healthy_endpoints", Help: "Endpoints passing active health checks, by cluster.",
		}, []string{"cluster"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_dataplane_rate_limited_total", Help: "Requests answered 429 by the local rate limit, by listener and route.",
		}, []string{"listener", "route"}),
		configApplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_dataplane_config_applied_total", Help: "Handler graphs swapped in.",
		}),
		configRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_dataplane_config_rejected_total", Help: "Configurations rejected by the build step.",
		}),
		configTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "petmesh_dataplane_config_applied_timestamp_seconds", Help: "When the active handler graph was swapped in.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.retries, m.retryOverflow, m.ejections, m.lbPanic,
		m.circuitOpen, m.healthy, m.rateLimited, m.configApplied, m.configRejected, m.configTime} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("dataplane: register metrics: %w", err)
		}
	}
	return m, nil
}

// rcStats are the precompiled metric children of one (listener, route,
// cluster) triple, so that the hot path does no label hashing.
type rcStats struct {
	m                        *metrics
	listener, route, cluster string
	dur                      prometheus.Observer
	codes                    [600]atomic.Pointer[prometheus.Counter]
}

func (m *metrics) rc(listener, route, cluster string) *rcStats {
	return &rcStats{m: m, listener: listener, route: route, cluster: cluster,
		dur: m.duration.WithLabelValues(listener, route, cluster)}
}

func (s *rcStats) code(c int) prometheus.Counter {
	if c < 0 || c >= len(s.codes) {
		return s.m.requests.WithLabelValues(s.listener, s.route, s.cluster, strconv.Itoa(c))
	}
	if p := s.codes[c].Load(); p != nil {
		return *p
	}
	ctr := s.m.requests.WithLabelValues(s.listener, s.route, s.cluster, strconv.Itoa(c))
	s.codes[c].Store(&ctr)
	return ctr
}
