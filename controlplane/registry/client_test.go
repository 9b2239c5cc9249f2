package registry_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/petmesh/petmesh/controlplane/registry"
)

// countingTransport counts the requests it passes on.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int32
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return t.next.RoundTrip(r)
}

// TestWrapTransport: every call goes through the wrapper, which receives
// the client's own tuned transport (or the caller's, left unmodified), and
// the client still does not follow redirects.
func TestWrapTransport(t *testing.T) {
	m, srv := newAPI(t)
	var got http.RoundTripper
	var n atomic.Int32
	wrap := registry.WrapTransport(func(next http.RoundTripper) http.RoundTripper {
		got = next
		return countingTransport{next: next, n: &n}
	})

	c, err := registry.NewHTTPClient(srv.URL, testToken, wrap)
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := got.(*http.Transport)
	if !ok {
		t.Fatalf("wrap got a %T, want the client's *http.Transport", got)
	}
	if tr.Proxy != nil || tr.MaxIdleConnsPerHost != 2 || tr.ResponseHeaderTimeout == 0 {
		t.Errorf("wrap got a transport with proxy %v, %d idle conns per host, response header timeout %v; want the registry's tuned one",
			tr.Proxy != nil, tr.MaxIdleConnsPerHost, tr.ResponseHeaderTimeout)
	}
	reg := registry.Registration{Service: "pets", ID: "p1", Address: "127.0.0.1", Port: 7001}
	if err := c.Register(t.Context(), reg); err != nil {
		t.Fatal(err)
	}
	if err := c.Heartbeat(t.Context(), reg.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Deregister(t.Context(), reg.ID); err != nil {
		t.Fatal(err)
	}
	if calls := n.Load(); calls != 3 {
		t.Errorf("%d requests through the wrapper, want 3 (register, heartbeat, deregister)", calls)
	}
	if snap, err := m.Snapshot(t.Context()); err != nil {
		t.Fatal(err)
	} else if _, ok := snap.Instance(reg.ID); ok {
		t.Errorf("instance %s still registered after deregister", reg.ID)
	}

	t.Run("redirects are not followed", func(t *testing.T) {
		redirect := httptest.NewServer(http.RedirectHandler(srv.URL+registry.PathInstances, http.StatusTemporaryRedirect))
		t.Cleanup(redirect.Close)
		c, err := registry.NewHTTPClient(redirect.URL, testToken, wrap)
		if err != nil {
			t.Fatal(err)
		}
		var apiErr *registry.APIError
		if _, err := c.Snapshot(t.Context()); !errors.As(err, &apiErr) || apiErr.Status != http.StatusTemporaryRedirect {
			t.Fatalf("snapshot through a redirect: %v, want the 307 as an APIError", err)
		}
	})

	t.Run("caller's client", func(t *testing.T) {
		hc := &http.Client{}
		c, err := registry.NewHTTPClient(srv.URL, testToken, registry.WithHTTPClient(hc), wrap)
		if err != nil {
			t.Fatal(err)
		}
		if got != http.DefaultTransport {
			t.Errorf("wrap got %T for a client without a transport, want http.DefaultTransport", got)
		}
		if hc.Transport != nil {
			t.Errorf("the caller's client was modified: transport %T", hc.Transport)
		}
		before := n.Load()
		if _, err := c.Snapshot(t.Context()); err != nil {
			t.Fatal(err)
		}
		if calls := n.Load() - before; calls != 1 {
			t.Errorf("%d requests through the wrapper, want 1", calls)
		}
	})
}
