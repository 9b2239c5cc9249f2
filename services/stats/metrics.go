package stats

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons for petmesh_stats_events_dropped_total.
const (
	// dropQueueFull: POST /events was answered 503 because the queue was
	// full; the sender may retry.
	dropQueueFull = "queue_full"
	// dropStoreError: accepted events that could not be written.
	dropStoreError = "store_error"
)

type metrics struct {
	ingested      prometheus.Counter
	dropped       *prometheus.CounterVec
	batchDuration prometheus.Histogram
	petsFetches   *prometheus.CounterVec
	pruned        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, q *Queue) (*metrics, error) {
	m := &metrics{
		ingested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_stats_events_ingested_total",
			Help: "Request events written to the statistics store.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_stats_events_dropped_total",
			Help: "Request events not stored, by reason: queue_full (rejected with 503) or store_error.",
		}, []string{"reason"}),
		batchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "petmesh_stats_ingest_batch_duration_seconds",
			Help:    "Time to write one batch of events to SQLite.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		petsFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_stats_pets_fetches_total",
			Help: "Full reads of the pets API for /stats/pets, by result (ok or error).",
		}, []string{"result"}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_stats_retention_deleted_rows_total",
			Help: "Aggregate rows deleted by the retention loop.",
		}),
	}
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "petmesh_stats_queue_events",
		Help: "Events waiting in the ingest queue or being written.",
	}, func() float64 { return float64(q.Len()) })
	capacity := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "petmesh_stats_queue_capacity_events",
		Help: "Capacity of the ingest queue in events.",
	})
	capacity.Set(float64(q.max))
	m.dropped.WithLabelValues(dropQueueFull)
	m.dropped.WithLabelValues(dropStoreError)
	m.petsFetches.WithLabelValues("ok")
	m.petsFetches.WithLabelValues("error")
	for _, c := range []prometheus.Collector{m.ingested, m.dropped, m.batchDuration, m.petsFetches, m.pruned, depth, capacity} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register stats metrics: %w", err)
		}
	}
	return m, nil
}
