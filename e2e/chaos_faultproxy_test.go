package e2e

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/httpx"
)

// faultProxy is a reverse proxy put between one instance's sidecar and its
// app (the sidecar's -app-addr), to inject faults into that instance only:
// the route table's fault policy (services.X.fault) applies to every
// instance of a service, and the scenarios need one slow or failing
// instance beside a healthy one. The app's health path is never touched,
// so that the sidecar's and the edge's health checks keep passing and only
// the request path misbehaves (as with a slow query or a bad deploy).
type faultProxy struct {
	addr       string
	healthPath string
	srv        *http.Server

	mu           sync.Mutex
	delay        time.Duration
	abortPercent float64
	abortStatus  int

	// Counters of requests other than health checks.
	passed, delayed, aborted atomic.Int64
}

// startFaultProxy listens on a free loopback port and forwards to the app
// at appAddr. It is closed when t ends.
func startFaultProxy(t *testing.T, appAddr, healthPath string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fp := &faultProxy{addr: ln.Addr().String(), healthPath: healthPath}
	target := &url.URL{Scheme: "http", Host: appAddr}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
			// The sidecar already set the forwarding headers the app reads.
			r.Out.Header["X-Forwarded-For"] = r.In.Header["X-Forwarded-For"]
		},
		Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second},
	}
	fp.srv = &http.Server{Handler: fp.handler(rp), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = fp.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = fp.srv.Shutdown(ctx)
	})
	return fp
}

func (fp *faultProxy) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == fp.healthPath {
			next.ServeHTTP(w, r)
			return
		}
		fp.mu.Lock()
		delay, pct, status := fp.delay, fp.abortPercent, fp.abortStatus
		fp.mu.Unlock()
		if pct > 0 && rand.Float64()*100 < pct {
			fp.aborted.Add(1)
			httpx.WriteError(w, &httpx.Error{Status: status, Code: httpx.CodeUnavailable, Message: "fault injected by the chaos test"})
			return
		}
		if delay > 0 {
			fp.delayed.Add(1)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done(): // the caller gave up (a per-try timeout)
				t.Stop()
				return
			}
		} else {
			fp.passed.Add(1)
		}
		next.ServeHTTP(w, r)
	})
}

// setDelay delays every request but health checks by d (0: none).
func (fp *faultProxy) setDelay(d time.Duration) {
	fp.mu.Lock()
	fp.delay = d
	fp.mu.Unlock()
}

// setAbort answers percent of the requests but health checks with status
// and a JSON error, without calling the app (0: none).
func (fp *faultProxy) setAbort(percent float64, status int) {
	fp.mu.Lock()
	fp.abortPercent, fp.abortStatus = percent, status
	fp.mu.Unlock()
}
