package edge

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkEdgeHotPath: one authenticated GET through the edge's front
// handler and the data plane (route match, jwt_authn with a cached ES256
// token, proxy over kept-alive loopback connections) to an httptest
// backend; access log and stats events off.
func BenchmarkEdgeHotPath(b *testing.B) {
	h := newHarness(b, testConfig(b))
	h.s.accessLog = false
	tok := h.login(b, "alice", "alice-pw")
	b.ReportAllocs()
	b.ResetTimer()
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
