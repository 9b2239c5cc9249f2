package stats

import (
	_ "embed"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"log/slog"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/services/stats/store"
)

//go:embed openapi.json
var openAPI []byte

// Server holds the HTTP handlers of the stats API.
type Server struct {
	store     *store.Store
	queue     *Queue
	pets      *PetsClient
	m         *metrics
	retention time.Duration
	now       func() time.Time
	logger    *slog.Logger
}

// retryAfter is the Retry-After (seconds) sent with a 503 for a full queue.
const retryAfter = "1"

// Routes returns the API mux (without middleware).
func (s *Server) Routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("POST /events", s.handle(s.postEvents))
	mux.Handle("GET /stats/requests", s.handle(s.getRequests))
	mux.Handle("GET /stats/pets", s.handle(s.getPets))
	mux.Handle("GET /health", s.handle(s.health))
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	for path, allow := range map[string]string{
		"/events": "POST", "/stats/requests": "GET", "/stats/pets": "GET", "/health": "GET", "/openapi.json": "GET",
	} {
		mux.Handle(path, methodNotAllowed(allow))
	}
	mux.Handle("/", httpx.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error {
		return httpx.NotFound("no route for %s %s", r.Method, r.URL.Path)
	}))
	return mux
}

// handle logs errors that are not client errors before they become a
// generic 500.
func (s *Server) handle(f httpx.HandlerFunc) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		err := f(w, r)
		var he *httpx.Error
		if err != nil && !errors.As(err, &he) {
			s.logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		return err
	}
}

func methodNotAllowed(allow string) http.Handler {
	return httpx.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Allow", allow)
		return &httpx.Error{Status: http.StatusMethodNotAllowed, Code: httpx.CodeMethodNotAllowed, Message: r.Method + " not allowed; use " + allow}
	})
}

type acceptedResponse struct {
	Accepted int `json:"accepted"`
}

// postEvents accepts a batch from any authenticated caller (the edge posts
// with its service identity). It only enqueues: the writer goroutine
// stores the events, so they become visible to queries within the flush
// interval. A full queue rejects the whole batch with 503 + Retry-After.
func (s *Server) postEvents(w http.ResponseWriter, r *http.Request) error {
	if _, err := identity.Require(r); err != nil {
		return err
	}
	evs, err := decodeEvents(w, r, s.now(), s.retention)
	if err != nil {
		return err
	}
	if !s.queue.TryPush(evs) {
		s.m.dropped.WithLabelValues(dropQueueFull).Add(float64(len(evs)))
		w.Header().Set("Retry-After", retryAfter)
		return httpx.Unavailable("ingest queue is full; retry later")
	}
	httpx.WriteJSON(w, http.StatusAccepted, acceptedResponse{Accepted: len(evs)})
	return nil
}

// checkParams rejects query parameters not in allowed, and repeated ones.
func checkParams(q url.Values, allowed ...string) error {
	for k, vs := range q {
		ok := false
		for _, a := range allowed {
			if k == a {
				ok = true
			}
		}
		if !ok {
			return httpx.BadRequest(k, "unknown query parameter")
		}
		if len(vs) > 1 {
			return httpx.BadRequest(k, "given more than once")
		}
	}
	return nil
}

func parseWindow(q url.Values, def string) (store.Window, error) {
	v := q.Get("window")
	if v == "" {
		v = def
	}
	win, ok := store.ParseWindow(v)
	if !ok {
		return store.Window{}, httpx.BadRequest("window", "want %s, got %q", store.WindowNames, v)
	}
	return win, nil
}

// getRequests serves request statistics. Any authenticated caller may read
// them, except that by=subject (per-user activity) requires role admin.
func (s *Server) getRequests(w http.ResponseWriter, r *http.Request) error {
	id, err := identity.Require(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	if err := checkParams(q, "window", "by"); err != nil {
		return err
	}
	win, err := parseWindow(q, "1h")
	if err != nil {
		return err
	}
	by := q.Get("by")
	if by == "" {
		by = store.ByRoute
	}
	if !store.ValidBy(by) {
		return httpx.BadRequest("by", "want route, status or subject, got %q", by)
	}
	if by == store.BySubject && !id.Has(identity.RoleAdmin) {
		return httpx.Forbidden("by=subject requires role admin")
	}
	rep, err := s.store.Requests(r.Context(), win, by, s.now())
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, rep)
	return nil
}

type petsResponse struct {
	*PetCounts
	MostViewed       []store.PetViews `json:"most_viewed"`
	MostViewedWindow string           `json:"most_viewed_window"`
}

// Limits of /stats/pets.
const (
	defaultTop = 10
	maxTop     = 100
)

// getPets serves pet counts read from the pets API (cached) and the most
// viewed pets from the local store. Any authenticated caller may read it.
func (s *Server) getPets(w http.ResponseWriter, r *http.Request) error {
	if _, err := identity.Require(r); err != nil {
		return err
	}
	q := r.URL.Query()
	if err := checkParams(q, "window", "top"); err != nil {
		return err
	}
	win, err := parseWindow(q, "7d")
	if err != nil {
		return err
	}
	top := defaultTop
	if v := q.Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxTop {
			return httpx.BadRequest("top", "want an integer 1..%d, got %q", maxTop, v)
		}
		top = n
	}
	counts, err := s.pets.Counts(r.Context())
	if err != nil {
		if de, ok := isDependency(err); ok {
			s.logger.WarnContext(r.Context(), "dependency failed", "dependency", de.Dependency, "err", de.Err)
			return httpx.Unavailable("dependency %s is unavailable", de.Dependency)
		}
		return err
	}
	views, err := s.store.TopViewed(r.Context(), win.Span, top, s.now())
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, petsResponse{PetCounts: counts, MostViewed: views, MostViewedWindow: win.Name})
	return nil
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) error {
	if err := s.store.Ping(r.Context()); err != nil {
		s.logger.WarnContext(r.Context(), "health check failed", "err", err)
		return httpx.Unavailable("database unavailable")
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}
