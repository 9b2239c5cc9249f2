package pets_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/services/pets"
)

var exemplarTraceRE = regexp.MustCompile(`# \{.*trace_id="([0-9a-f]{32})"`)

// listExemplars returns the trace ids of the exemplars on
// http_server_request_duration_seconds{http_route="/pets"} in the
// OpenMetrics exposition Prometheus scrapes.
func listExemplars(t *testing.T, metrics http.Handler) []string {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	rec := httptest.NewRecorder()
	metrics.ServeHTTP(rec, req)
	var ids []string
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if !strings.HasPrefix(line, "http_server_request_duration_seconds_bucket{") || !strings.Contains(line, `http_route="/pets"`) {
			continue
		}
		if m := exemplarTraceRE.FindStringSubmatch(line); m != nil {
			ids = append(ids, m[1])
		}
	}
	return ids
}

// TestListExemplarIsOwnTrace checks that the latency histogram's exemplar
// names the request just made, whether the list cache answered it or the
// database did, after many other sampled requests landed in the same
// bucket since the last scrape (the SDK's default reservoir would keep a
// random one of them).
func TestListExemplarIsOwnTrace(t *testing.T) {
	srv := newServer(t, pets.HandlerOptions{ListCacheBytes: 1 << 20})
	metrics := srv.tel.MetricsHandler()

	n := 0
	// Whether the cache answered, from the server span's attribute: not
	// from the metrics, whose every gather resets the SDK's sampling.
	cacheOf := func(traceID string) string {
		t.Helper()
		for _, sp := range srv.spans.Ended() {
			if sp.SpanKind() != trace.SpanKindServer || sp.SpanContext().TraceID().String() != traceID {
				continue
			}
			for _, kv := range sp.Attributes() {
				if kv.Key == "petmesh.pets.list_cache" {
					return kv.Value.AsString()
				}
			}
		}
		t.Fatalf("no server span with petmesh.pets.list_cache in trace %s", traceID)
		return ""
	}
	get := func(path string) (traceID string) {
		t.Helper()
		n++
		traceID = fmt.Sprintf("%032x", 0xabc000+n)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("traceparent", "00-"+traceID+"-00000000000000aa-01")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		return traceID
	}
	for _, tc := range []struct {
		desc, path string
		cache      string
	}{
		{"cache hit", "/pets?species=Dog", "hit"},
		{"cache miss", "/pets?species=Cat&q=unique", "miss"},
		{"cache hit again", "/pets?species=Dog", "hit"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			// Fill the bucket with other sampled requests (cache hits)
			// since the last scrape.
			for range 50 {
				get("/pets?species=Dog")
			}
			own := get(tc.path)
			if c := cacheOf(own); c != tc.cache {
				t.Fatalf("GET %s: list cache %s, want %s", tc.path, c, tc.cache)
			}
			if ids := listExemplars(t, metrics); !contains(ids, own) {
				t.Fatalf("no exemplar of trace %s (the last request) on http_server_request_duration_seconds{http_route=\"/pets\"}; exemplars: %v", own, ids)
			}
		})
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
