package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds in HDR histograms with two
// significant digits (values are exact to within 1%) over 0 µs .. 1 h;
// slower requests are recorded as 1 h. Every stored histogram has this
// configuration: changing it needs a new encoding version and a
// migration.
const (
	histLowest  = 1
	histHighest = int64(time.Hour / time.Microsecond)
	histDigits  = 2
)

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histLowest, histHighest, histDigits)
}

// newCounts returns a zeroed counts array of the stored configuration.
func newCounts() []int64 { return newHist().Export().Counts }

// histFromCounts builds a histogram (taking ownership of c) so that the
// library computes percentiles.
func histFromCounts(c []int64) *hdrhistogram.Histogram {
	return hdrhistogram.Import(&hdrhistogram.Snapshot{
		LowestTrackableValue: histLowest, HighestTrackableValue: histHighest, SignificantFigures: histDigits, Counts: c,
	})
}

// micros converts a latency in milliseconds to the recorded value.
func micros(ms float64) int64 {
	v := math.Round(ms * 1000)
	switch {
	case v <= 0 || math.IsNaN(v):
		return 0
	case v >= float64(histHighest):
		return histHighest
	}
	return int64(v)
}

// The stored form of a histogram is its hdrhistogram Snapshot (Export)
// written sparsely, because almost all of a latency histogram's counters
// are zero:
//
//	byte    version (1)
//	uvarint LowestTrackableValue, HighestTrackableValue, SignificantFigures
//	repeated: uvarint gap to the previous non-zero counter's index, uvarint count
//
// Unlike the library's V2 compressed encoding it needs no zlib state, so
// writing and reading a row allocate almost nothing. Histograms of one
// configuration share counter indexes, so merging stored histograms is
// adding counters (what Histogram.Merge does); percentiles are computed by
// the library on the merged snapshot (Import).
const encodingV1 = 1

var errBadEncoding = errors.New("malformed histogram encoding")

// encodeCounts encodes a counts array of the stored configuration.
func encodeCounts(c []int64) []byte {
	b := make([]byte, 0, 64)
	b = append(b, encodingV1)
	b = binary.AppendUvarint(b, histLowest)
	b = binary.AppendUvarint(b, uint64(histHighest))
	b = binary.AppendUvarint(b, histDigits)
	prev := -1
	for i, n := range c {
		if n <= 0 {
			continue
		}
		b = binary.AppendUvarint(b, uint64(i-prev))
		b = binary.AppendUvarint(b, uint64(n))
		prev = i
	}
	return b
}

// counter is one non-zero counter of a decoded histogram.
type counter struct {
	idx int
	n   int64
}

// decodeCounters appends the non-zero counters of b to dst. It rejects
// encodings of another configuration, whose indexes mean other values.
func decodeCounters(dst []counter, b []byte, countsLen int) ([]counter, error) {
	if len(b) == 0 || b[0] != encodingV1 {
		return dst, fmt.Errorf("%w: unknown version", errBadEncoding)
	}
	b = b[1:]
	var hdr [3]uint64
	for i := range hdr {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return dst, fmt.Errorf("%w: truncated header", errBadEncoding)
		}
		hdr[i], b = v, b[n:]
	}
	if hdr != [3]uint64{histLowest, uint64(histHighest), histDigits} {
		return dst, fmt.Errorf("%w: configuration %v differs from %v", errBadEncoding, hdr, [3]uint64{histLowest, uint64(histHighest), histDigits})
	}
	idx := -1
	for len(b) > 0 {
		gap, n := binary.Uvarint(b)
		if n <= 0 || gap == 0 || gap > uint64(countsLen) {
			return dst, fmt.Errorf("%w: bad index", errBadEncoding)
		}
		b = b[n:]
		cnt, n := binary.Uvarint(b)
		if n <= 0 || cnt == 0 || cnt > math.MaxInt64 {
			return dst, fmt.Errorf("%w: bad count", errBadEncoding)
		}
		b = b[n:]
		idx += int(gap)
		if idx >= countsLen {
			return dst, fmt.Errorf("%w: index out of range", errBadEncoding)
		}
		dst = append(dst, counter{idx: idx, n: int64(cnt)})
	}
	return dst, nil
}

func addCounters(c []int64, cs []counter) {
	for _, x := range cs {
		c[x.idx] += x.n
	}
}

// Latency holds percentiles in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
}

func ms(us int64) float64 { return float64(us) / 1000 }

func latencyOf(h *hdrhistogram.Histogram) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	return Latency{
		P50: ms(h.ValueAtQuantile(50)),
		P90: ms(h.ValueAtQuantile(90)),
		P99: ms(h.ValueAtQuantile(99)),
	}
}
