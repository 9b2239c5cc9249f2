// Package periodic runs a function on a ticker until a context ends: the
// reload, maintenance and flush loops of the control plane, the edge and
// the key stores.
package periodic

import (
	"context"
	"time"
)

// Every calls f every d (d > 0) until ctx is done; it returns then,
// without a last call. f runs on the caller's goroutine, so a slow f
// delays the next call rather than overlapping it (ticks that fall due
// meanwhile are dropped, as time.Ticker drops them).
func Every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
