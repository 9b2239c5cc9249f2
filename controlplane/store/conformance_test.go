package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/atomicfile"
	"github.com/petmesh/petmesh/internal/testutil"
)

// backend opens stores on one shared backend; every call returns a new
// store (a new "process") on the same data.
type backend func(t *testing.T) Store

func table(t *testing.T, services ...string) *routes.Table {
	t.Helper()
	var b strings.Builder
	b.WriteString("routes:\n")
	for _, s := range services {
		fmt.Fprintf(&b, "  - {name: %s, match: {prefix: /%s}, targets: [{service: %s}]}\n", s, s, s)
	}
	tab, err := routes.Load([]byte(b.String()), routes.ValidateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// conformance runs the behaviour every Store must have.
func conformance(t *testing.T, open backend) {
	t.Run("empty store is version 0", func(t *testing.T) {
		s := open(t)
		e, err := s.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if e.Number != 0 || e.Table == nil || len(e.Table.Routes) != 0 {
			t.Fatalf("empty store: %+v", e)
		}
		if _, err := s.Get(t.Context(), 1); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(1) on empty store: %v", err)
		}
		h, err := s.History(t.Context())
		if err != nil || len(h) != 0 {
			t.Fatalf("history: %v %v", h, err)
		}
	})

	t.Run("put, get, history, conflict, rollback, diff", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		v1, err := s.Put(ctx, 0, table(t, "a"), "alice", "first")
		if err != nil {
			t.Fatal(err)
		}
		if v1.Number != 1 || v1.Author != "alice" || v1.Message != "first" || v1.Time.IsZero() || v1.Hash == "" {
			t.Fatalf("v1 = %+v", v1)
		}
		v2, err := s.Put(ctx, 1, table(t, "a", "b"), "ops", "add b")
		if err != nil {
			t.Fatal(err)
		}
		if v2.Number != 2 {
			t.Fatalf("v2 = %+v", v2)
		}
		_, err = s.Put(ctx, 1, table(t, "c"), "alice", "stale")
		var ce *ConflictError
		if !errors.Is(err, ErrVersionConflict) || !errors.As(err, &ce) || ce.Current != 2 || ce.Expected != 1 {
			t.Fatalf("stale put: %v", err)
		}
		if _, err := s.Put(ctx, 7, table(t, "c"), "alice", "future"); !errors.Is(err, ErrVersionConflict) {
			t.Fatalf("future put: %v", err)
		}
		cur, err := s.Current(ctx)
		if err != nil || cur.Number != 2 || !routes.Equal(cur.Table, table(t, "a", "b")) {
			t.Fatalf("current: %+v %v", cur, err)
		}
		g1, err := s.Get(ctx, 1)
		if err != nil || g1.Version != v1 || !routes.Equal(g1.Table, table(t, "a")) {
			t.Fatalf("get 1: %+v %v (want %+v)", g1.Version, err, v1)
		}
		h, err := s.History(ctx)
		if err != nil || len(h) != 2 || h[0] != v2 || h[1] != v1 {
			t.Fatalf("history: %+v %v", h, err)
		}
		v3, err := Rollback(ctx, s, 2, 1, "ops")
		if err != nil {
			t.Fatal(err)
		}
		if v3.Number != 3 || v3.Hash != v1.Hash || !strings.Contains(v3.Message, "rollback to version 1") {
			t.Fatalf("rollback: %+v", v3)
		}
		if _, err := Rollback(ctx, s, 3, 99, "ops"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("rollback to missing version: %v", err)
		}
		e2, _ := s.Get(ctx, 2)
		e3, _ := s.Get(ctx, 3)
		d := Compare(e2, e3)
		if len(d.Routes) != 1 || d.Routes[0] != (Change{"b", Removed}) {
			t.Fatalf("diff routes: %+v", d.Routes)
		}
		if !strings.Contains(d.Unified, "-  - name: b") || !strings.HasPrefix(d.Unified, "--- version 2\n+++ version 3\n") {
			t.Fatalf("unified diff:\n%s", d.Unified)
		}
	})

	t.Run("two stores on one backend agree and survive reopening", func(t *testing.T) {
		a, b := open(t), open(t)
		ctx := t.Context()
		if _, err := a.Put(ctx, 0, table(t, "a"), "a", "from a"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Put(ctx, 0, table(t, "b"), "b", "stale from b"); !errors.Is(err, ErrVersionConflict) {
			t.Fatalf("b's stale put: %v", err)
		}
		if _, err := b.Put(ctx, 1, table(t, "b"), "b", "from b"); err != nil {
			t.Fatal(err)
		}
		for _, s := range []Store{a, b, open(t)} {
			cur, err := s.Current(ctx)
			if err != nil || cur.Number != 2 || cur.Author != "b" {
				t.Fatalf("current seen by a store: %+v %v", cur.Version, err)
			}
		}
	})

	t.Run("concurrent puts: exactly one wins per version", func(t *testing.T) {
		stores := []Store{open(t), open(t), open(t)}
		ctx := t.Context()
		const writers = 8
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		for i := range writers {
			wg.Go(func() {
				_, err := stores[i%len(stores)].Put(ctx, 0, table(t, fmt.Sprintf("w%d", i)), "w", "race")
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins++
				case !errors.Is(err, ErrVersionConflict):
					t.Errorf("writer %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("%d writers won version 1, want 1", wins)
		}
		h, err := stores[0].History(ctx)
		if err != nil || len(h) != 1 {
			t.Fatalf("history after race: %+v %v", h, err)
		}
	})

	t.Run("watch sees another store's change", func(t *testing.T) {
		a, b := open(t), open(t)
		ctx, cancel := context.WithCancel(t.Context())
		ch, err := a.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v := <-ch; v.Number != 0 {
			t.Fatalf("first watch value: %+v", v)
		}
		if _, err := b.Put(t.Context(), 0, table(t, "x"), "b", "one"); err != nil {
			t.Fatal(err)
		}
		select {
		case v := <-ch:
			if v.Number != 1 || v.Author != "b" {
				t.Fatalf("watched %+v", v)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("watch did not see the change")
		}
		cancel()
		for range ch { // closed once the watcher has exited
		}
	})

	t.Run("bad arguments", func(t *testing.T) {
		s := open(t)
		if _, err := s.Put(t.Context(), -1, table(t, "a"), "a", ""); err == nil {
			t.Fatal("negative expected version accepted")
		}
		if _, err := s.Put(t.Context(), 0, nil, "a", ""); err == nil {
			t.Fatal("nil table accepted")
		}
		if _, err := s.Get(t.Context(), 0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(0): %v", err)
		}
	})
}

func TestFileStore(t *testing.T) {
	conformance(t, func(t *testing.T) Store {
		// One directory per subtest, shared by the stores it opens.
		dir := dirFor(t)
		s, err := OpenFile(dir, WithPollInterval(20*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

var (
	dirsMu sync.Mutex
	dirs   = map[string]string{}
)

// dirFor returns the same temporary directory for every call from one
// (sub)test.
func dirFor(t *testing.T) string {
	dirsMu.Lock()
	defer dirsMu.Unlock()
	if d, ok := dirs[t.Name()]; ok {
		return d
	}
	d := t.TempDir()
	dirs[t.Name()] = d
	return d
}

func TestFileStoreCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), 0, table(t, "a"), "a", "one"); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	// A crash mid-write leaves a temp file; it is not a version and is
	// cleaned up on open.
	if err := atomicfile.Write(dir+"/versions/.tmp-crash", []byte("{garbage")); err != nil {
		t.Fatal(err)
	}
	s, err = OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	testutil.Eventually(t, time.Second, func() error {
		cur, err := s.Current(t.Context())
		if err != nil {
			return err
		}
		if cur.Number != 1 {
			return fmt.Errorf("current = %d", cur.Number)
		}
		return nil
	})
	if h, err := s.History(t.Context()); err != nil || len(h) != 1 {
		t.Fatalf("history: %v %v", h, err)
	}
}
