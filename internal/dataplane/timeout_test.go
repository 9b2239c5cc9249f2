package dataplane

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// silentUpstream accepts connections, reads what arrives and never
// answers. It counts the connections it accepted.
func silentUpstream(t *testing.T) (string, *atomic.Int32) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c) // until the proxy gives up and closes
			}()
		}
	}()
	t.Cleanup(func() { lis.Close(); <-done })
	return "http://" + lis.Addr().String(), &accepted
}

// TestRouteTimeoutSilentUpstream: Envoy's route timeout defaults to 15 s
// when absent (so nothing waits forever on an upstream that never
// answers), an explicit 0 disables it, and a per_try_timeout applies
// either way. Against a real upstream that accepts and never answers.
func TestRouteTimeoutSilentUpstream(t *testing.T) {
	silent, accepted := silentUpstream(t)
	late := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(400 * time.Millisecond) // longer than the shortened default below
		fmt.Fprint(w, "late")
	}))
	defer late.Close()

	t.Run("absent compiles to 15 s, explicit 0 to none", func(t *testing.T) {
		zero := prefixRoute("zero", "/zero", "a")
		zero.GetRoute().Timeout = durationpb.New(0)
		h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", zero, prefixRoute("absent", "/", "a")),
			[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", silent)))
		got := map[string]time.Duration{}
		for _, rt := range h.dp.cur.Load().listeners[testListener].table.any.routes {
			got[rt.name] = time.Duration(rt.timeout.d)
		}
		if got["absent"] != 15*time.Second || got["zero"] != 0 {
			t.Fatalf("compiled timeouts %v, want absent 15s and zero 0", got)
		}
	})

	// The default shortened so that the real requests below finish fast;
	// the compiled value is checked above.
	defer func(d time.Duration) { defaultRouteTimeout = d }(defaultRouteTimeout)
	defaultRouteTimeout = 200 * time.Millisecond

	perTryOnly := prefixRoute("pertry", "/pertry", "a")
	perTryOnly.GetRoute().Timeout = durationpb.New(0)
	perTryOnly.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1),
		PerTryTimeout: durationpb.New(150 * time.Millisecond), RetryBackOff: &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	explicit := prefixRoute("explicit", "/explicit", "a")
	explicit.GetRoute().Timeout = durationpb.New(150 * time.Millisecond)
	h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", perTryOnly, explicit, prefixRoute("absent", "/", "a")),
		[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", silent)))
	for _, tc := range []struct {
		desc, path   string
		wantAttempts int32
	}{
		{desc: "absent timeout: the default ends the wait", path: "/", wantAttempts: 1},
		{desc: "explicit timeout", path: "/explicit", wantAttempts: 1},
		{desc: "timeout 0 with per_try_timeout: each try times out, retried", path: "/pertry", wantAttempts: 2},
	} {
		for _, method := range []string{"GET", "POST"} { // the synchronous HTTP/1.1 path and http.Transport
			t.Run(tc.desc+" "+method, func(t *testing.T) {
				before := accepted.Load()
				var body io.Reader
				if method == "POST" {
					body = strings.NewReader("payload")
				}
				st, _, b := h.do(t, method, tc.path, nil, body)
				if st != 504 || !strings.Contains(b, `"code":"timeout"`) {
					t.Fatalf("got %d %s, want 504 timeout", st, b)
				}
				want := tc.wantAttempts
				if method == "POST" && tc.wantAttempts > 1 {
					want = 1 // POST is not retried without retry_non_idempotent
				}
				if got := accepted.Load() - before; got != want {
					t.Fatalf("%d upstream connections, want %d", got, want)
				}
			})
		}
	}

	t.Run("explicit 0 disables the default", func(t *testing.T) {
		zero := prefixRoute("zero", "/", "a")
		zero.GetRoute().Timeout = durationpb.New(0)
		absent := prefixRoute("absent", "/absent", "a")
		h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", absent, zero),
			[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", late.URL)))
		if st, _, b := h.do(t, "GET", "/", nil, nil); st != 200 || b != "late" {
			t.Fatalf("timeout 0: got %d %s, want the late answer", st, b)
		}
		if st, _, b := h.do(t, "GET", "/absent", nil, nil); st != 504 {
			t.Fatalf("absent timeout: got %d %s, want 504 (the control)", st, b)
		}
	})
}
