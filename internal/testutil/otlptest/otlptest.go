// Package otlptest is an OTLP/HTTP trace receiver for tests that read what
// a real process exports: every export request is kept raw (OTLP protobuf
// carries span names, attribute strings, events and status messages as
// plain bytes, so a byte search finds any secret in them) and decoded to
// protojson text, and the spans are counted by name.
package otlptest

import (
	"bytes"
	"compress/gzip"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Receiver accepts OTLP/HTTP protobuf trace exports on /v1/traces.
type Receiver struct {
	*httptest.Server
	mu    sync.Mutex
	raw   [][]byte
	text  []string
	spans int
	names map[string]int
}

// NewReceiver starts a receiver, closed at the end of the test. An export
// that is not an ExportTraceServiceRequest fails the test.
func NewReceiver(t testing.TB) *Receiver {
	t.Helper()
	s := &Receiver{names: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rd io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			rd = zr
		}
		b, err := io.ReadAll(rd)
		if err != nil || r.URL.Path != "/v1/traces" {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			t.Errorf("an OTLP export that is not an ExportTraceServiceRequest: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		js, err := protojson.Marshal(&req)
		if err != nil {
			t.Errorf("protojson: %v", err)
		}
		s.mu.Lock()
		s.raw = append(s.raw, b)
		s.text = append(s.text, string(js))
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					s.spans++
					s.names[sp.GetName()]++
				}
			}
		}
		s.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(s.Close)
	return s
}

// Raw returns every export request body received so far, joined.
func (s *Receiver) Raw() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Join(s.raw, nil)
}

// Snapshot returns the raw export bodies joined, their protojson text
// joined, the span count and the spans per name.
func (s *Receiver) Snapshot() (raw []byte, text string, spans int, names map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Join(s.raw, nil), strings.Join(s.text, "\n"), s.spans, maps.Clone(s.names)
}

// Env is the environment that makes a petmesh process export every trace
// to the receiver (OTLP/HTTP protobuf, sampling ratio 1, 100 ms batches).
func (s *Receiver) Env() []string {
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + s.URL, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf", "OTEL_TRACES_EXPORTER=otlp",
		"OTEL_TRACES_SAMPLER=traceidratio", "OTEL_TRACES_SAMPLER_ARG=1", "OTEL_BSP_SCHEDULE_DELAY=100",
	}
}
