package edge

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestClientBodyMapsBodyErrors: a 5xx written after the client's body
// failed becomes the client's error (413 over the limit, 400 otherwise);
// a 5xx without a body error, and flushes, pass through.
func TestClientBodyMapsBodyErrors(t *testing.T) {
	tests := []struct {
		desc     string
		body     io.ReadCloser
		limit    int64
		upstream int
		want     int
	}{
		{"over the limit", io.NopCloser(strings.NewReader(strings.Repeat("x", 100))), 10, 502, 413},
		{"malformed body", io.NopCloser(io.MultiReader(strings.NewReader("abc"), errReader{})), 0, 502, 400},
		{"upstream 503 without a body error", io.NopCloser(strings.NewReader("abc")), 0, 503, 503},
		{"4xx kept", io.NopCloser(strings.NewReader(strings.Repeat("x", 100))), 10, 404, 404},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			rec := httptest.NewRecorder()
			body := tc.body
			if tc.limit > 0 {
				body = http.MaxBytesReader(rec, body, tc.limit)
			}
			cb := &clientBody{ResponseWriter: rec, body: body}
			_, _ = io.ReadAll(cb)
			cb.Header().Set("Content-Type", "application/json")
			cb.WriteHeader(tc.upstream)
			_, _ = io.WriteString(cb, `{"error":{"code":"bad_gateway","message":"upstream"}}`)
			cb.Flush()
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d", rec.Code, tc.want)
			}
			if tc.want != tc.upstream && (strings.Contains(rec.Body.String(), "bad_gateway") || !strings.Contains(rec.Body.String(), `"error"`)) {
				t.Fatalf("body %q: the upstream error was not replaced", rec.Body)
			}
			if tc.want == tc.upstream && !rec.Flushed {
				t.Fatal("Flush did not reach the server's writer")
			}
		})
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("chunked line ends with bare LF") }
