package dataplane

import (
	"encoding/json"
	"net/http"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/petmesh/petmesh/internal/httpx"
)

type dumpEndpoint struct {
	Address      string    `json:"address"`
	Healthy      bool      `json:"healthy"`
	EDSHealthy   bool      `json:"eds_healthy"`
	EjectedUntil time.Time `json:"ejected_until,omitzero"`
	Active       int64     `json:"active_requests"`
}

type dump struct {
	AppliedAt time.Time                  `json:"applied_at"`
	Warming   []string                   `json:"warming,omitempty"`
	Listeners map[string]json.RawMessage `json:"listeners"`
	Routes    map[string]json.RawMessage `json:"routes"`
	Clusters  map[string]json.RawMessage `json:"clusters"`
	Endpoints map[string]json.RawMessage `json:"endpoints"`
	State     map[string][]dumpEndpoint  `json:"endpoint_state"`
}

func rawMap[M proto.Message](m map[string]M) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		b, err := protojson.Marshal(v)
		if err != nil {
			b, _ = json.Marshal(err.Error())
		}
		out[k] = b
	}
	return out
}

// ConfigDumpHandler serves the active resources as JSON (protojson per
// resource) with the live endpoint states, for the admin port's
// /config_dump.
func (d *DataPlane) ConfigDumpHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g := d.cur.Load()
		if g == nil {
			httpx.WriteError(w, httpx.Unavailable("no configuration applied yet"))
			return
		}
		out := dump{
			AppliedAt: g.builtAt,
			Listeners: rawMap(g.res.Listeners), Routes: rawMap(g.res.Routes),
			Clusters: rawMap(g.res.Clusters), Endpoints: rawMap(g.res.Endpoints),
			State: map[string][]dumpEndpoint{},
		}
		d.mu.Lock()
		if d.pending != nil {
			out.Warming = d.pending.missing
		}
		d.mu.Unlock()
		for name, c := range g.clusters {
			eps := []dumpEndpoint{}
			for _, ep := range c.eps {
				de := dumpEndpoint{Address: ep.addr, Healthy: ep.healthy.Load(), EDSHealthy: ep.edsHealthy, Active: ep.active.Load()}
				if u := ep.ejectedUntil.Load(); u > 0 {
					de.EjectedUntil = time.Unix(0, u).UTC()
				}
				eps = append(eps, de)
			}
			out.State[name] = eps
		}
		httpx.WriteJSON(w, http.StatusOK, out)
	})
}
