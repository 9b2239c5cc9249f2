// Package store keeps the route table's versions: every accepted change
// is version N+1 with its time, author, message and full content; history,
// get by version, diff between versions and rollback (a new version with
// an old content). Two backends implement Store: a local directory
// (FileStore) and Consul KV (ConsulStore); one conformance suite runs on
// both.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/petmesh/petmesh/controlplane/routes"
)

// Version describes one stored version.
type Version struct {
	Number  int64     `json:"version"`
	Time    time.Time `json:"time"`
	Author  string    `json:"author"`
	Message string    `json:"message"`
	// Hash is the route table's canonical hash (routes.Table.Hash).
	Hash string `json:"hash"`
}

// Entry is a version with its route table.
type Entry struct {
	Version
	Table *routes.Table `json:"table"`
}

// Errors callers check with errors.Is.
var (
	// ErrVersionConflict: Put's expected version is not the current one.
	ErrVersionConflict = errors.New("version conflict")
	// ErrNotFound: no such version.
	ErrNotFound = errors.New("version not found")
)

// ConflictError is the error Put returns on a stale expected version; it
// matches ErrVersionConflict and carries the current version.
type ConflictError struct {
	Expected, Current int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("version conflict: expected version %d, current is %d", e.Expected, e.Current)
}

// Is makes errors.Is(err, ErrVersionConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrVersionConflict }

// Store is a versioned route table store. Implementations are safe for
// concurrent use by several goroutines, and by several processes sharing
// the backend (a directory, a Consul cluster): they agree on the version
// sequence, and Put is a compare-and-set.
type Store interface {
	// Current returns the newest version. An empty store returns version
	// 0 with an empty table.
	Current(ctx context.Context) (Entry, error)
	// Put stores t as version expected+1 if expected is the current
	// version, else returns a *ConflictError (ErrVersionConflict). t must
	// be valid; it is stored in canonical form.
	Put(ctx context.Context, expected int64, t *routes.Table, author, message string) (Version, error)
	// Get returns version n, or ErrNotFound.
	Get(ctx context.Context, n int64) (Entry, error)
	// History lists every version, newest first.
	History(ctx context.Context) ([]Version, error)
	// Watch sends the current version at once and then every newer
	// version seen (possibly skipping some under fast changes), including
	// those written by other processes. The channel is closed after ctx
	// is done and the watcher goroutine has exited; the caller must drain
	// it or cancel ctx.
	Watch(ctx context.Context) (<-chan Version, error)
	// Close releases the store's resources.
	Close() error
}

// Rollback stores version n's table as a new version (expected+1), with a
// message saying so.
func Rollback(ctx context.Context, s Store, expected, n int64, author string) (Version, error) {
	old, err := s.Get(ctx, n)
	if err != nil {
		return Version{}, fmt.Errorf("rollback to version %d: %w", n, err)
	}
	v, err := s.Put(ctx, expected, old.Table, author, fmt.Sprintf("rollback to version %d", n))
	if err != nil {
		return Version{}, fmt.Errorf("rollback to version %d: %w", n, err)
	}
	return v, nil
}

// newEntry builds the entry for version n.
func newEntry(n int64, t *routes.Table, author, message string, now time.Time) Entry {
	c := t.Canonical()
	return Entry{
		Version: Version{Number: n, Time: now.UTC().Round(time.Millisecond), Author: author, Message: message, Hash: c.Hash()},
		Table:   c,
	}
}

func emptyEntry() Entry { return Entry{Table: (&routes.Table{}).Canonical()} }

// checkPut validates Put's arguments.
func checkPut(expected int64, t *routes.Table) error {
	if expected < 0 {
		return fmt.Errorf("expected version %d: must not be negative", expected)
	}
	if t == nil {
		return errors.New("nil route table")
	}
	return nil
}
