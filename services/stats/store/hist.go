package store

import (
	"fmt"
	"math"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds in HDR histograms with two
// significant digits (values are exact to within 1%) over 0 µs .. 1 h;
// slower requests are recorded as 1 h. Two digits keep a decoded histogram
// at about 26 KiB, which is what makes a 7-day query over thousands of
// stored rows cheap.
const (
	histLowest  = 1
	histHighest = int64(time.Hour / time.Microsecond)
	histDigits  = 2
)

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histLowest, histHighest, histDigits)
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

// encodeHist returns the HdrHistogram V2 compressed encoding (base64 text).
func encodeHist(h *hdrhistogram.Histogram) ([]byte, error) {
	b, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	if err != nil {
		return nil, fmt.Errorf("encode histogram: %w", err)
	}
	return b, nil
}

func decodeHist(b []byte) (*hdrhistogram.Histogram, error) {
	h, err := hdrhistogram.Decode(b)
	if err != nil {
		return nil, fmt.Errorf("decode histogram: %w", err)
	}
	return h, nil
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
