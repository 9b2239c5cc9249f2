package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// FixedRateConfig describes one open-loop fixed-rate load.
type FixedRateConfig struct {
	URL    string
	Header http.Header
	Rate   int           // requests per second, > 0
	Lead   time.Duration // sent at the same rate before the measured window, not recorded (opens connections)
	// Duration is the measured window: Rate × Duration requests are recorded.
	Duration time.Duration
	// Conns is the number of connections (default 64): request i is due
	// at start + i/Rate and is sent on connection i mod Conns, as wrk2
	// does, so that an overloaded target faces a fixed number of
	// connections rather than a storm of new ones.
	Conns int
	// Timeout bounds one request (default 10s); a timed-out request is an error.
	Timeout time.Duration
}

// FixedRateResult is the outcome of a fixed-rate load. Latency is measured
// from each request's intended send time (start + i/rate), not from when it
// was actually sent, so a stall of the target or of the generator shows in
// the percentiles of every request that should have been sent meanwhile
// (no coordinated omission). Service is measured from the actual send.
type FixedRateResult struct {
	Sent    int64         `json:"sent"`
	OK      int64         `json:"ok"`
	Errors  int64         `json:"errors"`
	First   string        `json:"first_error,omitempty"`
	Latency Percentiles   `json:"latency"`
	Service Percentiles   `json:"service_time"`
	Elapsed time.Duration `json:"-"`
	// Achieved is OK responses per second of the measured window.
	Achieved float64 `json:"achieved_rps"`
	// MaxLateness is how late the generator itself woke up to send a
	// request that was not held up by the previous one on its connection:
	// large values mean the machine starved the generator, and that time
	// is in the latency figures too.
	MaxLateness time.Duration `json:"-"`
	// GeneratorLateMs is MaxLateness in milliseconds.
	GeneratorLateMs float64 `json:"generator_max_late_ms"`
}

// Percentiles in milliseconds.
type Percentiles struct {
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`
}

// newHistogram records microseconds from 1µs to 2 minutes with three
// significant digits (HdrHistogram: relative error ≤ 0.1%).
func newHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(2*time.Minute/time.Microsecond), 3)
}

func percentiles(h *hdrhistogram.Histogram) Percentiles {
	if h.TotalCount() == 0 {
		return Percentiles{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Percentiles{
		P50:  ms(h.ValueAtQuantile(50)),
		P90:  ms(h.ValueAtQuantile(90)),
		P99:  ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)),
		Max:  ms(h.Max()),
	}
}

// FixedRate sends GET requests to cfg.URL at cfg.Rate per second on a
// fixed schedule over cfg.Conns keep-alive connections (open loop, like
// wrk2: request i is due at start + i/Rate whatever happened to earlier
// ones; a connection still busy with an earlier request sends it as soon
// as it is free, and its latency still counts from when it was due), and
// records every request of the measured window. Any status other than 200
// is an error. It returns when every request has completed or timed out;
// ctx cancels it.
func FixedRate(ctx context.Context, cfg FixedRateConfig) (*FixedRateResult, error) {
	if cfg.Rate <= 0 || cfg.Duration <= 0 {
		return nil, fmt.Errorf("fixed rate: rate %d and duration %v must be positive", cfg.Rate, cfg.Duration)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Conns <= 0 {
		cfg.Conns = 64
	}
	tr := &http.Transport{
		MaxIdleConns: cfg.Conns, MaxIdleConnsPerHost: cfg.Conns, MaxConnsPerHost: cfg.Conns, IdleConnTimeout: time.Minute,
		DisableCompression: true, ResponseHeaderTimeout: cfg.Timeout,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: cfg.Timeout}

	interval := time.Second / time.Duration(cfg.Rate)
	lead := int64(cfg.Lead / interval)
	total := lead + int64(cfg.Duration/interval)
	res := &FixedRateResult{}
	lat, svc := newHistogram(), newHistogram()
	var mu sync.Mutex
	record := func(intended, sent time.Time, late time.Duration, err error) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		res.Sent++
		res.MaxLateness = max(res.MaxLateness, late)
		if err != nil {
			res.Errors++
			if res.First == "" {
				res.First = err.Error()
			}
			return
		}
		res.OK++
		_ = lat.RecordValue(max(now.Sub(intended).Microseconds(), 1)) // beyond the histogram's 2 min: not recorded, Max is
		_ = svc.RecordValue(max(now.Sub(sent).Microseconds(), 1))
	}

	var wg sync.WaitGroup
	start := time.Now().Add(10 * time.Millisecond) // every connection's goroutine is started by then
	conns := int64(cfg.Conns)
	for c := int64(0); c < conns; c++ {
		wg.Go(func() {
			for i := c; i < total; i += conns {
				intended := start.Add(time.Duration(i) * interval)
				var late time.Duration
				if d := time.Until(intended); d > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(d):
					}
					late = time.Since(intended)
				}
				if ctx.Err() != nil {
					return
				}
				sent := time.Now()
				err := get(ctx, client, cfg.URL, cfg.Header)
				if i >= lead {
					record(intended, sent, late, err)
				}
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start.Add(time.Duration(lead) * interval))
	res.Latency, res.Service = percentiles(lat), percentiles(svc)
	res.Achieved = float64(res.OK) / cfg.Duration.Seconds()
	res.GeneratorLateMs = float64(res.MaxLateness.Microseconds()) / 1000
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return res, nil
}

func get(ctx context.Context, client *http.Client, url string, hdr http.Header) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}
