package dataplane

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"syscall"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// BenchmarkProxy measures the hot path (route match, load balancing,
// metrics, proxying) to a local backend, against a bare
// httputil.ReverseProxy with a tuned transport on the same backend. The
// handlers are called directly with a recorder so that only the proxy's
// own cost and the upstream round trip are measured.
func BenchmarkProxy(b *testing.B) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello")
	}))
	defer be.Close()

	dp, err := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Close()
	rc := routeConfig("r", prefixRoute("stats", "/stats", "a"), prefixRoute("sync", "/sync", "a"), prefixRoute("pets", "/pets", "a"))
	if err := dp.Apply(context.Background(), resources(listenerRDS(b, testListener, "r"), rc, []*cluster.Cluster{edsCluster("a")}, loadAssignment(b, "a", be.URL))); err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse(be.URL)
	bare := &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:  &http.Transport{MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second},
		BufferPool: bufPool,
	}
	for _, bc := range []struct {
		name string
		h    http.Handler
	}{
		{"petmesh", dp.Handler(testListener)},
		{"bare-reverseproxy", bare},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := cpuTime()
			defer func() { b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op") }()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := httptest.NewRequest(http.MethodGet, "http://edge.local/pets/1", nil)
					req.RemoteAddr = "127.0.0.1:5555"
					w := httptest.NewRecorder()
					bc.h.ServeHTTP(w, req)
					if w.Code != 200 {
						b.Fatalf("status %d", w.Code)
					}
				}
			})
		})
	}
}

// cpuTime is the process's user+system CPU time so far: per operation a
// figure that does not depend on how much of a shared machine the
// benchmark got, unlike ns/op (the in-process backend is included).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
