package store

import (
	"testing"
)

// FuzzDecodeCounters checks that no stored blob makes the decoder panic
// or produce an index outside the counts array, and that valid encodings
// round-trip.
func FuzzDecodeCounters(f *testing.F) {
	h := newHist()
	for _, v := range []int64{0, 1, 1700, 250000, histHighest} {
		_ = h.RecordValue(v)
	}
	f.Add(encodeCounts(h.Export().Counts))
	f.Add(encodeCounts(newCounts()))
	f.Add([]byte{encodingV1})
	f.Add([]byte("garbage"))
	n := len(newCounts())
	f.Fuzz(func(t *testing.T, b []byte) {
		cs, err := decodeCounters(nil, b, n)
		if err != nil {
			return
		}
		c := newCounts()
		for _, x := range cs {
			if x.idx < 0 || x.idx >= n || x.n <= 0 {
				t.Fatalf("bad counter %+v", x)
			}
		}
		addCounters(c, cs)
		again, err := decodeCounters(nil, encodeCounts(c), n)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if len(again) != len(cs) {
			t.Fatalf("round trip: %d counters, want %d", len(again), len(cs))
		}
	})
}
