package sidecar

import (
	"fmt"
	"net/http"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/petmesh/petmesh/controlplane/registry"
)

// unsampledTransport sets an unsampled W3C trace context on every request
// that carries none, like the app health probe: the registry calls
// (register, a heartbeat every few seconds per instance, deregister) are
// then neither sampled traces of their own in the control plane (whose
// parent-based sampler follows the flag) nor exemplars hiding real ones.
type unsampledTransport struct{ next http.RoundTripper }

func (t unsampledTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("traceparent") == "" {
		r = r.Clone(r.Context()) // a RoundTripper must not modify its request
		r.Header.Set("traceparent", unsampledTraceparent())
	}
	return t.next.RoundTrip(r)
}

// newRegistrar returns the registry client of cfg.Registry (nil for none),
// its HTTP calls marked unsampled.
func newRegistrar(cfg Config) (registry.Registrar, error) {
	switch cfg.Registry {
	case RegistryBuiltin:
		reg, err := registry.NewHTTPClient(cfg.RegistryURL, cfg.RegistrationToken,
			registry.WrapTransport(func(next http.RoundTripper) http.RoundTripper { return unsampledTransport{next} }))
		if err != nil {
			return nil, fmt.Errorf("-registry-url: %w", err)
		}
		return reg, nil
	case RegistryConsul:
		// Consul's own pooled transport, wrapped. (Consul does not trace
		// today; the flag costs nothing and holds if it starts to.)
		hc := &http.Client{Transport: unsampledTransport{consulapi.DefaultConfig().Transport}}
		cc, err := consulapi.NewClient(&consulapi.Config{Address: cfg.ConsulAddr, HttpClient: hc})
		if err != nil {
			return nil, fmt.Errorf("-consul-addr: %w", err)
		}
		reg, err := registry.NewConsul(registry.ConsulOptions{Client: cc, DefaultTTL: cfg.TTL})
		if err != nil {
			return nil, fmt.Errorf("-registry consul: %w", err)
		}
		return reg, nil
	}
	return nil, nil
}
