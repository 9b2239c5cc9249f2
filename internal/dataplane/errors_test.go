package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"testing"
)

// errorStatus: Envoy's mapping for the errors the data plane knows, oxy's
// for the residual network errors, and never a 500 for an upstream error.
func TestErrorStatus(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	readTimeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		desc string
		ctx  context.Context
		err  error
		want int
	}{
		{"overloaded", nil, errOverloaded, 503},
		{"no healthy upstream", nil, errNoHealthyUpstream, 503},
		{"cluster not found", nil, errClusterNotFound, 503},
		{"client gone", canceled, context.Canceled, StatusClientClosedRequest},
		{"deadline", nil, fmt.Errorf("attempt: %w", context.DeadlineExceeded), 504},
		{"connect refused", nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, 503},
		{"read timeout (oxy: net.Error timeout)", nil, readTimeout, 504},
		{"reset (oxy: network error)", nil, &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}, 502},
		{"EOF (oxy)", nil, io.EOF, 502},
		{"malformed response (oxy would say 500)", nil, errors.New(`malformed HTTP status code "x"`), 502},
		{"header limit", nil, errH1HeaderTooLarge, 502},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			if tc.ctx != nil {
				r = r.WithContext(tc.ctx)
			}
			if got := errorStatus(r, tc.err); got.Status != tc.want {
				t.Fatalf("errorStatus(%v) = %d %s, want %d", tc.err, got.Status, got.Code, tc.want)
			}
		})
	}
}
