package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/petmesh/petmesh/internal/httpx"
)

// Paths served by Handler. The control-plane API mounts the handler on
// PathPrefix.
const (
	PathPrefix    = "/v1/registry/"
	PathInstances = "/v1/registry/instances"
)

// InstanceRequest is the JSON body of POST /v1/registry/instances.
type InstanceRequest struct {
	Service  string            `json:"service"`
	ID       string            `json:"id"`
	Address  string            `json:"address"`
	Port     int               `json:"port"`
	Version  string            `json:"version,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// TTL is a Go duration ("10s"); empty means the registry's default.
	TTL string `json:"ttl,omitempty"`
}

// HeartbeatRequest is the optional JSON body of PUT
// /v1/registry/instances/{id}/heartbeat. Without a body (or without a
// status) the heartbeat keeps the current health.
type HeartbeatRequest struct {
	Status Health `json:"status,omitempty"`
	Output string `json:"output,omitempty"`
}

// InstanceList is the JSON body of GET /v1/registry/instances.
type InstanceList struct {
	Instances []Instance `json:"instances"`
}

// HandlerBackend is what Handler needs from a registry.
type HandlerBackend interface {
	Registrar
	Snapshot(ctx context.Context) (Snapshot, error)
}

// HandlerOptions configure NewHandler.
type HandlerOptions struct {
	// Token is the registration token every request must carry as
	// "Authorization: Bearer <token>". Required.
	Token string
	// MaxBody bounds request bodies; default 64 KiB.
	MaxBody int64
	// Logger logs backend failures (answered with 503); default discards.
	Logger *slog.Logger
}

// Handler serves the built-in registry's HTTP API (see README.md):
//
//	POST   /v1/registry/instances                 register (or replace)
//	PUT    /v1/registry/instances/{id}/heartbeat  renew TTL, optionally set health
//	DELETE /v1/registry/instances/{id}            deregister
//	GET    /v1/registry/instances[?service=name]  list instances with health
//
// Every request needs the registration token. Errors use the httpx JSON
// error shape; validation errors are 400 naming the field.
type Handler struct {
	backend HandlerBackend
	token   [sha256.Size]byte
	maxBody int64
	log     *slog.Logger
	mux     *http.ServeMux
}

var _ http.Handler = (*Handler)(nil)

// NewHandler returns the registry API over backend (usually a *Memory;
// any Registrar with Snapshot works, Consul included).
func NewHandler(backend HandlerBackend, opts HandlerOptions) (*Handler, error) {
	if backend == nil {
		return nil, errors.New("registry handler: nil backend")
	}
	if opts.Token == "" {
		return nil, errors.New("registry handler: a registration token is required")
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = 64 << 10
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	h := &Handler{backend: backend, token: sha256.Sum256([]byte(opts.Token)), maxBody: opts.MaxBody, log: opts.Logger, mux: http.NewServeMux()}
	h.mux.Handle("POST "+PathInstances, h.auth(h.register))
	h.mux.Handle("GET "+PathInstances, h.auth(h.list))
	h.mux.Handle("PUT "+PathInstances+"/{id}/heartbeat", h.auth(h.heartbeat))
	h.mux.Handle("DELETE "+PathInstances+"/{id}", h.auth(h.deregister))
	h.mux.Handle(PathPrefix, httpx.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return httpx.NotFound("no registry endpoint %s %s", r.Method, r.URL.Path)
	}))
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) auth(next httpx.HandlerFunc) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		got, ok := bearer(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="petmesh-registry"`)
			return httpx.Unauthenticated("missing registration token: send Authorization: Bearer <token>")
		}
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], h.token[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="petmesh-registry", error="invalid_token"`)
			return httpx.Unauthenticated("invalid registration token")
		}
		return next(w, r)
	}
}

func bearer(r *http.Request) (string, bool) {
	v := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

func (h *Handler) register(w http.ResponseWriter, r *http.Request) error {
	var req InstanceRequest
	if err := httpx.DecodeJSON(w, r, &req, h.maxBody); err != nil {
		return err
	}
	reg, err := req.Registration()
	if err != nil {
		return h.toHTTPError(r, err)
	}
	if err := h.backend.Register(r.Context(), reg); err != nil {
		return h.toHTTPError(r, err)
	}
	in := Instance{Service: reg.Service, ID: reg.ID, Address: reg.Address, Port: reg.Port, Version: reg.Version, Metadata: reg.Metadata, Health: HealthPassing}
	w.Header().Set("Location", PathInstances+"/"+reg.ID)
	httpx.WriteJSON(w, http.StatusCreated, in)
	return nil
}

// Registration converts the request, validating it.
func (req InstanceRequest) Registration() (Registration, error) {
	reg := Registration{Service: req.Service, ID: req.ID, Address: req.Address, Port: req.Port, Version: req.Version, Metadata: req.Metadata}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			return Registration{}, &ValidationError{Field: "ttl", Message: fmt.Sprintf("%q: want a duration such as \"10s\"", req.TTL)}
		}
		if d <= 0 {
			return Registration{}, &ValidationError{Field: "ttl", Message: fmt.Sprintf("%q: want a positive duration", req.TTL)}
		}
		reg.TTL = d
	}
	return reg, reg.Validate()
}

func (h *Handler) heartbeat(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &httpx.Error{Status: http.StatusRequestEntityTooLarge, Code: httpx.CodeTooLarge, Field: "body", Message: fmt.Sprintf("body is larger than %d bytes", h.maxBody)}
		}
		return httpx.BadRequest("body", "reading body: %v", err)
	}
	var req HeartbeatRequest
	if len(bytes.TrimSpace(body)) > 0 {
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err := httpx.DecodeJSON(w, r, &req, h.maxBody); err != nil {
			return err
		}
	}
	switch {
	case req.Status == "" && req.Output != "":
		return httpx.BadRequest("status", "required when output is set")
	case req.Status == "":
		err = h.backend.Heartbeat(r.Context(), id)
	case !req.Status.Valid():
		return httpx.BadRequest("status", "%q: want passing, warning or critical", req.Status)
	default:
		err = h.backend.SetHealth(r.Context(), id, req.Status, req.Output)
	}
	if err != nil {
		return h.toHTTPError(r, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) deregister(w http.ResponseWriter, r *http.Request) error {
	if err := h.backend.Deregister(r.Context(), r.PathValue("id")); err != nil {
		return h.toHTTPError(r, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) error {
	s, err := h.backend.Snapshot(r.Context())
	if err != nil {
		return h.toHTTPError(r, err)
	}
	out := InstanceList{Instances: []Instance{}}
	if svc := r.URL.Query().Get("service"); svc != "" {
		out.Instances = append(out.Instances, s.Instances(svc)...)
	} else {
		out.Instances = append(out.Instances, s.All()...)
	}
	httpx.WriteJSON(w, http.StatusOK, out)
	return nil
}

// toHTTPError maps registry errors to API errors. Anything unexpected
// becomes a 503 (the backend, e.g. Consul, is unavailable) whose message
// carries no detail.
func (h *Handler) toHTTPError(r *http.Request, err error) error {
	var ve *ValidationError
	switch {
	case errors.As(err, &ve):
		return httpx.BadRequest(ve.Field, "%s", ve.Message)
	case errors.Is(err, ErrNotFound):
		return httpx.NotFound("instance not found; register it again")
	case errors.Is(err, ErrNoTTL):
		return &httpx.Error{Status: http.StatusConflict, Code: httpx.CodeConflict, Message: "instance has an http check, not a ttl"}
	case errors.Is(err, context.Canceled):
		return &httpx.Error{Status: 499, Code: httpx.CodeClientClosed, Message: "request canceled"}
	default:
		h.log.ErrorContext(r.Context(), "registry backend failed", "method", r.Method, "path", r.URL.Path, "error", err)
		return httpx.Unavailable("registry backend unavailable")
	}
}
