package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/petmesh/petmesh/internal/dataplane"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

// writesRecorder keeps every Write call separately.
type writesRecorder struct {
	mu     sync.Mutex
	writes [][]byte
	fail   bool
}

func (w *writesRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fail {
		return 0, errors.New("disk full")
	}
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

func (w *writesRecorder) snapshot() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([][]byte(nil), w.writes...)
}

func TestAccessLogBatches(t *testing.T) {
	tests := []struct {
		desc    string
		entries int
		level   slog.Level
		wantMin int // fewest lines expected (all when level allows)
	}{
		{desc: "one entry is written at once", entries: 1, level: slog.LevelInfo, wantMin: 1},
		{desc: "a burst is written in batches of whole lines", entries: 1000, level: slog.LevelInfo, wantMin: 1000},
		{desc: "nothing at level warn", entries: 10, level: slog.LevelWarn, wantMin: 0},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			out := &writesRecorder{}
			reg := prometheus.NewRegistry()
			a, err := newAccessLog(out, tc.level, []any{"service", "sidecar-pets", "instance", "pets-1"}, slog.New(slog.DiscardHandler), 4096, time.Hour, reg)
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.entries {
				a.record(context.Background(), &dataplane.AccessEntry{Listener: "inbound", Method: "GET", Path: "/pets/" + strconv.Itoa(i), Status: 200, Duration: time.Millisecond, Subject: "alice", RequestID: "r" + strconv.Itoa(i)})
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); a.run(ctx) }()
			cancel()
			<-done

			writes := out.snapshot()
			var lines []string
			for _, w := range writes {
				if len(w) > maxAccessWrite && bytes.Count(w, []byte("\n")) > 1 {
					t.Errorf("a write of %d bytes holds %d lines, want at most %d bytes per batch", len(w), bytes.Count(w, []byte("\n")), maxAccessWrite)
				}
				if len(w) > 0 && w[len(w)-1] != '\n' {
					t.Fatalf("a write ends inside a line: %q", w[max(0, len(w)-40):])
				}
				lines = append(lines, strings.Split(strings.TrimSuffix(string(w), "\n"), "\n")...)
			}
			if tc.wantMin == 0 {
				if len(writes) != 0 {
					t.Fatalf("%d writes at level %v, want none", len(writes), tc.level)
				}
				return
			}
			if len(lines) != tc.entries {
				t.Fatalf("%d lines, want %d", len(lines), tc.entries)
			}
			if tc.entries > 100 && len(writes) > tc.entries/5 {
				t.Errorf("%d writes for %d lines: not batched", len(writes), tc.entries)
			}
			for i, l := range lines {
				var rec map[string]any
				if err := json.Unmarshal([]byte(l), &rec); err != nil {
					t.Fatalf("line %d is not JSON: %v: %s", i, err, l)
				}
				if rec["msg"] != "access" || rec["service"] != "sidecar-pets" || rec["instance"] != "pets-1" || rec["path"] != "/pets/"+strconv.Itoa(i) || rec["subject"] != "alice" {
					t.Fatalf("line %d: %s", i, l)
				}
			}
		})
	}
}

func TestAccessLogDropsWhenFull(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := newAccessLog(io.Discard, slog.LevelInfo, nil, slog.New(slog.DiscardHandler), 2, time.Hour, reg)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		a.record(context.Background(), &dataplane.AccessEntry{Status: 200})
	}
	if got := testutil.ToFloat64(a.dropped); got != 3 {
		t.Fatalf("dropped %v, want 3 (queue of 2, never blocking)", got)
	}
}

func TestAccessLogWriteErrorReportedOnce(t *testing.T) {
	out := &writesRecorder{fail: true}
	var errs bytes.Buffer
	a, err := newAccessLog(out, slog.LevelInfo, nil, slog.New(slog.NewJSONHandler(&errs, nil)), 16, time.Hour, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		a.write(&dataplane.AccessEntry{Status: 200})
		a.flush(a.buf.Len())
	}
	if n := strings.Count(errs.String(), "access log write failed"); n != 1 {
		t.Fatalf("write failure logged %d times, want once until it recovers:\n%s", n, errs.String())
	}
	if a.buf.Len() != 0 {
		t.Fatalf("%d bytes kept after a failed write, want the batch dropped", a.buf.Len())
	}
}

// TestAccessLogWakesOncePerBatch checks that recording does not wake the
// writer for every entry (at a steady rate that wake-up was 7 % of the
// sidecar's CPU): only the entry that fills a quarter of the buffer does,
// and the ticker writes whatever waits every flush interval.
func TestAccessLogWakesOncePerBatch(t *testing.T) {
	out := &writesRecorder{}
	a, err := newAccessLog(out, slog.LevelInfo, nil, slog.New(slog.DiscardHandler), 16, time.Hour, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e := &dataplane.AccessEntry{Listener: "inbound", Status: 200}
	for i := 1; i <= 8; i++ {
		a.record(context.Background(), e)
		woken := len(a.q.Ready()) == 1
		if want := i >= 4; woken != want {
			t.Fatalf("after %d of 16 entries the writer is woken: %v, want %v (a quarter of the buffer wakes it)", i, woken, want)
		}
	}

	// With a flush interval the ticker writes a lone entry.
	out = &writesRecorder{}
	a, err = newAccessLog(out, slog.LevelInfo, nil, slog.New(slog.DiscardHandler), 16, 20*time.Millisecond, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.run(ctx) }()
	defer func() { cancel(); <-done }()
	a.record(context.Background(), e)
	if len(a.q.Ready()) != 0 {
		t.Fatal("one entry woke the writer")
	}
	tu.Eventually(t, 5*time.Second, func() error {
		if w := out.snapshot(); len(w) != 1 || bytes.Count(w[0], []byte("\n")) != 1 {
			return fmt.Errorf("writes %q, want the one line, written by the ticker", w)
		}
		return nil
	})
}
