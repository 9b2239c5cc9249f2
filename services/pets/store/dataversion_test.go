package store_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/petmesh/petmesh/internal/testutil/pgtest"
	"github.com/petmesh/petmesh/services/pets/store"
)

// TestDataVersion checks that DataVersion moves after writes through the
// store itself and, on SQLite, after writes by another store (another
// connection pool, as another process has) on the same database, and
// that it stays put when nothing is written.
func TestDataVersion(t *testing.T) {
	tests := []struct {
		desc   string
		dsn    func(t *testing.T) string
		shared bool
	}{
		{desc: "sqlite", dsn: func(t *testing.T) string { return "sqlite://" + filepath.Join(t.TempDir(), "pets.db") }, shared: true},
		{desc: "postgres", dsn: func(t *testing.T) string { return pgtest.FreshSchema(t, pgtest.DSN(t), "pets_test") }, shared: false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			ctx := t.Context()
			dsn := tc.dsn(t)
			a, err := store.Open(ctx, dsn, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = a.Close() })
			b, err := store.Open(ctx, dsn, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			if a.DataVersionShared() != tc.shared {
				t.Fatalf("DataVersionShared = %v, want %v", a.DataVersionShared(), tc.shared)
			}
			version := func() uint64 {
				t.Helper()
				v, err := a.DataVersion(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}

			v0 := version()
			// Reads, by this store or another, change nothing.
			if _, err := a.List(ctx, store.ListQuery{}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Count(ctx); err != nil {
				t.Fatal(err)
			}
			if v := version(); v != v0 {
				t.Fatalf("version moved from %d to %d without a write", v0, v)
			}

			if _, err := a.Upsert(ctx, fixtures(3)); err != nil {
				t.Fatal(err)
			}
			v1 := version()
			if v1 == v0 {
				t.Fatal("version did not move after an upsert through the store")
			}
			pets, err := a.List(ctx, store.ListQuery{})
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Delete(ctx, pets.Pets[0].ID); err != nil {
				t.Fatal(err)
			}
			v2 := version()
			if v2 == v1 {
				t.Fatal("version did not move after a delete through the store")
			}

			if _, err := b.Upsert(ctx, fixtures(5)); err != nil {
				t.Fatal(err)
			}
			v3 := version()
			if tc.shared && v3 == v2 {
				t.Fatal("version did not move after an upsert through another store")
			}
			if !tc.shared && v3 != v2 {
				t.Fatalf("version moved (%d to %d) on a store that cannot see other stores' writes", v2, v3)
			}
			if err := b.Delete(ctx, pets.Pets[1].ID); err != nil {
				t.Fatal(err)
			}
			if v4 := version(); tc.shared && v4 == v3 {
				t.Fatal("version did not move after a delete through another store")
			}
		})
	}
}

// TestDataVersionConcurrent checks the contract that lets callers share
// checks: a DataVersion call that starts after a write has committed
// never returns the version read before that write, even while many
// goroutines call DataVersion at once.
func TestDataVersionConcurrent(t *testing.T) {
	ctx := t.Context()
	dsn := "sqlite://" + filepath.Join(t.TempDir(), "pets.db")
	a, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	b, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })

	var (
		stop  atomic.Bool
		wg    sync.WaitGroup
		calls atomic.Int64
	)
	// Stop the readers before the test's context is canceled, also on
	// failure.
	defer func() {
		stop.Store(true)
		wg.Wait()
	}()
	for range 8 {
		wg.Go(func() {
			var last uint64
			for !stop.Load() {
				v, err := a.DataVersion(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if v < last {
					t.Errorf("version went back from %d to %d", last, v)
					return
				}
				last = v
				calls.Add(1)
			}
		})
	}
	for i := range 30 {
		before, err := a.DataVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		in := fixture(i)
		in.Name = fmt.Sprintf("renamed %d", i)
		if _, err := b.Upsert(ctx, []store.PetInput{in}); err != nil {
			t.Fatal(err)
		}
		after, err := a.DataVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after == before {
			t.Fatalf("write %d: version %d unchanged after another store's commit", i, after)
		}
	}
	if calls.Load() == 0 {
		t.Fatal("no concurrent DataVersion call ran")
	}
}

// TestDataVersionAfterClose checks that a closed store reports an error
// instead of a version that could match a cached one.
func TestDataVersionAfterClose(t *testing.T) {
	s, err := store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "pets.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DataVersion(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if v, err := s.DataVersion(t.Context()); err == nil {
		t.Fatalf("DataVersion after Close = %d, want an error", v)
	}
}
