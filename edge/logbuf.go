package edge

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/petmesh/petmesh/internal/periodic"
)

// lineBuffer batches access-log lines into few writes: one write per
// request (a syscall) is a visible share of the edge's CPU under load. Each
// Write must be whole lines (slog writes one record per call), so a flush
// never splits a line and the lines interleave cleanly with the process's
// other log output on the same stream. Lines wait at most the flush period.
type lineBuffer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	max int
}

func newLineBuffer(w io.Writer, max int) *lineBuffer {
	return &lineBuffer{w: w, max: max, buf: make([]byte, 0, max+4096)}
}

// Write buffers p; it writes through when the buffer is full.
func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) >= b.max {
		return len(p), b.flushLocked()
	}
	return len(p), nil
}

func (b *lineBuffer) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// Flush writes what is buffered.
func (b *lineBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

// Run flushes every period until ctx is done, then flushes once more.
func (b *lineBuffer) Run(ctx context.Context, period time.Duration) {
	periodic.Every(ctx, period, func() { _ = b.Flush() })
	_ = b.Flush()
}
