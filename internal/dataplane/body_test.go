package dataplane

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	tu "github.com/petmesh/petmesh/internal/testutil"
)

// bodyBackend reads the whole request body and answers its length; it
// counts the bodies it received completely.
func bodyBackend(t *testing.T) (*httptest.Server, *atomic.Int32) {
	var complete atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return // a body cut off on its way: nothing to answer
		}
		complete.Add(1)
		fmt.Fprint(w, len(b))
	}))
	t.Cleanup(s.Close)
	return s, &complete
}

func perRouteBuffer(t testing.TB, r *route.Route, pr *bufferv3.BufferPerRoute) *route.Route {
	if r.TypedPerFilterConfig == nil {
		r.TypedPerFilterConfig = map[string]*anypb.Any{}
	}
	r.TypedPerFilterConfig["envoy.filters.http.buffer"] = mustAny(t, pr)
	return r
}

// errorField decodes the JSON error body.
func errorField(t *testing.T, body string) (code, field string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Field string } `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("error body %q is not the JSON error: %v", body, err)
	}
	return e.Error.Code, e.Error.Field
}

// TestBufferFilterLimits: the buffer filter's max_request_bytes (listener
// default, per-route override, per-route disabled) refuses a larger
// Content-Length up front and cuts off a chunked body that crosses it.
func TestBufferFilterLimits(t *testing.T) {
	be, complete := bodyBackend(t)
	buf := filter(t, "envoy.filters.http.buffer", &bufferv3.Buffer{MaxRequestBytes: wrapperspb.UInt32(100)})
	big := perRouteBuffer(t, prefixRoute("big", "/big", "a"), &bufferv3.BufferPerRoute{Override: &bufferv3.BufferPerRoute_Buffer{
		Buffer: &bufferv3.Buffer{MaxRequestBytes: wrapperspb.UInt32(1000)}}})
	off := perRouteBuffer(t, prefixRoute("off", "/off", "a"), &bufferv3.BufferPerRoute{Override: &bufferv3.BufferPerRoute_Disabled{Disabled: true}})
	h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r", buf),
		routeConfig("r", big, off, prefixRoute("default", "/", "a")), []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))

	// chunked hides the length from the client library: the body streams.
	chunked := func(n int) io.Reader { return io.MultiReader(strings.NewReader(strings.Repeat("x", n))) }
	for _, tc := range []struct {
		desc     string
		path     string
		body     io.Reader
		want     int
		reaching bool // the backend receives the whole body
	}{
		{desc: "default limit, at the limit", path: "/x", body: strings.NewReader(strings.Repeat("x", 100)), want: 200, reaching: true},
		{desc: "default limit, Content-Length over it", path: "/x", body: strings.NewReader(strings.Repeat("x", 101)), want: 413},
		{desc: "default limit, chunked over it", path: "/x", body: chunked(5000), want: 413},
		{desc: "default limit, chunked under it", path: "/x", body: chunked(50), want: 200, reaching: true},
		{desc: "per-route limit allows more", path: "/big", body: strings.NewReader(strings.Repeat("x", 1000)), want: 200, reaching: true},
		{desc: "per-route limit, Content-Length over it", path: "/big", body: strings.NewReader(strings.Repeat("x", 1001)), want: 413},
		{desc: "per-route limit, chunked over it", path: "/big", body: chunked(100_000), want: 413},
		{desc: "disabled on the route", path: "/off", body: strings.NewReader(strings.Repeat("x", 100_000)), want: 200, reaching: true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			before := complete.Load()
			st, hdr, body := h.do(t, "POST", tc.path, nil, tc.body)
			if st != tc.want {
				t.Fatalf("got %d %q, want %d", st, body, tc.want)
			}
			if got := complete.Load() - before; (got == 1) != tc.reaching {
				t.Fatalf("backend received %d complete bodies, want reaching=%v", got, tc.reaching)
			}
			if st == 413 {
				if code, field := errorField(t, body); code != "payload_too_large" || field != "body" {
					t.Fatalf("413 body %q: code %q field %q", body, code, field)
				}
				if hdr.Get("Content-Type") != "application/json" {
					t.Fatalf("413 Content-Type %q", hdr.Get("Content-Type"))
				}
			}
		})
	}
	if got := testutil.ToFloat64(h.dp.metrics.requests.WithLabelValues(testListener, "default", "", "413")); got != 1 {
		t.Fatalf(`requests_total{cluster="",code="413"} on the default route (refused by the filter) = %v, want 1`, got)
	}

	t.Run("config errors name the field", func(t *testing.T) {
		for _, tc := range []struct {
			desc string
			res  *Resources
			want string
		}{
			{desc: "listener Buffer without max_request_bytes",
				res: resources(listenerRDS(t, testListener, "r", filter(t, "envoy.filters.http.buffer", &bufferv3.Buffer{})),
					routeConfig("r", prefixRoute("default", "/", "a")), []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)),
				want: "http_filters[0].typed_config.max_request_bytes"},
			{desc: "per-route override without buffer",
				res: resources(listenerRDS(t, testListener, "r", buf),
					routeConfig("r", perRouteBuffer(t, prefixRoute("x", "/", "a"), &bufferv3.BufferPerRoute{})), []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)),
				want: `typed_per_filter_config["envoy.filters.http.buffer"]`},
			{desc: "per-route config without the filter on the listener",
				res: resources(listenerRDS(t, testListener, "r"),
					routeConfig("r", perRouteBuffer(t, prefixRoute("x", "/", "a"), &bufferv3.BufferPerRoute{Override: &bufferv3.BufferPerRoute_Disabled{Disabled: true}})),
					[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)),
				want: `typed_per_filter_config["envoy.filters.http.buffer"]: no http filter of that name`},
			{desc: "virtual-host config without the filter on the listener", res: func() *Resources {
				rc := routeConfig("r", prefixRoute("x", "/", "a"))
				rc.VirtualHosts[0].TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.buffer": mustAny(t,
					&bufferv3.BufferPerRoute{Override: &bufferv3.BufferPerRoute_Disabled{Disabled: true}})}
				return resources(listenerRDS(t, testListener, "r"), rc, []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL))
			}(), want: `(virtual host) typed_per_filter_config["envoy.filters.http.buffer"]: no http filter of that name`},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				dp, err := New(Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer dp.Close()
				if err := dp.Apply(t.Context(), tc.res); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want one containing %s", err, tc.want)
				}
			})
		}
	})
}

// rawRequest writes head and body on a new connection to addr, then
// either half-closes (the client stops sending) or resets it, and returns
// the response (nil after a reset).
func rawRequest(t *testing.T, addr, head, body string, reset bool) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, head+body); err != nil {
		t.Fatal(err)
	}
	tc := c.(*net.TCPConn)
	if reset {
		_ = tc.SetLinger(0)
		return nil
	}
	_ = tc.CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(strings.NewReader(string(b)))
	return resp
}

// TestClientBodyErrors: a request body that fails while it is read is the
// client's fault (400, 499), never a 502, and never counts against the
// upstream endpoint; with or without a retry buffer.
func TestClientBodyErrors(t *testing.T) {
	be, complete := bodyBackend(t)
	be2, _ := bodyBackend(t)
	var mu sync.Mutex
	var statuses []int
	c := edsCluster("a")
	// One gateway failure would eject an endpoint (one may always be).
	c.OutlierDetection = &cluster.OutlierDetection{ConsecutiveGatewayFailure: wrapperspb.UInt32(1),
		EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100), MaxEjectionPercent: wrapperspb.UInt32(50)}
	retried := retryRoute("5xx", 2, true)
	retried.Match.PathSpecifier = &route.RouteMatch_Prefix{Prefix: "/retried"}
	h := newHarness(t, Options{AccessLog: func(_ context.Context, e *AccessEntry) {
		mu.Lock()
		statuses = append(statuses, e.Status)
		mu.Unlock()
	}}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", retried, prefixRoute("plain", "/", "a")),
		[]*cluster.Cluster{c}, loadAssignment(t, "a", be.URL, be2.URL)))
	addr := hostOf(h.srv.URL)
	lastStatus := func() int {
		mu.Lock()
		defer mu.Unlock()
		if len(statuses) == 0 {
			return 0
		}
		return statuses[len(statuses)-1]
	}
	for _, path := range []string{"/plain", "/retried"} {
		t.Run(path, func(t *testing.T) {
			for _, tc := range []struct {
				desc, head, body string
				reset            bool
				want             int
			}{
				{desc: "Content-Length body cut short", head: "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", body: "0123456789", want: 400},
				{desc: "chunked body cut short", head: "POST " + path + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", body: "a\r\n0123456789\r\n", want: 400},
				{desc: "malformed chunk size", head: "POST " + path + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", body: "5\r\nhello\r\nzz\r\n", want: 400},
				{desc: "client resets mid-body", head: "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", body: strings.Repeat("y", 1000), reset: true, want: StatusClientClosedRequest},
			} {
				t.Run(tc.desc, func(t *testing.T) {
					n := len(statuses)
					resp := rawRequest(t, addr, tc.head, tc.body, tc.reset)
					if resp != nil {
						b, _ := io.ReadAll(resp.Body)
						if resp.StatusCode != tc.want {
							t.Fatalf("got %d %s, want %d", resp.StatusCode, b, tc.want)
						}
						if code, field := errorField(t, string(b)); code != "invalid_argument" || field != "body" {
							t.Fatalf("error body %s: code %q field %q", b, code, field)
						}
					}
					tu.Eventually(t, 5*time.Second, func() error {
						mu.Lock()
						defer mu.Unlock()
						if len(statuses) == n {
							return fmt.Errorf("no access log entry yet")
						}
						return nil
					})
					if got := lastStatus(); got != tc.want {
						t.Fatalf("access log status %d, want %d", got, tc.want)
					}
				})
			}
		})
	}
	if got := testutil.ToFloat64(h.dp.metrics.ejections.WithLabelValues("a")); got != 0 {
		t.Fatalf("%v outlier ejections: a client's failed body counted against an endpoint", got)
	}
	if complete.Load() != 0 {
		t.Fatalf("the backend received %d complete bodies", complete.Load())
	}
	// And a well-formed request still goes through.
	if st, _, body := h.do(t, "POST", "/plain", nil, strings.NewReader("hello")); st != 200 || body != "5" {
		t.Fatalf("got %d %q", st, body)
	}
}
