package healthcheck_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/deploy/healthcheck"
)

func TestRun(t *testing.T) {
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			_, _ = io.WriteString(w, "ok")
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		default:
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(ready.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL
	gone.Close()

	tests := []struct {
		desc    string
		args    []string
		wantErr string
	}{
		{desc: "2xx is healthy", args: []string{ready.URL + "/readyz"}},
		{desc: "503 is unhealthy", args: []string{ready.URL + "/other"}, wantErr: "status 503"},
		{desc: "nothing listening", args: []string{goneURL + "/readyz"}, wantErr: "probe"},
		{desc: "timeout", args: []string{"-timeout", "100ms", ready.URL + "/slow"}, wantErr: "probe"},
		{desc: "no url", args: nil, wantErr: "exactly one URL"},
		{desc: "two urls", args: []string{ready.URL, ready.URL}, wantErr: "exactly one URL"},
		{desc: "relative url", args: []string{"/readyz"}, wantErr: "absolute http(s) URL"},
		{desc: "bad scheme", args: []string{"ftp://127.0.0.1/x"}, wantErr: "absolute http(s) URL"},
		{desc: "bad timeout", args: []string{"-timeout", "0s", ready.URL}, wantErr: "-timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			err := healthcheck.Run(context.Background(), tc.args, io.Discard)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}
