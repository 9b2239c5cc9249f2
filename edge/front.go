package edge

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
)

// front is the edge's outermost public handler, in front of the data
// plane: load shedding, client-header trust and the body limit. It holds no
// lock; in-flight requests are one atomic counter.
type front struct {
	next          http.Handler
	maxConcurrent int64
	maxBody       int64
	trusted       []netip.Prefix
	inflight      atomic.Int64
	shed          prometheus.Counter
}

func newFront(next http.Handler, c *Config, reg prometheus.Registerer) (*front, error) {
	f := &front{
		next:          next,
		maxConcurrent: int64(c.MaxConcurrent),
		maxBody:       c.MaxBody,
		trusted:       c.trusted,
		shed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_edge_shed_total",
			Help: "Requests answered 503 because -max-concurrent requests were in flight.",
		}),
	}
	if reg != nil {
		inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "petmesh_edge_inflight_requests",
			Help: "Requests in flight on the public listener.",
		}, func() float64 { return float64(f.inflight.Load()) })
		for _, col := range []prometheus.Collector{f.shed, inflight} {
			if err := reg.Register(col); err != nil {
				return nil, err
			}
		}
	}
	return f, nil
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if f.maxConcurrent > 0 && n > f.maxConcurrent {
		f.shed.Inc()
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Connection", "close")
		httpx.WriteError(w, &httpx.Error{Status: http.StatusServiceUnavailable, Code: httpx.CodeUnavailable, Message: "edge overloaded"})
		return
	}
	f.sanitize(r)
	if f.maxBody > 0 && r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength > f.maxBody {
			httpx.WriteError(w, &httpx.Error{Status: http.StatusRequestEntityTooLarge, Code: httpx.CodeTooLarge, Message: "request body too large"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, f.maxBody)
	}
	f.next.ServeHTTP(w, r)
}

// sanitize removes what a client must not decide: identity headers
// (x-petmesh-*), and forwarding headers (Forwarded, X-Forwarded-*) unless
// the peer is a trusted proxy. With a trusted peer, the client address is
// taken from X-Forwarded-For (the rightmost address that is not a trusted
// proxy) and becomes r.RemoteAddr, so rate limits, the access log and the
// X-Forwarded-For sent upstream all see the real client.
func (f *front) sanitize(r *http.Request) {
	h := r.Header
	// Fast path: most requests carry none of these headers.
	hasFwd := false
	for k := range h {
		if len(k) >= 9 && (strings.HasPrefix(k, identity.HeaderPrefix) || strings.HasPrefix(k, "X-Forwarded-") || k == "Forwarded") {
			hasFwd = true
			break
		}
	}
	if !hasFwd {
		return
	}
	identity.StripHeaders(h)
	if len(f.trusted) > 0 && f.isTrusted(peerAddr(r.RemoteAddr)) {
		if ip, ok := f.clientFromXFF(h.Values("X-Forwarded-For")); ok {
			r.RemoteAddr = net.JoinHostPort(ip.String(), "0")
		}
		h.Del("Forwarded")
		return // X-Forwarded-Proto/-Host of a trusted proxy are kept
	}
	h.Del("Forwarded")
	for k := range h {
		if strings.HasPrefix(k, "X-Forwarded-") {
			delete(h, k)
		}
	}
}

func (f *front) isTrusted(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range f.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientFromXFF walks X-Forwarded-For from the right, skipping trusted
// proxies; the first other address is the client. A malformed entry stops
// the walk (everything left of it is client-controlled).
func (f *front) clientFromXFF(vals []string) (netip.Addr, bool) {
	var last netip.Addr
	for i := len(vals) - 1; i >= 0; i-- {
		parts := strings.Split(vals[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return last, last.IsValid()
			}
			a = a.Unmap()
			if !f.isTrusted(a) {
				return a, true
			}
			last = a
		}
	}
	return last, last.IsValid()
}

func peerAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err == nil {
		return ap.Addr()
	}
	a, _ := netip.ParseAddr(remote)
	return a
}
