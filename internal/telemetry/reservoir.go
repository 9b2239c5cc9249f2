package telemetry

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/trace"
)

// The OpenTelemetry SDK's default exemplar reservoir for a histogram keeps,
// per bucket, a uniform random sample of the measurements made since the
// last scrape: the n-th request into a bucket replaces its exemplar with
// probability 1/n. When fast requests (readiness probes, pollers, cache
// hits) fill a bucket between two scrapes, the request an operator has
// just traced is then almost never its bucket's exemplar. Prometheus's own
// client keeps the latest observation per bucket, and so do the meter
// providers built here (latestExemplarView), so the exemplar of a bucket
// names the most recent sampled request that landed in it, in every
// process, whichever library records the histogram.

// latestExemplarView gives explicit-bucket histograms the latest-per-bucket
// reservoir; every other instrument keeps the SDK's default.
var latestExemplarView = sdkmetric.NewView(
	sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindHistogram},
	sdkmetric.Stream{ExemplarReservoirProviderSelector: latestExemplarSelector},
)

// latestExemplarSelector picks the latest-per-bucket reservoir for
// explicit-bucket histograms and the SDK's default for anything else.
func latestExemplarSelector(agg sdkmetric.Aggregation) exemplar.ReservoirProvider {
	if a, ok := agg.(sdkmetric.AggregationExplicitBucketHistogram); ok && len(a.Boundaries) > 0 {
		bounds := slices.Clone(a.Boundaries)
		slices.Sort(bounds)
		return func(attribute.Set) exemplar.Reservoir { return newLatestReservoir(bounds) }
	}
	return sdkmetric.DefaultExemplarReservoirProviderSelector(agg)
}

// latestReservoir keeps the last offered measurement per histogram bucket
// (upper bounds inclusive, as the histogram counts them). The SDK offers
// only measurements its exemplar filter passes (a sampled span by
// default). It is safe for concurrent use.
type latestReservoir struct {
	bounds []float64

	mu   sync.Mutex
	held []bool
	ex   []exemplar.Exemplar
}

var _ exemplar.Reservoir = (*latestReservoir)(nil)

func newLatestReservoir(bounds []float64) *latestReservoir {
	return &latestReservoir{bounds: bounds, held: make([]bool, len(bounds)+1), ex: make([]exemplar.Exemplar, len(bounds)+1)}
}

// Offer implements exemplar.Reservoir.
func (r *latestReservoir) Offer(ctx context.Context, t time.Time, v exemplar.Value, a []attribute.KeyValue) {
	var n float64
	switch v.Type() {
	case exemplar.Int64ValueType:
		n = float64(v.Int64())
	case exemplar.Float64ValueType:
		n = v.Float64()
	default:
		return
	}
	i := sort.SearchFloat64s(r.bounds, n)
	e := exemplar.Exemplar{Time: t, Value: v, FilteredAttributes: slices.Clone(a)}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		tid, sid := sc.TraceID(), sc.SpanID()
		e.TraceID, e.SpanID = tid[:], sid[:]
	}
	r.mu.Lock()
	r.ex[i], r.held[i] = e, true
	r.mu.Unlock()
}

// Collect implements exemplar.Reservoir: the held exemplars stay, as the
// SDK's reservoirs keep theirs, so a bucket without new requests keeps
// showing its last one.
func (r *latestReservoir) Collect(dest *[]exemplar.Exemplar) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := (*dest)[:0]
	for i, ok := range r.held {
		if ok {
			out = append(out, r.ex[i])
		}
	}
	*dest = out
}
