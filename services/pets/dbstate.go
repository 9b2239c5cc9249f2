package pets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/services/pets/store"
)

// DefaultRetryAfter is the Retry-After of a 503 for an unavailable
// database: long enough not to hammer a database being fixed, short
// enough that writers resume soon after it is.
const DefaultRetryAfter = 5 * time.Second

// dbState remembers whether the database was last seen unavailable, so
// that the cause is logged once per transition (not once per request)
// and its recovery once. It is safe for concurrent use; a request that
// succeeds costs one atomic load.
type dbState struct {
	log        *slog.Logger
	retryAfter []string // the header value, built once
	reason     atomic.Pointer[string]
}

func newDBState(log *slog.Logger, retryAfter time.Duration) *dbState {
	secs := max(int64((retryAfter+time.Second-1)/time.Second), 1)
	return &dbState{log: log, retryAfter: []string{strconv.FormatInt(secs, 10)}}
}

// check maps a store error: an unavailable database (store.ErrUnavailable)
// becomes a 503 with Retry-After, logged at ERROR when the state changes;
// anything else is wrapped with what, for the generic 500.
func (d *dbState) check(ctx context.Context, w http.ResponseWriter, err error, what string) error {
	var ue *store.UnavailableError
	if !errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", what, err)
	}
	reason := ue.Reason
	if old := d.reason.Swap(&reason); old == nil || *old != reason {
		d.log.ErrorContext(ctx, "database "+reason+": answering 503 until it recovers", "reason", reason, "operation", what, "error", err.Error())
	}
	w.Header()["Retry-After"] = d.retryAfter
	msg := "database unavailable; retry later"
	switch reason {
	case store.ReasonReadOnly:
		msg = "database is read-only; retry later"
	case store.ReasonFull:
		msg = "database is full; retry later"
	}
	return httpx.Unavailable("%s", msg)
}

// ok records a successful operation: a write proves the database
// writable again; a read proves it reachable (it says nothing about a
// read-only or full database, which still serves reads).
func (d *dbState) ok(ctx context.Context, write bool) {
	old := d.reason.Load()
	if old == nil || (!write && *old != store.ReasonUnavailable) {
		return
	}
	if d.reason.CompareAndSwap(old, nil) {
		d.log.InfoContext(ctx, "database recovered", "was", *old)
	}
}
