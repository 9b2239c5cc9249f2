package pets

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
)

// These unit tests drive the cache directly with a fake clock; the
// integration tests in cache_test.go run it over real stores.

func newTestCache(t *testing.T, maxBytes int64, ttl time.Duration) (*listCache, *time.Time) {
	t.Helper()
	c, err := newListCache(maxBytes, ttl, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return now }
	return c, &now
}

// body returns a body that makes an entry of key "k?" take exactly size
// bytes of the cache's budget.
func body(size int) []byte {
	return bytes.Repeat([]byte("x"), size-2-len(`"e"`)-entryOverhead)
}

func TestListCacheLRU(t *testing.T) {
	c, _ := newTestCache(t, 3000, 0)
	c.maxEntry = 3000
	c.put([]byte("k1"), 1, body(1000), `"e"`)
	c.put([]byte("k2"), 1, body(1000), `"e"`)
	c.put([]byte("k3"), 1, body(1000), `"e"`)
	if n, b := c.size(); n != 3 || b != 3000 {
		t.Fatalf("size %d entries, %d bytes; want 3, 3000", n, b)
	}
	// k1 becomes the most recently used: k2 is the one to go.
	if c.get([]byte("k1"), 1) == nil {
		t.Fatal("k1 missing")
	}
	c.put([]byte("k4"), 1, body(1000), `"e"`)
	if c.get([]byte("k2"), 1) != nil {
		t.Fatal("k2, the least recently used, was not evicted")
	}
	for _, k := range []string{"k1", "k3", "k4"} {
		if c.get([]byte(k), 1) == nil {
			t.Fatalf("%s evicted", k)
		}
	}
	// Replacing an entry does not count it twice.
	c.put([]byte("k4"), 1, body(1000), `"e"`)
	if n, b := c.size(); n != 3 || b != 3000 {
		t.Fatalf("after replace: %d entries, %d bytes; want 3, 3000", n, b)
	}
	if got := promtest.ToFloat64(c.evictSize); got != 1 {
		t.Fatalf("size evictions %v, want 1", got)
	}
	if hits, misses := promtest.ToFloat64(c.hits), promtest.ToFloat64(c.misses); hits != 4 || misses != 1 {
		t.Fatalf("hits %v misses %v, want 4 and 1", hits, misses)
	}
}

func TestListCacheTooLarge(t *testing.T) {
	c, _ := newTestCache(t, 8000, 0) // entries up to 1000 bytes
	c.put([]byte("k1"), 1, body(1001), `"e"`)
	if c.get([]byte("k1"), 1) != nil {
		t.Fatal("an entry over an eighth of the cache was stored")
	}
	c.put([]byte("k1"), 1, body(1000), `"e"`)
	if c.get([]byte("k1"), 1) == nil {
		t.Fatal("an entry of an eighth of the cache was not stored")
	}
}

func TestListCacheVersions(t *testing.T) {
	c, _ := newTestCache(t, 1<<20, 0)
	c.put([]byte("k1"), 5, []byte("v5"), `"a"`)
	c.put([]byte("k2"), 5, []byte("v5"), `"a"`)
	if e := c.get([]byte("k1"), 5); e == nil || string(e.body) != "v5" || e.etag != `"a"` {
		t.Fatalf("get at the stored version = %+v", e)
	}
	// A newer version drops everything.
	if c.get([]byte("k1"), 6) != nil {
		t.Fatal("hit after the version moved")
	}
	if n, b := c.size(); n != 0 || b != 0 {
		t.Fatalf("%d entries, %d bytes left after the version moved", n, b)
	}
	if got := promtest.ToFloat64(c.evictStale); got != 2 {
		t.Fatalf("stale evictions %v, want 2", got)
	}
	// A response read at the old version (a request that raced the
	// write) is not stored, and an old version never hits.
	c.put([]byte("k1"), 5, []byte("v5"), `"a"`)
	if c.get([]byte("k1"), 6) != nil {
		t.Fatal("a response read before the write was stored")
	}
	c.put([]byte("k1"), 6, []byte("v6"), `"b"`)
	if c.get([]byte("k1"), 5) != nil {
		t.Fatal("a lookup at an older version hit")
	}
	if e := c.get([]byte("k1"), 6); e == nil || string(e.body) != "v6" {
		t.Fatalf("get = %+v, want v6", e)
	}
	// A put at a newer version than any lookup saw moves the cache on.
	c.put([]byte("k2"), 7, []byte("v7"), `"c"`)
	if c.get([]byte("k1"), 7) != nil {
		t.Fatal("k1 of version 6 survived a put at version 7")
	}
	if e := c.get([]byte("k2"), 7); e == nil || string(e.body) != "v7" {
		t.Fatalf("get = %+v, want v7", e)
	}
}

func TestListCacheTTL(t *testing.T) {
	c, now := newTestCache(t, 1<<20, time.Second)
	c.put([]byte("k1"), 1, []byte("v"), `"a"`)
	*now = now.Add(999 * time.Millisecond)
	if c.get([]byte("k1"), 1) == nil {
		t.Fatal("expired before its TTL")
	}
	*now = now.Add(time.Millisecond)
	if c.get([]byte("k1"), 1) != nil {
		t.Fatal("served at its TTL")
	}
	if got := promtest.ToFloat64(c.evictTTL); got != 1 {
		t.Fatalf("expired evictions %v, want 1", got)
	}
	if n, _ := c.size(); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}

func TestNoneMatch(t *testing.T) {
	const etag = `"abc"`
	tests := []struct {
		desc, header string
		want         bool
	}{
		{desc: "same", header: `"abc"`, want: true},
		{desc: "weak form", header: `W/"abc"`, want: true},
		{desc: "in a list", header: `"x", "abc"`, want: true},
		{desc: "in a list without spaces", header: `"x",W/"abc"`, want: true},
		{desc: "star", header: `*`, want: true},
		{desc: "other", header: `"abd"`, want: false},
		{desc: "prefix only", header: `"ab"`, want: false},
		{desc: "unquoted", header: `abc`, want: false},
		{desc: "unterminated", header: `"abc`, want: false},
		{desc: "empty", header: ``, want: false},
		{desc: "only commas", header: ` , ,`, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			if got := noneMatch(tc.header, etag); got != tc.want {
				t.Fatalf("noneMatch(%q) = %v, want %v", tc.header, got, tc.want)
			}
		})
	}
}

func TestWriteList(t *testing.T) {
	body := []byte(`{"pets":[],"next_cursor":""}` + "\n")
	etag := etagOf(body)
	if etag != etagOf(bytes.Clone(body)) || etag == etagOf(append(bytes.Clone(body), ' ')) {
		t.Fatal("ETag is not a function of the body")
	}
	if !strings.HasPrefix(etag, `"`) || !strings.HasSuffix(etag, `"`) {
		t.Fatalf("ETag %s is not quoted", etag)
	}
	for _, tc := range []struct {
		desc, inm string
		status    int
	}{
		{desc: "unconditional", status: 200},
		{desc: "matching", inm: etag, status: 304},
		{desc: "other tag", inm: `"x"`, status: 200},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/pets", nil)
			if tc.inm != "" {
				r.Header.Set("If-None-Match", tc.inm)
			}
			w := httptest.NewRecorder()
			writeList(w, r, body, etag, nil, nil)
			if w.Code != tc.status || w.Header().Get("ETag") != etag {
				t.Fatalf("status %d, ETag %q", w.Code, w.Header().Get("ETag"))
			}
			wantBody := string(body)
			if tc.status == 304 {
				wantBody = ""
			}
			if w.Body.String() != wantBody {
				t.Fatalf("body %q, want %q", w.Body.String(), wantBody)
			}
		})
	}
}
