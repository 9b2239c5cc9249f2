package pets_test

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/petstest"
	"github.com/petmesh/petmesh/internal/testutil/pgtest"
	"github.com/petmesh/petmesh/services/pets"
)

// instance is one pets API with its own store (its own connections, as
// a separate process has) over a real loopback socket.
type instance struct {
	*client
	reg *prometheus.Registry
}

func newInstance(t *testing.T, dsn string, opts pets.HandlerOptions) instance {
	t.Helper()
	tel := telemetry.NewTest(io.Discard)
	srv := petstest.Serve(t, dsn, tel, opts)
	return instance{client: newClient(t, srv.URL), reg: tel.Registry}
}

// metric returns the value of the counter or gauge name with label=value
// (label "" for none), or -1 when the registry has no such series.
func (in instance) metric(name, label, value string) float64 {
	in.t.Helper()
	mfs, err := in.reg.Gather()
	if err != nil {
		in.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return -1
}

func (in instance) hits() float64 {
	return in.metric("petmesh_pets_list_cache_lookups_total", "result", "hit")
}

func (in instance) page(path string) (page, response) {
	in.t.Helper()
	var pg page
	r := in.json("GET", path, nil, nil, &pg, 200)
	return pg, r
}

func names(pg page) []string {
	out := make([]string, len(pg.Pets))
	for i, p := range pg.Pets {
		out[i] = p.Name
	}
	return out
}

var cacheOn = pets.HandlerOptions{ListCacheBytes: 1 << 20, ListCacheTTL: 2 * time.Second}

// TestListCacheSQLite checks that cached pages are served, and that a
// write through the same instance or through another store on the same
// SQLite file (as another pets process) is seen by the very next read.
func TestListCacheSQLite(t *testing.T) {
	dsn := "sqlite://" + filepath.Join(t.TempDir(), "pets.db")
	a, b := newInstance(t, dsn, cacheOn), newInstance(t, dsn, cacheOn)
	const path = "/pets?species=Dog&limit=5&sort=name"

	a.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": petBatch(6)}, nil, 200)
	first, r1 := a.page(path)
	again, r2 := a.page(path)
	if a.hits() != 1 {
		t.Fatalf("hits = %v after reading a page twice, want 1", a.hits())
	}
	if string(r1.body) != string(r2.body) || r1.header.Get("ETag") != r2.header.Get("ETag") {
		t.Fatal("the cached page differs from the page it caches")
	}
	if got := names(again); !slices.Equal(got, []string{"Pet 000", "Pet 002", "Pet 004"}) {
		t.Fatalf("dogs %v", got)
	}

	steps := []struct {
		desc  string
		write func()
		want  []string
	}{
		{
			desc: "insert through the same instance",
			write: func() {
				a.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": []any{pet(8)}}, nil, 200)
			},
			want: []string{"Pet 000", "Pet 002", "Pet 004", "Pet 008"},
		},
		{
			desc: "update through another store on the file",
			write: func() {
				p := pet(2)
				p["name"] = "Pet 001 renamed"
				b.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": []any{p}}, nil, 200)
			},
			want: []string{"Pet 000", "Pet 001 renamed", "Pet 004", "Pet 008"},
		},
		{
			desc:  "delete through another store on the file",
			write: func() { b.json("DELETE", "/pets/"+first.Pets[0].ID, roles("admin"), nil, nil, 204) },
			want:  []string{"Pet 001 renamed", "Pet 004", "Pet 008"},
		},
		{
			desc:  "delete through the same instance",
			write: func() { a.json("DELETE", "/pets/"+first.Pets[2].ID, roles("admin"), nil, nil, 204) },
			want:  []string{"Pet 001 renamed", "Pet 008"},
		},
	}
	for _, s := range steps {
		// Cache the page on both instances, then write.
		a.page(path)
		b.page(path)
		hits := a.hits()
		s.write()
		for _, in := range []instance{a, b} {
			if got := names(must(in.page(path))); !slices.Equal(got, s.want) {
				t.Fatalf("%s: dogs %v, want %v", s.desc, got, s.want)
			}
		}
		if a.hits() != hits {
			t.Fatalf("%s: the read after the write was a cache hit", s.desc)
		}
		// And the new page is cached in turn.
		a.page(path)
		if a.hits() != hits+1 {
			t.Fatalf("%s: the new page was not cached", s.desc)
		}
	}
	if stale := a.metric("petmesh_pets_list_cache_evictions_total", "reason", "stale"); stale < 4 {
		t.Fatalf("stale evictions = %v, want at least 4", stale)
	}
	if n := a.metric("petmesh_pets_list_cache_entries", "", ""); n != 1 {
		t.Fatalf("entries = %v, want 1", n)
	}
}

func must(pg page, _ response) page { return pg }

// TestListConditionalGET checks ETag and If-None-Match, with and without
// the cache: equal pages have equal ETags on every instance, a match is
// a 304 without a body, and a write changes the ETag.
func TestListConditionalGET(t *testing.T) {
	dsn := "sqlite://" + filepath.Join(t.TempDir(), "pets.db")
	a, b := newInstance(t, dsn, cacheOn), newInstance(t, dsn, pets.HandlerOptions{})
	if b.hits() != -1 {
		t.Fatal("the cache is on with ListCacheBytes 0")
	}
	a.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": petBatch(4)}, nil, 200)
	const path = "/pets?limit=2"
	_, ra := a.page(path)
	_, rb := b.page(path)
	etag := ra.header.Get("ETag")
	if etag == "" || rb.header.Get("ETag") != etag {
		t.Fatalf("ETags %q and %q, want equal and set", etag, rb.header.Get("ETag"))
	}
	for _, in := range []instance{a, b, a} { // a twice: miss, then hit
		for _, inm := range []string{etag, "W/" + etag, `"other", ` + etag} {
			r := in.do("GET", path, http.Header{"If-None-Match": {inm}}, nil)
			if r.status != http.StatusNotModified || len(r.body) != 0 || r.header.Get("ETag") != etag {
				t.Fatalf("If-None-Match %s: status %d, ETag %q, %d bytes", inm, r.status, r.header.Get("ETag"), len(r.body))
			}
		}
		if r := in.do("GET", path, http.Header{"If-None-Match": {`"other"`}}, nil); r.status != 200 || len(r.body) == 0 {
			t.Fatalf("If-None-Match other: status %d", r.status)
		}
	}
	// Pet 003 is first by publication (newest first): rename it.
	p := pet(3)
	p["name"] = "Renamed"
	b.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": []any{p}}, nil, 200)
	for _, in := range []instance{a, b} {
		r := in.do("GET", path, http.Header{"If-None-Match": {etag}}, nil)
		if r.status != 200 || r.header.Get("ETag") == etag {
			t.Fatalf("after a write: status %d, ETag %q (was %q)", r.status, r.header.Get("ETag"), etag)
		}
	}
}

// TestListCachePostgres runs the cache over the real PostgreSQL, which
// cannot report other instances' writes: writes through the instance
// are seen at once, another instance's writes within the TTL, and a TTL
// of 0 turns the cache off.
func TestListCachePostgres(t *testing.T) {
	dsn := pgtest.FreshSchema(t, pgtest.DSN(t), "pets_test")
	opts := pets.HandlerOptions{ListCacheBytes: 1 << 20, ListCacheTTL: time.Second}
	a, b := newInstance(t, dsn, opts), newInstance(t, dsn, opts)
	const path = "/pets?species=Dog&limit=10&sort=name"
	a.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": petBatch(4)}, nil, 200)
	// Entries expire after a second: read until one read hits.
	testutil.Eventually(t, 30*time.Second, func() error {
		a.page(path)
		if a.hits() < 1 {
			return fmt.Errorf("no hit yet")
		}
		return nil
	})

	a.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": []any{pet(6)}}, nil, 200)
	if got := names(must(a.page(path))); !slices.Equal(got, []string{"Pet 000", "Pet 002", "Pet 006"}) {
		t.Fatalf("after a write through the instance: dogs %v", got)
	}

	b.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": []any{pet(8)}}, nil, 200)
	testutil.Eventually(t, 30*time.Second, func() error {
		if got := names(must(a.page(path))); !slices.Equal(got, []string{"Pet 000", "Pet 002", "Pet 006", "Pet 008"}) {
			return fmt.Errorf("dogs %v", got)
		}
		return nil
	})

	off := newInstance(t, dsn, pets.HandlerOptions{ListCacheBytes: 1 << 20})
	off.page(path)
	off.page(path)
	if off.hits() != -1 {
		t.Fatalf("the cache is on over PostgreSQL with a TTL of 0 (hits %v)", off.hits())
	}
}
