package client

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	updates, acks, nacks *prometheus.CounterVec
	received             *prometheus.CounterVec
	connected            prometheus.Gauge
	reconnects           prometheus.Counter
	version              *prometheus.GaugeVec

	mu   sync.Mutex
	last map[string]string // type -> version label currently exported
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_xds_updates_total", Help: "xDS responses received, by type.",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_xds_acks_total", Help: "xDS responses accepted (ACK), by type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_xds_nacks_total", Help: "xDS responses rejected (NACK), by type.",
		}, []string{"type"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_xds_received_bytes_total", Help: "Bytes of xDS responses received (protobuf size), by type.",
		}, []string{"type"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "petmesh_xds_connected", Help: "1 while the ADS stream to the control plane is up.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_xds_reconnects_total", Help: "ADS stream reconnect attempts.",
		}),
		version: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "petmesh_xds_version_info", Help: "Accepted version_info per type (value 1 on the current version).",
		}, []string{"type", "version"}),
		last: map[string]string{},
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.updates, m.acks, m.nacks, m.received, m.connected, m.reconnects, m.version} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("xds client: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) setVersion(t, v string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.last[t]; ok && old != v {
		m.version.DeleteLabelValues(t, old)
	}
	m.last[t] = v
	m.version.WithLabelValues(t, v).Set(1)
}
