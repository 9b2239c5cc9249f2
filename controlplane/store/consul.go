package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/petmesh/petmesh/controlplane/routes"
)

// DefaultConsulPrefix is the KV prefix ConsulStore uses by default.
const DefaultConsulPrefix = "petmesh/routes/"

// ConsulStore keeps versions in Consul KV:
//
//	<prefix>current              the current Version (metadata only)
//	<prefix>versions/00000001    one Entry per version, never rewritten
//
// Put is one transaction: check-and-set of "current" on its ModifyIndex
// plus create-only of the new version key, so replicas sharing a Consul
// cluster agree on the version sequence. Watch uses blocking queries on
// "current". Consul limits a value to 512 KiB by default, which bounds the
// route table size.
type ConsulStore struct {
	kv     *api.KV
	txn    *api.Txn
	prefix string
	now    func() time.Time
}

var _ Store = (*ConsulStore)(nil)

// ConsulOption configures a ConsulStore.
type ConsulOption func(*ConsulStore)

// WithConsulClock injects the clock stamped on versions.
func WithConsulClock(now func() time.Time) ConsulOption {
	return func(s *ConsulStore) { s.now = now }
}

// OpenConsul returns a store under prefix (DefaultConsulPrefix when empty;
// a trailing slash is added).
func OpenConsul(client *api.Client, prefix string, opts ...ConsulOption) (*ConsulStore, error) {
	if client == nil {
		return nil, errors.New("consul store: nil client")
	}
	if prefix == "" {
		prefix = DefaultConsulPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &ConsulStore{kv: client.KV(), txn: client.Txn(), prefix: prefix, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Close implements Store (the client is the caller's).
func (s *ConsulStore) Close() error { return nil }

func (s *ConsulStore) currentKey() string { return s.prefix + "current" }

func (s *ConsulStore) versionKey(n int64) string {
	return fmt.Sprintf("%sversions/%08d", s.prefix, n)
}

// current reads the current version and the key's ModifyIndex (0 when
// the store is empty).
func (s *ConsulStore) current(ctx context.Context, waitIndex uint64, wait time.Duration) (Version, uint64, uint64, error) {
	q := (&api.QueryOptions{WaitIndex: waitIndex, WaitTime: wait, RequireConsistent: waitIndex == 0}).WithContext(ctx)
	p, meta, err := s.kv.Get(s.currentKey(), q)
	if err != nil {
		return Version{}, 0, 0, fmt.Errorf("consul store: read current: %w", err)
	}
	if p == nil {
		return Version{}, 0, meta.LastIndex, nil
	}
	var v Version
	if err := json.Unmarshal(p.Value, &v); err != nil {
		return Version{}, 0, 0, fmt.Errorf("consul store: decode current: %w", err)
	}
	return v, p.ModifyIndex, meta.LastIndex, nil
}

// Current implements Store.
func (s *ConsulStore) Current(ctx context.Context) (Entry, error) {
	v, _, _, err := s.current(ctx, 0, 0)
	if err != nil {
		return Entry{}, err
	}
	if v.Number == 0 {
		return emptyEntry(), nil
	}
	return s.Get(ctx, v.Number)
}

// Get implements Store.
func (s *ConsulStore) Get(ctx context.Context, n int64) (Entry, error) {
	if n < 1 {
		return Entry{}, fmt.Errorf("version %d: %w", n, ErrNotFound)
	}
	p, _, err := s.kv.Get(s.versionKey(n), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return Entry{}, fmt.Errorf("consul store: read version %d: %w", n, err)
	}
	if p == nil {
		return Entry{}, fmt.Errorf("version %d: %w", n, ErrNotFound)
	}
	var e Entry
	if err := json.Unmarshal(p.Value, &e); err != nil {
		return Entry{}, fmt.Errorf("consul store: decode version %d: %w", n, err)
	}
	return e, nil
}

// History implements Store.
func (s *ConsulStore) History(ctx context.Context) ([]Version, error) {
	pairs, _, err := s.kv.List(s.prefix+"versions/", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul store: list versions: %w", err)
	}
	out := make([]Version, 0, len(pairs))
	for _, p := range pairs {
		if _, err := strconv.ParseInt(strings.TrimPrefix(p.Key, s.prefix+"versions/"), 10, 64); err != nil {
			continue
		}
		var e struct{ Version }
		if err := json.Unmarshal(p.Value, &e); err != nil {
			return nil, fmt.Errorf("consul store: decode %s: %w", p.Key, err)
		}
		out = append(out, e.Version)
	}
	slices.SortFunc(out, func(a, b Version) int { return int(b.Number - a.Number) })
	return out, nil
}

// Put implements Store.
func (s *ConsulStore) Put(ctx context.Context, expected int64, t *routes.Table, author, message string) (Version, error) {
	if err := checkPut(expected, t); err != nil {
		return Version{}, err
	}
	cur, idx, _, err := s.current(ctx, 0, 0)
	if err != nil {
		return Version{}, err
	}
	if cur.Number != expected {
		return Version{}, &ConflictError{Expected: expected, Current: cur.Number}
	}
	e := newEntry(expected+1, t, author, message, s.now())
	entry, err := json.Marshal(e)
	if err != nil {
		return Version{}, fmt.Errorf("consul store: %w", err)
	}
	meta, err := json.Marshal(e.Version)
	if err != nil {
		return Version{}, fmt.Errorf("consul store: %w", err)
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: s.currentKey(), Value: meta, Index: idx}},
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: s.versionKey(e.Number), Value: entry, Index: 0}},
	}
	ok, resp, _, err := s.txn.Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return Version{}, fmt.Errorf("consul store: write version %d: %w", e.Number, err)
	}
	if !ok {
		// Someone else moved "current" (or wrote the version key) since
		// we read it.
		now, _, _, rerr := s.current(ctx, 0, 0)
		if rerr != nil {
			return Version{}, rerr
		}
		var msgs []string
		for _, te := range resp.Errors {
			msgs = append(msgs, te.What)
		}
		if now.Number == expected {
			return Version{}, fmt.Errorf("consul store: transaction refused: %s", strings.Join(msgs, "; "))
		}
		return Version{}, &ConflictError{Expected: expected, Current: now.Number}
	}
	return e.Version, nil
}

// Watch implements Store with blocking queries on the current key.
func (s *ConsulStore) Watch(ctx context.Context) (<-chan Version, error) {
	cur, _, index, err := s.current(ctx, 0, 0)
	if err != nil {
		return nil, err
	}
	ch := make(chan Version, 1)
	ch <- cur
	go func() {
		defer close(ch)
		last := cur.Number
		backoff := 100 * time.Millisecond
		for {
			v, _, next, err := s.current(ctx, index, 5*time.Minute)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
			if next < index {
				next = 0 // index went backwards (snapshot restore): start over
			}
			index = next
			if v.Number <= last {
				continue
			}
			last = v.Number
			select {
			case ch <- v:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}
