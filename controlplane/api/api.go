// Package api is the control plane's REST API (JSON; OpenAPI document in
// openapi.json, served at /openapi.json): the route table with optimistic
// concurrency (If-Match), dry-run validation with the resource diff and a
// sample request's destination, canary weights, versions, diffs and
// rollback, the proxies' xDS status, the registry's view, and the
// built-in registry's own endpoints under /v1/registry/.
//
// Reads need a bearer token with role viewer or admin, writes role admin
// (internal/jwtauth); the author of a version is the token's subject.
package api

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/store"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/telemetry"
)

// Roles checked by the API.
const (
	RoleAdmin  = "admin"
	RoleViewer = "viewer"
)

// AnonymousAuthor is the author of versions written with authentication
// disabled.
const AnonymousAuthor = "anonymous"

//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the API's OpenAPI 3 document merged with the registry's.
func OpenAPI() ([]byte, error) { return mergeOpenAPI(openAPI, registry.OpenAPI) }

// ProxyView is what the API reads from the xDS server.
type ProxyView interface {
	Status() []xds.ProxyStatus
	Proxy(id string) (xds.ProxyStatus, bool)
	Instances() []translate.Instance
	TranslateOptions() translate.Options
}

var _ ProxyView = (*xds.Server)(nil)

// Options configure New.
type Options struct {
	Store    store.Store
	Proxies  ProxyView
	Registry registry.Watcher
	// RegistryHandler serves /v1/registry/ (it does its own token auth);
	// nil leaves those paths unserved.
	RegistryHandler http.Handler
	// Verifier authenticates bearer tokens. Required unless
	// InsecureNoAuth.
	Verifier *jwtauth.Verifier
	// InsecureNoAuth disables authentication and authorisation: every
	// request acts as admin. Development only.
	InsecureNoAuth bool
	Telemetry      *telemetry.Telemetry
	Ready          *httpx.Readiness
	// MaxBody bounds request bodies (default routes.MaxSize + 64 KiB).
	MaxBody int64
}

type handler struct {
	opts    Options
	log     *slog.Logger
	openapi []byte
}

// New returns the API handler with every route, /openapi.json, /metrics,
// /healthz and /readyz.
func New(opts Options) (http.Handler, error) {
	if opts.Store == nil || opts.Proxies == nil || opts.Registry == nil || opts.Telemetry == nil {
		return nil, errors.New("api: Store, Proxies, Registry and Telemetry are required")
	}
	if opts.Verifier == nil && !opts.InsecureNoAuth {
		return nil, errors.New("api: a Verifier is required unless InsecureNoAuth")
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = routes.MaxSize + 64<<10
	}
	if opts.Ready == nil {
		opts.Ready = &httpx.Readiness{}
	}
	doc, err := OpenAPI()
	if err != nil {
		return nil, err
	}
	h := &handler{opts: opts, log: opts.Telemetry.Logger, openapi: doc}

	mux := http.NewServeMux()
	read := func(pattern string, f httpx.HandlerFunc) { mux.Handle(pattern, h.auth(f, RoleViewer, RoleAdmin)) }
	write := func(pattern string, f httpx.HandlerFunc) { mux.Handle(pattern, h.auth(f, RoleAdmin)) }
	read("GET /v1/routes", h.getRoutes)
	write("PUT /v1/routes", h.putRoutes)
	read("POST /v1/routes:validate", h.validate)
	write("PUT /v1/routes/{name}/weights", h.putWeights)
	read("GET /v1/versions", h.versions)
	read("GET /v1/versions/{n}", h.version)
	read("GET /v1/versions/{a}/diff/{b}", h.diff)
	write("POST /v1/rollback", h.rollback)
	read("GET /v1/proxies", h.proxies)
	read("GET /v1/proxies/{id}", h.proxy)
	read("GET /v1/services", h.services)
	if opts.RegistryHandler != nil {
		mux.Handle(registry.PathPrefix, opts.RegistryHandler)
	}
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(h.openapi)
	})
	admin := httpx.AdminMux(opts.Telemetry.MetricsHandler(), opts.Ready)
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		mux.Handle(p, admin)
	}
	mux.Handle("/", httpx.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		return httpx.NotFound("no such endpoint")
	}))
	return httpx.Chain(mux, httpx.Standard(opts.Telemetry, "controlplane-api", opts.MaxBody)), nil
}

// auth wraps f with token verification and a role check (any of roles).
func (h *handler) auth(f httpx.HandlerFunc, roles ...string) http.Handler {
	if h.opts.InsecureNoAuth {
		return f
	}
	return httpx.Chain(f,
		jwtauth.Middleware(h.opts.Verifier, jwtauth.MiddlewareOptions{Realm: "petmesh-controlplane", Logger: h.log}),
		jwtauth.RequireAnyRole(roles...))
}

func author(r *http.Request) string {
	if c, ok := jwtauth.ClaimsFromContext(r.Context()); ok && c.Subject != "" {
		return c.Subject
	}
	return AnonymousAuthor
}

// RoutesResponse is the body of GET /v1/routes.
type RoutesResponse struct {
	store.Version
	Table *routes.Table `json:"table"`
}

func (h *handler) getRoutes(w http.ResponseWriter, r *http.Request) error {
	e, err := h.opts.Store.Current(r.Context())
	if err != nil {
		return h.storeError("read current version", err)
	}
	if e.Table == nil {
		e.Table = &routes.Table{}
	}
	w.Header().Set("ETag", etag(e.Number))
	httpx.WriteJSON(w, http.StatusOK, RoutesResponse{Version: e.Version, Table: e.Table})
	return nil
}

func etag(n int64) string { return `"` + strconv.FormatInt(n, 10) + `"` }

// ifMatch parses If-Match: a version number, quoted or not. required
// makes its absence a 428.
func ifMatch(r *http.Request, required bool) (int64, bool, error) {
	v := strings.TrimSpace(r.Header.Get("If-Match"))
	if v == "" {
		if required {
			return 0, false, &httpx.Error{Status: http.StatusPreconditionRequired, Code: httpx.CodePreconditionNeeded,
				Field: "If-Match", Message: "If-Match with the version you edited is required (GET /v1/routes returns it)"}
		}
		return 0, false, nil
	}
	v = strings.TrimPrefix(v, "W/")
	n, err := strconv.ParseInt(strings.Trim(v, `"`), 10, 64)
	if err != nil || n < 0 {
		return 0, false, httpx.BadRequest("If-Match", "must be a version number, got %q", v)
	}
	return n, true, nil
}

// tableRequest is a table sent by a client with its message and, for
// validation, a sample request.
type tableRequest struct {
	Table   *routes.Table
	Message string
	Sample  *SampleRequest
}

// readTable reads a route table from a JSON envelope
// {"table":…,"message":…,"sample":…} or, for YAML content types, from
// the raw body (message from the "message" query parameter). The table is
// parsed and validated; a *routes.ValidationError lists every problem.
func (h *handler) readTable(w http.ResponseWriter, r *http.Request) (tableRequest, error) {
	var req tableRequest
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var raw []byte
	switch ct {
	case "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml":
		b, err := readBody(w, r, h.opts.MaxBody)
		if err != nil {
			return req, err
		}
		raw = b
		req.Message = r.URL.Query().Get("message")
	default:
		var env struct {
			Table   json.RawMessage `json:"table"`
			Message string          `json:"message"`
			Sample  *SampleRequest  `json:"sample"`
		}
		if err := httpx.DecodeJSON(w, r, &env, h.opts.MaxBody); err != nil {
			return req, err
		}
		if len(env.Table) == 0 || string(env.Table) == "null" {
			return req, httpx.BadRequest("table", "required")
		}
		raw, req.Message, req.Sample = env.Table, env.Message, env.Sample
	}
	if len(req.Message) > 1000 {
		return req, httpx.BadRequest("message", "at most 1000 characters")
	}
	t, err := routes.Load(raw, routes.ValidateOptions{})
	if err != nil {
		return req, err
	}
	req.Table = t
	return req, nil
}

func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &httpx.Error{Status: http.StatusRequestEntityTooLarge, Code: httpx.CodeTooLarge, Message: fmt.Sprintf("body exceeds %d bytes", max)}
		}
		return nil, httpx.BadRequest("", "read body: %v", err)
	}
	return b, nil
}

// ValidationErrorBody is the 400 answer for an invalid route table: the
// usual error object (first problem) plus every problem.
type ValidationErrorBody struct {
	Error  httpx.Error         `json:"error"`
	Errors []routes.FieldError `json:"errors"`
}

// writeErr writes err, expanding route table validation errors.
func writeErr(w http.ResponseWriter, err error) {
	var ve *routes.ValidationError
	if errors.As(err, &ve) && len(ve.Errors) > 0 {
		first := ve.Errors[0]
		httpx.WriteJSON(w, http.StatusBadRequest, ValidationErrorBody{
			Error: httpx.Error{Code: httpx.CodeInvalidArgument, Field: first.Path,
				Message: fmt.Sprintf("route table has %d error(s): %s", len(ve.Errors), ve.Error())},
			Errors: ve.Errors,
		})
		return
	}
	httpx.WriteError(w, err)
}

// wrap turns a handler into one that expands validation errors.
func wrap(f func(http.ResponseWriter, *http.Request) error) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := f(w, r); err != nil {
			writeErr(w, err)
		}
		return nil
	}
}

func (h *handler) putRoutes(w http.ResponseWriter, r *http.Request) error {
	return wrap(func(w http.ResponseWriter, r *http.Request) error {
		expected, _, err := ifMatch(r, true)
		if err != nil {
			return err
		}
		req, err := h.readTable(w, r)
		if err != nil {
			return err
		}
		return h.put(w, r, expected, req.Table, req.Message)
	})(w, r)
}

// put stores t as version expected+1 and answers with the new version.
func (h *handler) put(w http.ResponseWriter, r *http.Request, expected int64, t *routes.Table, msg string) error {
	v, err := h.opts.Store.Put(r.Context(), expected, t, author(r), msg)
	if err != nil {
		return h.storeError("store version", err)
	}
	h.log.InfoContext(r.Context(), "route table version stored", "version", v.Number, "author", v.Author, "message", v.Message)
	w.Header().Set("ETag", etag(v.Number))
	httpx.WriteJSON(w, http.StatusOK, v)
	return nil
}

// storeError maps store errors: a stale version is a 409 carrying the
// current one, a missing version a 404, anything else a logged 503.
func (h *handler) storeError(what string, err error) error {
	var ce *store.ConflictError
	switch {
	case errors.As(err, &ce):
		return &httpx.Error{Status: http.StatusConflict, Code: httpx.CodeConflict, Field: "If-Match",
			Message: fmt.Sprintf("version %d is stale: the current version is %d; GET /v1/routes, reapply your change and retry", ce.Expected, ce.Current)}
	case errors.Is(err, store.ErrVersionConflict):
		return httpx.Conflict("version conflict: %v", err)
	case errors.Is(err, store.ErrNotFound):
		return httpx.NotFound("%v", err)
	}
	h.log.Error("route store", "op", what, "error", err)
	return httpx.Unavailable("route store unavailable: %s failed", what)
}

// WeightsRequest is the body of PUT /v1/routes/{name}/weights.
type WeightsRequest struct {
	Weights map[string]int `json:"weights"`
	Message string         `json:"message,omitempty"`
}

func (h *handler) putWeights(w http.ResponseWriter, r *http.Request) error {
	return wrap(func(w http.ResponseWriter, r *http.Request) error {
		name := r.PathValue("name")
		expected, given, err := ifMatch(r, false)
		if err != nil {
			return err
		}
		var req WeightsRequest
		if err := httpx.DecodeJSON(w, r, &req, 64<<10); err != nil {
			return err
		}
		if len(req.Weights) == 0 {
			return httpx.BadRequest("weights", "at least one weight is required")
		}
		cur, err := h.opts.Store.Current(r.Context())
		if err != nil {
			return h.storeError("read current version", err)
		}
		if !given {
			expected = cur.Number
		} else if expected != cur.Number {
			return h.storeError("store version", &store.ConflictError{Expected: expected, Current: cur.Number})
		}
		if cur.Table == nil || cur.Table.Route(name) == nil {
			return httpx.NotFound("no route named %q in version %d", name, cur.Number)
		}
		t, err := cur.Table.SetWeights(name, req.Weights)
		if err != nil {
			return httpx.BadRequest("weights", "%v", err)
		}
		t = t.Canonical()
		if err := t.Validate(routes.ValidateOptions{}); err != nil {
			return err
		}
		msg := req.Message
		if msg == "" {
			msg = fmt.Sprintf("set weights of %s: %s", name, formatWeights(req.Weights))
		}
		return h.put(w, r, expected, t, msg)
	})(w, r)
}

func formatWeights(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// VersionsResponse is the body of GET /v1/versions.
type VersionsResponse struct {
	Versions []store.Version `json:"versions"`
}

func (h *handler) versions(w http.ResponseWriter, r *http.Request) error {
	vs, err := h.opts.Store.History(r.Context())
	if err != nil {
		return h.storeError("read history", err)
	}
	if vs == nil {
		vs = []store.Version{}
	}
	httpx.WriteJSON(w, http.StatusOK, VersionsResponse{Versions: vs})
	return nil
}

func pathVersion(r *http.Request, name string) (int64, error) {
	n, err := strconv.ParseInt(r.PathValue(name), 10, 64)
	if err != nil || n < 1 {
		return 0, httpx.BadRequest(name, "must be a version number >= 1, got %q", r.PathValue(name))
	}
	return n, nil
}

func (h *handler) version(w http.ResponseWriter, r *http.Request) error {
	n, err := pathVersion(r, "n")
	if err != nil {
		return err
	}
	e, err := h.opts.Store.Get(r.Context(), n)
	if err != nil {
		return h.storeError("read version", err)
	}
	httpx.WriteJSON(w, http.StatusOK, e)
	return nil
}

func (h *handler) diff(w http.ResponseWriter, r *http.Request) error {
	a, err := pathVersion(r, "a")
	if err != nil {
		return err
	}
	b, err := pathVersion(r, "b")
	if err != nil {
		return err
	}
	ea, err := h.opts.Store.Get(r.Context(), a)
	if err != nil {
		return h.storeError("read version", err)
	}
	eb, err := h.opts.Store.Get(r.Context(), b)
	if err != nil {
		return h.storeError("read version", err)
	}
	httpx.WriteJSON(w, http.StatusOK, store.Compare(ea, eb))
	return nil
}

// RollbackRequest is the body of POST /v1/rollback.
type RollbackRequest struct {
	Version int64 `json:"version"`
}

func (h *handler) rollback(w http.ResponseWriter, r *http.Request) error {
	expected, given, err := ifMatch(r, false)
	if err != nil {
		return err
	}
	var req RollbackRequest
	if err := httpx.DecodeJSON(w, r, &req, 4<<10); err != nil {
		return err
	}
	if req.Version < 1 {
		return httpx.BadRequest("version", "must be a version number >= 1, got %d", req.Version)
	}
	if !given {
		cur, err := h.opts.Store.Current(r.Context())
		if err != nil {
			return h.storeError("read current version", err)
		}
		expected = cur.Number
	}
	if _, err := h.opts.Store.Get(r.Context(), req.Version); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return &httpx.Error{Status: http.StatusNotFound, Code: httpx.CodeNotFound, Field: "version", Message: fmt.Sprintf("version %d does not exist", req.Version)}
		}
		return h.storeError("read version", err)
	}
	v, err := store.Rollback(r.Context(), h.opts.Store, expected, req.Version, author(r))
	if err != nil {
		return h.storeError("rollback", err)
	}
	h.log.InfoContext(r.Context(), "route table rolled back", "to", req.Version, "version", v.Number, "author", v.Author)
	w.Header().Set("ETag", etag(v.Number))
	httpx.WriteJSON(w, http.StatusOK, v)
	return nil
}

// ProxiesResponse is the body of GET /v1/proxies.
type ProxiesResponse struct {
	Proxies []xds.ProxyStatus `json:"proxies"`
}

func (h *handler) proxies(w http.ResponseWriter, _ *http.Request) error {
	httpx.WriteJSON(w, http.StatusOK, ProxiesResponse{Proxies: h.opts.Proxies.Status()})
	return nil
}

func (h *handler) proxy(w http.ResponseWriter, r *http.Request) error {
	p, ok := h.opts.Proxies.Proxy(r.PathValue("id"))
	if !ok {
		return httpx.NotFound("no proxy %q", r.PathValue("id"))
	}
	httpx.WriteJSON(w, http.StatusOK, p)
	return nil
}

// Service is one service of GET /v1/services.
type Service struct {
	Name      string              `json:"name"`
	Instances []registry.Instance `json:"instances"`
	Passing   int                 `json:"passing"`
}

// ServicesResponse is the body of GET /v1/services.
type ServicesResponse struct {
	Services []Service `json:"services"`
}

func (h *handler) services(w http.ResponseWriter, r *http.Request) error {
	snap, err := h.opts.Registry.Snapshot(r.Context())
	if err != nil {
		h.log.Error("registry snapshot", "error", err)
		return httpx.Unavailable("registry unavailable")
	}
	out := ServicesResponse{Services: []Service{}}
	for _, name := range snap.ServiceNames() {
		s := Service{Name: name, Instances: snap.Instances(name)}
		if s.Instances == nil {
			s.Instances = []registry.Instance{}
		}
		for _, i := range s.Instances {
			if i.Health == registry.HealthPassing {
				s.Passing++
			}
		}
		out.Services = append(out.Services, s)
	}
	httpx.WriteJSON(w, http.StatusOK, out)
	return nil
}
