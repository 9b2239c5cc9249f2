package dataplane

import (
	"container/list"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/petmesh/petmesh/internal/identity"
)

// Response cache limits (per cluster).
const (
	cacheMaxBytes      = 32 << 20
	cacheMaxEntryBytes = 1 << 20
)

// respCache is the GET response cache of a cluster with the petmesh
// cache_ttl metadata. It is a shared cache with RFC 9111's caution: only
// 200 responses without Set-Cookie, Vary (other than Accept-Encoding),
// no-store, private or no-cache are stored; a response marked public is
// shared by every caller, any other one is kept per verified subject (the
// upstream may answer each caller differently). Entries live for the TTL,
// or less when the response's s-maxage / max-age says so. Bounded in bytes,
// least recently used evicted. Safe for concurrent use.
type respCache struct {
	ttl   time.Duration
	now   func() time.Time
	mu    sync.Mutex
	m     map[string]*list.Element
	lru   list.List // of *cacheEntry
	bytes int
}

type cacheEntry struct {
	key     string
	status  int
	header  http.Header
	body    []byte
	stored  time.Time
	expires time.Time
}

func newRespCache(ttl time.Duration, now func() time.Time) *respCache {
	return &respCache{ttl: ttl, now: now, m: map[string]*list.Element{}}
}

// cacheable reports whether a request may be answered from the cache.
func cacheableRequest(r *http.Request) bool {
	if r.Method != http.MethodGet || r.Header.Get("Range") != "" {
		return false
	}
	cc := strings.ToLower(r.Header.Get("Cache-Control"))
	return !strings.Contains(cc, "no-cache") && !strings.Contains(cc, "no-store") && r.Header.Get("Pragma") == ""
}

func cacheKeys(route string, r *http.Request) (shared, perSubject string) {
	base := route + "\x00" + strings.ToLower(r.Host) + "\x00" + r.URL.RequestURI() + "\x00" + r.Header.Get("Accept-Encoding")
	return base + "\x00*", base + "\x00s:" + r.Header.Get(identity.HeaderSubject)
}

func (c *respCache) get(key string) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[key]
	if e == nil {
		return nil
	}
	ce := e.Value.(*cacheEntry)
	if !c.now().Before(ce.expires) {
		c.remove(e)
		return nil
	}
	c.lru.MoveToFront(e)
	return ce
}

func (c *respCache) remove(e *list.Element) {
	ce := e.Value.(*cacheEntry)
	c.lru.Remove(e)
	delete(c.m, ce.key)
	c.bytes -= len(ce.body) + len(ce.key)
}

func (c *respCache) put(ce *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[ce.key]; e != nil {
		c.remove(e)
	}
	c.m[ce.key] = c.lru.PushFront(ce)
	c.bytes += len(ce.body) + len(ce.key)
	for c.bytes > cacheMaxBytes && c.lru.Len() > 1 {
		c.remove(c.lru.Back())
	}
}

// serve answers r from the cache; false on a miss.
func (c *respCache) serve(w http.ResponseWriter, route string, r *http.Request) bool {
	shared, own := cacheKeys(route, r)
	ce := c.get(shared)
	if ce == nil {
		ce = c.get(own)
	}
	if ce == nil {
		return false
	}
	h := w.Header()
	for k, v := range ce.header {
		h[k] = v
	}
	h.Set("Age", strconv.Itoa(int(c.now().Sub(ce.stored)/time.Second)))
	h.Set("Content-Length", strconv.Itoa(len(ce.body)))
	if st := stateOf(w); st != nil {
		st.entry.Upstream = "cache"
	}
	w.WriteHeader(ce.status)
	_, _ = w.Write(ce.body)
	return true
}

// capture is the state of one cacheable request on its way to the
// upstream: ModifyResponse records the upstream's status and headers, the
// writer tees the body.
type capture struct {
	status int
	header http.Header
	body   []byte
	tooBig bool
}

type captureWriter struct {
	http.ResponseWriter
	c *capture
}

func (w *captureWriter) Write(b []byte) (int, error) {
	if !w.c.tooBig {
		if len(w.c.body)+len(b) > cacheMaxEntryBytes {
			w.c.tooBig, w.c.body = true, nil
		} else {
			w.c.body = append(w.c.body, b...)
		}
	}
	return w.ResponseWriter.Write(b)
}

func (w *captureWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *captureWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// store keeps a captured response when it may be cached.
func (c *respCache) store(route string, r *http.Request, cp *capture) {
	if cp.tooBig || cp.status != http.StatusOK || cp.header == nil {
		return
	}
	h := cp.header
	if len(h.Values("Set-Cookie")) > 0 {
		return
	}
	for _, v := range h.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" && !strings.EqualFold(f, "Accept-Encoding") {
				return
			}
		}
	}
	cc := strings.ToLower(strings.Join(h.Values("Cache-Control"), ","))
	if strings.Contains(cc, "no-store") || strings.Contains(cc, "private") || strings.Contains(cc, "no-cache") {
		return
	}
	ttl := c.ttl
	for _, d := range strings.Split(cc, ",") {
		d = strings.TrimSpace(d)
		for _, p := range []string{"s-maxage=", "max-age="} {
			if v, ok := strings.CutPrefix(d, p); ok {
				if n, err := strconv.Atoi(v); err == nil && time.Duration(n)*time.Second < ttl {
					ttl = time.Duration(n) * time.Second
				}
			}
		}
	}
	if ttl <= 0 {
		return
	}
	shared, own := cacheKeys(route, r)
	key := own
	for _, d := range strings.Split(cc, ",") {
		if strings.TrimSpace(d) == "public" {
			key = shared
		}
	}
	hdr := h.Clone()
	for _, k := range []string{"Date", "Age", "Content-Length", "X-Request-Id", "Connection", "Keep-Alive", "Transfer-Encoding"} {
		hdr.Del(k)
	}
	now := c.now()
	c.put(&cacheEntry{key: key, status: cp.status, header: hdr, body: cp.body, stored: now, expires: now.Add(ttl)})
}
