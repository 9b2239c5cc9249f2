package pets_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil/petstest"
	"github.com/petmesh/petmesh/services/pets"
)

// tracedServer is the API in-process over a real loopback socket (a
// SQLite store of the test's own), its spans recorded.
type tracedServer struct {
	*httptest.Server
	spans *tracetest.SpanRecorder
	tel   *telemetry.Telemetry
}

// newServer serves the API with opts, its spans recorded.
func newServer(t testing.TB, opts pets.HandlerOptions) tracedServer {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tel := telemetry.NewTest(io.Discard)
	tel.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	srv := petstest.Serve(t, "sqlite://"+filepath.Join(t.TempDir(), "pets.db"), tel, opts)
	return tracedServer{Server: srv.Server, spans: rec, tel: tel}
}

// TestOpenAPI checks that the document is JSON and describes exactly the
// routes the mux serves, and that the mux serves each of them.
func TestOpenAPI(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(pets.OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	var documented, served []string
	for path, ops := range doc.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	for _, r := range pets.Routes {
		served = append(served, r.Method+" "+r.Path)
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("documented %v\nserved     %v", documented, served)
	}

	srv := newServer(t, pets.HandlerOptions{})
	for _, r := range pets.Routes {
		t.Run(r.Method+" "+r.Path, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), r.Method, srv.URL+strings.ReplaceAll(r.Path, "{id}", "pet_000000000000000000000000"), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			// A served route answers from its handler: never the mux's
			// 405 or its "no route" 404.
			if resp.StatusCode == http.StatusMethodNotAllowed || strings.Contains(string(b), "no route") || resp.StatusCode >= 500 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
		})
	}
}

// TestTracing checks that a request yields a server span with a database
// client span under it.
func TestTracing(t *testing.T) {
	srv := newServer(t, pets.HandlerOptions{})
	resp, err := srv.Client().Get(srv.URL + "/pets?species=Dog")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	var server, db sdktrace.ReadOnlySpan
	for _, s := range srv.spans.Ended() {
		switch s.SpanKind() {
		case trace.SpanKindServer:
			server = s
		case trace.SpanKindClient:
			if s.Name() == "SELECT pets" {
				db = s
			}
		}
	}
	if server == nil || db == nil {
		t.Fatalf("want a server and a db span, got %v", srv.spans.Ended())
	}
	if server.Name() != "GET /pets" {
		t.Errorf("server span %q", server.Name())
	}
	if db.Parent().SpanID() != server.SpanContext().SpanID() {
		t.Errorf("db span is not a child of the server span")
	}
	attrs := map[string]string{}
	for _, kv := range db.Attributes() {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	for k, want := range map[string]string{
		"db.system": "sqlite", "db.operation": "SELECT", // pre-1.26 names
		"db.system.name": "sqlite", "db.operation.name": "SELECT", "db.collection.name": "pets",
	} {
		if attrs[k] != want {
			t.Errorf("db span %s = %q, want %q (attributes %v)", k, attrs[k], want, attrs)
		}
	}
}
