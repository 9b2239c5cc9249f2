// Package pets is the pets service: a JSON API over a pets store
// (SQLite or PostgreSQL) that the sync service fills from Petfinder and
// that clients browse with filters and keyset pagination.
package pets

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/services/pets/store"
)

//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the OpenAPI 3 document of the API.
func OpenAPI() []byte { return openAPI }

// MaxBatch is the largest batch POST /pets:batchUpsert accepts.
const MaxBatch = 500

// DefaultMaxBody is the default request body limit: a full batch of
// pets with long descriptions fits.
const DefaultMaxBody = 8 << 20

// Route is one method and path the API serves, as a net/http pattern.
type Route struct {
	Method, Path string
}

// Routes lists every route of the public API; the OpenAPI document
// describes each one (a test checks it).
var Routes = []Route{
	{http.MethodGet, "/pets"},
	{http.MethodGet, "/pets/{id}"},
	{http.MethodDelete, "/pets/{id}"},
	{http.MethodPost, "/pets:batchUpsert"},
	{http.MethodGet, "/health"},
	{http.MethodGet, "/openapi.json"},
}

// HandlerOptions configure NewHandler.
type HandlerOptions struct {
	// MaxBody limits request bodies; DefaultMaxBody when 0.
	MaxBody int64
	// HealthTimeout bounds the database check of GET /health; 2s when 0.
	HealthTimeout time.Duration
	// ListCacheBytes bounds the GET /pets response cache (see listCache);
	// 0 disables it. It needs a store with a DataVersion.
	ListCacheBytes int64
	// ListCacheTTL is the longest a cached GET /pets response is served
	// from a store that cannot see other processes' writes (PostgreSQL);
	// 0 disables the cache on such stores. Unused on SQLite, which
	// reports every commit.
	ListCacheTTL time.Duration
	// RetryAfter is the Retry-After of the 503 answered while the
	// database is read-only, full or unreachable; DefaultRetryAfter when 0.
	RetryAfter time.Duration
}

// DefaultListCacheBytes and DefaultListCacheTTL are the binary's defaults.
const (
	DefaultListCacheBytes = 64 << 20
	DefaultListCacheTTL   = time.Second
)

// versioner is a store that can tell whether its data may have changed
// (store.SQLStore implements it).
type versioner interface {
	DataVersion(ctx context.Context) (uint64, error)
	DataVersionShared() bool
}

// api holds the handlers' dependencies.
type api struct {
	store         store.Store
	maxBody       int64
	healthTimeout time.Duration
	upserted      *prometheus.CounterVec
	// cache and versions are nil when the list cache is off.
	cache    *listCache
	versions versioner
	// db maps unavailable-database errors to 503 and logs transitions.
	db *dbState
}

// NewHandler returns the public API with the standard middleware
// (tracing, request id, panic recovery, body limit) and registers the
// service's metrics on tel.Registry.
func NewHandler(st store.Store, tel *telemetry.Telemetry, opts HandlerOptions) (http.Handler, error) {
	a := &api{store: st, maxBody: opts.MaxBody, healthTimeout: opts.HealthTimeout}
	if a.maxBody <= 0 {
		a.maxBody = DefaultMaxBody
	}
	if a.healthTimeout <= 0 {
		a.healthTimeout = 2 * time.Second
	}
	retryAfter := opts.RetryAfter
	if retryAfter <= 0 {
		retryAfter = DefaultRetryAfter
	}
	a.db = newDBState(tel.Logger, retryAfter)
	a.upserted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "petmesh_pets_upserted_total",
		Help: "Pets written by batch upserts, by result (inserted, updated, unchanged).",
	}, []string{"result"})
	if err := tel.Registry.Register(a.upserted); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	if err := tel.Registry.Register(newTotalCollector(st)); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	if v, ok := st.(versioner); ok && opts.ListCacheBytes > 0 && (v.DataVersionShared() || opts.ListCacheTTL > 0) {
		var ttl time.Duration
		if !v.DataVersionShared() {
			ttl = opts.ListCacheTTL
		}
		c, err := newListCache(opts.ListCacheBytes, ttl, tel.Registry)
		if err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
		a.cache, a.versions = c, v
	}

	handlers := map[Route]httpx.HandlerFunc{
		{http.MethodGet, "/pets"}:              a.list,
		{http.MethodGet, "/pets/{id}"}:         a.get,
		{http.MethodDelete, "/pets/{id}"}:      a.delete,
		{http.MethodPost, "/pets:batchUpsert"}: a.batchUpsert,
		{http.MethodGet, "/health"}:            a.health,
		{http.MethodGet, "/openapi.json"}:      a.openAPI,
	}
	mux := http.NewServeMux()
	allow := map[string][]string{}
	for _, r := range Routes {
		h, ok := handlers[r]
		if !ok {
			return nil, fmt.Errorf("route %s %s has no handler", r.Method, r.Path)
		}
		mux.Handle(r.Method+" "+r.Path, routed(r.Method+" "+r.Path, r.Path, h))
		allow[r.Path] = append(allow[r.Path], r.Method)
	}
	// Other methods on a known path get a JSON 405 with Allow, and
	// unknown paths a JSON 404, instead of net/http's plain text.
	for path, methods := range allow {
		methods := strings.Join(methods, ", ")
		mux.Handle(path, httpx.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Allow", methods)
			return &httpx.Error{Status: http.StatusMethodNotAllowed, Code: httpx.CodeMethodNotAllowed,
				Message: fmt.Sprintf("method %s not allowed; allowed: %s", r.Method, methods)}
		}))
	}
	mux.Handle("/", httpx.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error {
		return httpx.NotFound("no route for %s %s", r.Method, r.URL.Path)
	}))
	return httpx.Standard(tel, "pets", a.maxBody)(mux), nil
}

// routed names the server span after the route and labels the HTTP
// metrics with http.route. (otelhttp would do it from r.Pattern, but the
// middleware between it and the mux copies the request, so the pattern
// set by the mux never reaches it.)
func routed(name, route string, h http.Handler) http.Handler {
	attr := attribute.String("http.route", route)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		span := trace.SpanFromContext(r.Context())
		span.SetName(name)
		span.SetAttributes(attr)
		if l, ok := otelhttp.LabelerFromContext(r.Context()); ok {
			l.Add(attr)
		}
		h.ServeHTTP(w, r)
	})
}

// listParams are the query parameters of GET /pets.
var listParams = map[string]bool{
	"species": true, "breed": true, "age": true, "gender": true, "size": true, "status": true,
	"city": true, "state": true, "q": true, "sort": true, "limit": true, "cursor": true,
}

// maxFilterLen bounds filter values; no stored value is longer.
const maxFilterLen = 200

// parseListQuery validates the query string of GET /pets; errors name the
// parameter.
func parseListQuery(v url.Values) (store.ListQuery, error) {
	var q store.ListQuery
	for name, vals := range v {
		if !listParams[name] {
			return q, httpx.BadRequest(name, "unknown query parameter")
		}
		if len(vals) > 1 {
			return q, httpx.BadRequest(name, "given more than once")
		}
		if len(vals[0]) > maxFilterLen && name != "cursor" {
			return q, httpx.BadRequest(name, "longer than %d bytes", maxFilterLen)
		}
	}
	enum := func(name string, values []string) (string, error) {
		s := v.Get(name)
		if s == "" {
			return "", nil
		}
		c, ok := store.Canonical(values, s)
		if !ok {
			return "", httpx.BadRequest(name, "want one of %s, got %q", strings.Join(values, ", "), s)
		}
		return c, nil
	}
	var err error
	if q.Age, err = enum("age", store.Ages); err != nil {
		return q, err
	}
	if q.Gender, err = enum("gender", store.Genders); err != nil {
		return q, err
	}
	if q.Size, err = enum("size", store.Sizes); err != nil {
		return q, err
	}
	if q.Status, err = enum("status", store.Statuses); err != nil {
		return q, err
	}
	q.Species, q.Breed, q.City, q.State, q.Q = v.Get("species"), v.Get("breed"), v.Get("city"), v.Get("state"), v.Get("q")
	sort, ok := store.ParseSort(v.Get("sort"))
	if !ok {
		return q, httpx.BadRequest("sort", "want one of published_at, -published_at, name, -name, updated_at, -updated_at, got %q", v.Get("sort"))
	}
	q.Sort = sort
	q.Limit = store.DefaultLimit
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > store.MaxLimit {
			return q, httpx.BadRequest("limit", "want an integer from 1 to %d, got %q", store.MaxLimit, s)
		}
		q.Limit = n
	}
	if c := v.Get("cursor"); len(c) > 1024 {
		return q, httpx.BadRequest("cursor", "not a cursor issued by this service")
	}
	q.Cursor = v.Get("cursor")
	return q, nil
}

// bufPool recycles response buffers of the list endpoint.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

// Attributes of the server span telling whether the list cache answered.
var (
	attrCacheHit  = attribute.String("petmesh.pets.list_cache", "hit")
	attrCacheMiss = attribute.String("petmesh.pets.list_cache", "miss")
)

func (a *api) list(w http.ResponseWriter, r *http.Request) error {
	q, err := parseListQuery(r.URL.Query())
	if err != nil {
		return err
	}
	// The data version is read before the query, so that a response is
	// never stored under a version newer than its data.
	var (
		keyBuf    [128]byte
		key       []byte
		version   uint64
		cacheable bool
	)
	if a.cache != nil {
		key = q.AppendKey(keyBuf[:0])
		if v, err := a.versions.DataVersion(r.Context()); err == nil {
			span := trace.SpanFromContext(r.Context())
			if e := a.cache.get(key, v); e != nil {
				span.SetAttributes(attrCacheHit)
				writeList(w, r, e.body, e.etag, e.hdrETag, e.hdrLen)
				return nil
			}
			span.SetAttributes(attrCacheMiss)
			version, cacheable = v, true
		}
	}
	// The stored docs are the pets' JSON already: splice them into the
	// response instead of decoding and encoding every pet.
	bp := bufPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 1<<20 {
			bufPool.Put(bp)
		}
	}()
	buf := append((*bp)[:0], `{"pets":[`...)
	buf, next, err := a.store.AppendListJSON(r.Context(), buf, q)
	*bp = buf
	switch {
	case errors.Is(err, store.ErrBadCursor):
		return httpx.BadRequest("cursor", "not a cursor issued by this service for sort %s", q.Sort)
	case err != nil:
		return a.db.check(r.Context(), w, err, "list pets")
	}
	a.db.ok(r.Context(), false)
	buf = append(buf, `],"next_cursor":"`...)
	buf = append(buf, next...) // base64url: nothing to escape
	buf = append(buf, "\"}\n"...)
	*bp = buf
	etag := etagOf(buf)
	if !cacheable {
		writeList(w, r, buf, etag, nil, nil)
		return nil
	}
	body := bytes.Clone(buf)
	a.cache.put(key, version, body, etag)
	writeList(w, r, body, etag, nil, nil)
	return nil
}

// writeRawJSON writes an already encoded JSON body with the headers of
// httpx.WriteJSON.
func writeRawJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (a *api) get(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	doc, err := a.store.GetJSON(r.Context(), id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return httpx.NotFound("pet %q not found", id)
	case err != nil:
		return a.db.check(r.Context(), w, err, "get pet")
	}
	a.db.ok(r.Context(), false)
	writeRawJSON(w, http.StatusOK, append(doc, '\n'))
	return nil
}

func (a *api) delete(w http.ResponseWriter, r *http.Request) error {
	if _, err := identity.Require(r, identity.RoleAdmin); err != nil {
		return err
	}
	id := r.PathValue("id")
	err := a.store.Delete(r.Context(), id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return httpx.NotFound("pet %q not found", id)
	case err != nil:
		return a.db.check(r.Context(), w, err, "delete pet")
	}
	a.db.ok(r.Context(), true)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) batchUpsert(w http.ResponseWriter, r *http.Request) error {
	if _, err := identity.Require(r, identity.RoleSync, identity.RoleAdmin); err != nil {
		return err
	}
	pets, err := decodeBatch(w, r, a.maxBody)
	if err != nil {
		return err
	}
	res, err := a.store.Upsert(r.Context(), pets)
	if err != nil {
		return a.db.check(r.Context(), w, err, "upsert pets")
	}
	a.db.ok(r.Context(), true)
	a.upserted.WithLabelValues("inserted").Add(float64(res.Inserted))
	a.upserted.WithLabelValues("updated").Add(float64(res.Updated))
	a.upserted.WithLabelValues("unchanged").Add(float64(res.Unchanged))
	httpx.WriteJSON(w, http.StatusOK, res)
	return nil
}

func (a *api) health(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), a.healthTimeout)
	defer cancel()
	if err := a.store.Ping(ctx); err != nil {
		return httpx.Unavailable("database unavailable")
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (a *api) openAPI(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
	return nil
}

// totalCollector exports petmesh_pets from the database at scrape
// time, so that it is right even when several processes share the store.
type totalCollector struct {
	st   store.Store
	desc *prometheus.Desc
}

func newTotalCollector(st store.Store) *totalCollector {
	return &totalCollector{st: st, desc: prometheus.NewDesc("petmesh_pets", "Pets in the store.", nil, nil)}
}

func (c *totalCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *totalCollector) Collect(ch chan<- prometheus.Metric) {
	// A scrape has no context of its own; bound the query instead.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, err := c.st.Count(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n))
}
