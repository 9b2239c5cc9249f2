package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// chaosLoad is an open-loop, fixed-rate load: request i is due at
// start + i/rate whatever happened to the earlier ones, each on its own
// goroutine. A closed loop of workers slows down when the mesh stalls and
// so hides the stall (coordinated omission); this one keeps sending, and
// measures each latency from the request's due time, so time the
// generator itself fell behind counts against the mesh too.
type chaosLoad struct {
	client *http.Client
	url    string
	token  string
	rate   int
	start  time.Time

	cancel    context.CancelFunc
	scheduler sync.WaitGroup
	requests  sync.WaitGroup
	inflight  atomic.Int64

	mu      sync.Mutex
	samples []chaosSample
}

// chaosMaxInflight bounds the requests in flight: beyond it a due request is
// not sent and counts as failed ("generator: too many in flight"), so a
// mesh that stops answering cannot exhaust the test process.
const chaosMaxInflight = 4000

// chaosSample is one request of a chaosLoad.
type chaosSample struct {
	// At is when the request was due, since the load started.
	At time.Duration
	// Latency runs from the due time to the end of the response body.
	Latency time.Duration
	// Lag is how late the generator started the request (the test
	// process starved of CPU, not the mesh).
	Lag    time.Duration
	Status int
	// Reason is empty for a success (200), else why it failed.
	Reason string
}

// startChaosLoad sends GET url with the bearer token at rate requests per
// second until stop.
func startChaosLoad(client *http.Client, url, token string, rate int) *chaosLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &chaosLoad{client: client, url: url, token: token, rate: rate, start: time.Now(), cancel: cancel}
	l.scheduler.Go(func() { l.schedule(ctx) })
	return l
}

func (l *chaosLoad) schedule(ctx context.Context) {
	interval := time.Second / time.Duration(l.rate)
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i := 0; ; i++ {
		due := l.start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return
		}
		if l.inflight.Load() >= chaosMaxInflight {
			l.record(chaosSample{At: due.Sub(l.start), Reason: "generator: too many in flight"})
			continue
		}
		l.inflight.Add(1)
		l.requests.Go(func() {
			defer l.inflight.Add(-1)
			l.send(due)
		})
	}
}

// send runs one request. Requests are never cancelled by stop: one in
// flight when the load stops still counts, with the client's timeout.
func (l *chaosLoad) send(due time.Time) {
	s := chaosSample{At: due.Sub(l.start), Lag: time.Since(due)}
	req, err := http.NewRequest(http.MethodGet, l.url, nil)
	if err != nil {
		s.Reason = err.Error()
		l.record(s)
		return
	}
	req.Header.Set("Authorization", "Bearer "+l.token)
	resp, err := l.client.Do(req)
	var body []byte
	if err == nil {
		s.Status = resp.StatusCode
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	s.Latency = time.Since(due)
	s.Reason = chaosFailureReason(s.Status, body, err)
	l.record(s)
}

func (l *chaosLoad) record(s chaosSample) {
	l.mu.Lock()
	l.samples = append(l.samples, s)
	l.mu.Unlock()
}

// since returns the offset of t from the start of the load.
func (l *chaosLoad) since(t time.Time) time.Duration { return t.Sub(l.start) }

// okSince counts the successes due at or after offset from.
func (l *chaosLoad) okSince(from time.Duration) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.samples {
		if s.At >= from && s.Reason == "" {
			n++
		}
	}
	return n
}

// stop stops sending, waits for the requests in flight and returns every
// sample, in due order.
func (l *chaosLoad) stop() []chaosSample {
	l.cancel()
	l.scheduler.Wait()
	l.requests.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.samples)
	slices.SortFunc(out, func(a, b chaosSample) int { return int(a.At - b.At) })
	return out
}

// failureReason classifies a request's outcome: "" for a 200, else the
// status with the JSON error's code and message, or the kind of transport
// error.
func chaosFailureReason(status int, body []byte, err error) string {
	switch {
	case err != nil:
		return "transport: " + transportErrorKind(err)
	case status == http.StatusOK:
		return ""
	}
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error.Code != "" {
		msg := e.Error.Message
		if len(msg) > 80 {
			msg = msg[:80] + "…"
		}
		return fmt.Sprintf("%d %s: %s", status, e.Error.Code, msg)
	}
	return fmt.Sprintf("%d (not a JSON error)", status)
}

// transportErrorKind names the kind of a client error without its
// addresses and ports, so that equal failures group together.
func transportErrorKind(err error) string {
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before the response (EOF)"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "client timeout"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

// chaosStats summarises the samples of a load.
type chaosStats struct {
	Sent, OK, Failed int
	// Failures counts the failed requests by reason.
	Failures map[string]int
	// Latency percentiles of every request (failed ones included: a
	// request that waited 5 s for a 504 waited 5 s).
	P50, P99, Max time.Duration
	// LagP99 is the 99th percentile of the generator's lag.
	LagP99 time.Duration
	// FirstFailure and LastFailure are due times since the load started;
	// -1 when nothing failed.
	FirstFailure, LastFailure time.Duration
	// Seconds are one-second buckets by due time, from the start.
	Seconds []chaosSecond
}

// chaosSecond is one second of a load.
type chaosSecond struct {
	Second int     `json:"t"`
	Sent   int     `json:"sent"`
	Failed int     `json:"failed"`
	P99MS  float64 `json:"p99_ms"`
}

// summarize computes the statistics of samples (in due order).
func summarizeLoad(samples []chaosSample) chaosStats {
	st := chaosStats{Failures: map[string]int{}, FirstFailure: -1, LastFailure: -1}
	lat := make([]time.Duration, 0, len(samples))
	lag := make([]time.Duration, 0, len(samples))
	var bucket []time.Duration
	flush := func(sec int) {
		for len(st.Seconds) <= sec {
			st.Seconds = append(st.Seconds, chaosSecond{Second: len(st.Seconds)})
		}
		st.Seconds[sec].P99MS = millis(latencyQuantile(bucket, 0.99))
		bucket = bucket[:0]
	}
	cur := 0
	for _, s := range samples {
		sec := int(s.At / time.Second)
		if sec != cur {
			flush(cur)
			cur = sec
		}
		for len(st.Seconds) <= sec {
			st.Seconds = append(st.Seconds, chaosSecond{Second: len(st.Seconds)})
		}
		st.Sent++
		st.Seconds[sec].Sent++
		lat = append(lat, s.Latency)
		lag = append(lag, s.Lag)
		bucket = append(bucket, s.Latency)
		if s.Reason == "" {
			st.OK++
			continue
		}
		st.Failed++
		st.Seconds[sec].Failed++
		st.Failures[s.Reason]++
		if st.FirstFailure < 0 {
			st.FirstFailure = s.At
		}
		st.LastFailure = s.At
	}
	if len(samples) > 0 {
		flush(cur)
	}
	st.P50, st.P99 = latencyQuantile(lat, 0.50), latencyQuantile(lat, 0.99)
	st.LagP99 = latencyQuantile(lag, 0.99)
	if len(lat) > 0 {
		st.Max = slices.Max(lat)
	}
	return st
}

// percentile returns the p-quantile (nearest rank) of d; it sorts d.
func latencyQuantile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(p*float64(len(d))+0.999999) - 1
	return d[max(0, min(i, len(d)-1))]
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
