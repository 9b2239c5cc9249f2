package edge

import (
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time so far. Per operation it
// is a figure that does not depend on how much of a shared machine the
// benchmark got, unlike ns/op.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEdgeHotPath: one authenticated GET through the edge's front
// handler and the data plane (route match, jwt_authn with a cached ES256
// token, proxy over kept-alive loopback connections) to an httptest
// backend; access log and stats events off. cpu-µs/op is the process's
// CPU time (the backend's included) per request.
func BenchmarkEdgeHotPath(b *testing.B) {
	h := newHarness(b, testConfig(b))
	h.s.accessLog = false
	tok := h.login(b, "alice", "alice-pw")
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	defer func() { b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op") }()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := httptest.NewRequest(http.MethodGet, "/pets/1", nil)
			r.Header.Set("Authorization", "Bearer "+tok)
			w := httptest.NewRecorder()
			h.s.front.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}
