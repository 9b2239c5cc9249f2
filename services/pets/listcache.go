package pets

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// listCache keeps encoded GET /pets responses (body and ETag), keyed by
// the normalized query and tagged with the store's data version read
// before the query ran. An entry is served only while the store still
// reports that version, so a write through this process, or a commit by
// another process when the store can see those (SQLite), invalidates
// every entry at once; a store that cannot see other processes' writes
// (PostgreSQL) gets a TTL instead. It is bounded in bytes and evicts the
// least recently used entry first. It is safe for concurrent use; entries
// are immutable once stored.
type listCache struct {
	maxBytes int64
	maxEntry int64
	ttl      time.Duration // 0: entries live until the version changes
	now      func() time.Time

	mu         sync.Mutex
	version    uint64
	entries    map[string]*cacheEntry
	head, tail *cacheEntry // most and least recently used
	bytes      int64

	hits, misses                    prometheus.Counter
	evictSize, evictStale, evictTTL prometheus.Counter
}

// cacheEntry is one cached response.
type cacheEntry struct {
	key    string
	body   []byte
	etag   string
	stored time.Time

	// Header values, built once and shared by every response served from
	// the entry (net/http only reads them).
	hdrETag, hdrLen []string

	prev, next *cacheEntry
}

// entryOverhead approximates the memory of an entry beside its key and
// body (struct, map slot, header slices).
const entryOverhead = 256

func newListCache(maxBytes int64, ttl time.Duration, reg prometheus.Registerer) (*listCache, error) {
	c := &listCache{
		maxBytes: maxBytes,
		// One huge page must not flush the whole cache.
		maxEntry: max(maxBytes/8, 1),
		ttl:      ttl,
		now:      time.Now,
		entries:  map[string]*cacheEntry{},
	}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "petmesh_pets_list_cache_lookups_total",
		Help: "GET /pets response cache lookups by result (hit, miss).",
	}, []string{"result"})
	evictions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "petmesh_pets_list_cache_evictions_total",
		Help: "GET /pets responses dropped from the cache by reason: size (least recently used, to stay within the size limit), stale (a write changed the data), expired (older than the TTL).",
	}, []string{"reason"})
	c.hits, c.misses = lookups.WithLabelValues("hit"), lookups.WithLabelValues("miss")
	c.evictSize, c.evictStale, c.evictTTL = evictions.WithLabelValues("size"), evictions.WithLabelValues("stale"), evictions.WithLabelValues("expired")
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "petmesh_pets_list_cache_entries",
		Help: "GET /pets responses in the cache.",
	}, func() float64 { n, _ := c.size(); return float64(n) })
	bytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "petmesh_pets_list_cache_bytes",
		Help: "Approximate memory held by the GET /pets response cache.",
	}, func() float64 { _, b := c.size(); return float64(b) })
	for _, m := range []prometheus.Collector{lookups, evictions, entries, bytes} {
		if err := reg.Register(m); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *listCache) size() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.bytes
}

// get returns the entry for key if it was stored at version and has not
// expired, or nil. It counts the hit or miss.
func (c *listCache) get(key []byte, version uint64) *cacheEntry {
	var now time.Time
	if c.ttl > 0 {
		now = c.now()
	}
	c.mu.Lock()
	c.advance(version)
	var e *cacheEntry
	// Every entry is of c.version (advance drops older ones); a lookup
	// at an older version (a request whose check raced a write) misses
	// and leaves the newer entries alone.
	if version == c.version {
		e = c.entries[string(key)]
	}
	if e != nil && c.ttl > 0 && now.Sub(e.stored) >= c.ttl {
		c.remove(e)
		c.evictTTL.Inc()
		e = nil
	}
	if e != nil {
		c.moveToFront(e)
	}
	c.mu.Unlock()
	if e == nil {
		c.misses.Inc()
	} else {
		c.hits.Inc()
	}
	return e
}

// put stores a response read at version. body must not be modified
// afterwards. A response read at an older version than the cache has
// seen is dropped: it may predate a write.
func (c *listCache) put(key []byte, version uint64, body []byte, etag string) {
	size := int64(len(key)+len(body)+len(etag)) + entryOverhead
	if size > c.maxEntry {
		return
	}
	e := &cacheEntry{
		key: string(key), body: body, etag: etag,
		hdrETag: []string{etag}, hdrLen: []string{strconv.Itoa(len(body))},
	}
	if c.ttl > 0 {
		e.stored = c.now()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance(version)
	if version != c.version {
		return
	}
	if old := c.entries[e.key]; old != nil {
		c.remove(old)
	}
	c.entries[e.key] = e
	c.bytes += size
	c.pushFront(e)
	for c.bytes > c.maxBytes && c.tail != nil {
		c.remove(c.tail)
		c.evictSize.Inc()
	}
}

// advance drops every entry when version is newer than the cache's.
func (c *listCache) advance(version uint64) {
	if version <= c.version {
		return
	}
	c.version = version
	if n := len(c.entries); n > 0 {
		c.evictStale.Add(float64(n))
		clear(c.entries)
		c.head, c.tail, c.bytes = nil, nil, 0
	}
}

func (c *listCache) remove(e *cacheEntry) {
	delete(c.entries, e.key)
	c.bytes -= int64(len(e.key)+len(e.body)+len(e.etag)) + entryOverhead
	c.unlink(e)
}

func (c *listCache) unlink(e *cacheEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (c *listCache) pushFront(e *cacheEntry) {
	e.next = c.head
	if c.head != nil {
		c.head.prev = e
	}
	c.head = e
	if c.tail == nil {
		c.tail = e
	}
}

func (c *listCache) moveToFront(e *cacheEntry) {
	if c.head == e {
		return
	}
	c.unlink(e)
	c.pushFront(e)
}

// etagOf is a strong validator of body: it depends on the bytes only, so
// that every instance serving the same data gives the same ETag.
func etagOf(body []byte) string {
	h := sha256.Sum256(body)
	const n = 16
	b := make([]byte, 0, 2+base64.RawURLEncoding.EncodedLen(n))
	b = append(b, '"')
	b = base64.RawURLEncoding.AppendEncode(b, h[:n])
	return string(append(b, '"'))
}

// noneMatch reports whether an If-None-Match header value matches etag
// (RFC 9110 13.1.2: "*", or a list of entity tags compared weakly).
func noneMatch(header, etag string) bool {
	for header != "" {
		header = strings.TrimLeft(header, " \t,")
		if header == "" {
			return false
		}
		if header[0] == '*' {
			return true
		}
		tag := strings.TrimPrefix(header, "W/")
		if len(tag) < 2 || tag[0] != '"' {
			return false // malformed: ignore the rest
		}
		end := strings.IndexByte(tag[1:], '"')
		if end < 0 {
			return false
		}
		if tag[:end+2] == etag {
			return true
		}
		header = tag[end+2:]
	}
	return false
}

// Shared header values of list responses (see cacheEntry).
var (
	hdrJSON         = []string{"application/json"}
	hdrNosniff      = []string{"nosniff"}
	hdrCacheControl = []string{"no-cache"}
)

// writeList writes a list response with its ETag, or a 304 when the
// request's If-None-Match names it. hdrETag and hdrLen are the header
// values, nil to build them.
func writeList(w http.ResponseWriter, r *http.Request, body []byte, etag string, hdrETag, hdrLen []string) {
	h := w.Header()
	if hdrETag == nil {
		hdrETag = []string{etag}
	}
	h["Etag"] = hdrETag
	h["Cache-Control"] = hdrCacheControl
	if inm := r.Header["If-None-Match"]; len(inm) > 0 && noneMatch(strings.Join(inm, ","), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if hdrLen == nil {
		hdrLen = []string{strconv.Itoa(len(body))}
	}
	h["Content-Type"] = hdrJSON
	h["X-Content-Type-Options"] = hdrNosniff
	h["Content-Length"] = hdrLen
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}
