package syncsvc

import (
	_ "embed"
	"errors"
	"net/http"
	"strconv"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
)

//go:embed openapi.json
var openAPI []byte

// API serves the sync HTTP API.
type API struct {
	Syncer *Syncer
	Store  *Store
}

// Handler returns the routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /sync/runs", httpx.HandlerFunc(a.start))
	mux.Handle("GET /sync/runs", httpx.HandlerFunc(a.list))
	mux.Handle("GET /sync/runs/{id}", httpx.HandlerFunc(a.get))
	mux.Handle("GET /health", httpx.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if err := a.Store.Ping(r.Context()); err != nil {
			return httpx.Unavailable("database: %v", err)
		}
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return nil
	}))
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	return mux
}

func (a *API) start(w http.ResponseWriter, r *http.Request) error {
	if _, err := identity.Require(r, identity.RoleAdmin); err != nil {
		return err
	}
	var body struct {
		Full bool `json:"full"`
	}
	if r.ContentLength != 0 {
		if err := httpx.DecodeJSON(w, r, &body, 4<<10); err != nil {
			return err
		}
	}
	run, err := a.Syncer.Trigger(r.Context(), TriggerManual, body.Full)
	if errors.Is(err, ErrRunning) {
		return httpx.Conflict("a sync run is already running")
	}
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/sync/runs/"+run.ID)
	httpx.WriteJSON(w, http.StatusAccepted, run)
	return nil
}

func (a *API) list(w http.ResponseWriter, r *http.Request) error {
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return httpx.BadRequest("limit", "want an integer between 1 and 100, got %q", v)
		}
		limit = n
	}
	runs, err := a.Store.List(r.Context(), limit)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"runs": runs})
	return nil
}

func (a *API) get(w http.ResponseWriter, r *http.Request) error {
	run, err := a.Store.Get(r.Context(), r.PathValue("id"))
	if errors.Is(err, ErrNotFound) {
		return httpx.NotFound("no run %q", r.PathValue("id"))
	}
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, run)
	return nil
}
