package dataplane

import (
	"context"
	"errors"
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
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

func TestRouting(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	exact := prefixRoute("exact", "", "b")
	exact.Match.PathSpecifier = &route.RouteMatch_Path{Path: "/pets/special"}
	re := prefixRoute("regex", "", "b")
	re.Match.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: `/items/[0-9]+`}}
	hdr := prefixRoute("header", "/h", "b")
	hdr.Match.Headers = []*route.HeaderMatcher{{Name: "x-canary", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "1"}}}}}
	method := prefixRoute("method", "/m", "b")
	method.Match.Headers = []*route.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "POST|PUT"}}}}}}
	rewrite := prefixRoute("rewrite", "/api/", "a")
	rewrite.GetRoute().PrefixRewrite = "/v1/"
	rewrite.GetRoute().HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "pets.internal"}
	direct := &route.Route{Name: "direct", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/ping"}},
		Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 200, Body: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "pong"}}}}}
	rc := routeConfig("r", exact, re, hdr, method, rewrite, direct, prefixRoute("pets", "/pets", "a"), prefixRoute("fallback", "/", "a"))
	// A second virtual host selected by the Host header.
	rc.VirtualHosts = append([]*route.VirtualHost{{Name: "admin", Domains: []string{"admin.example.com"}, Routes: []*route.Route{prefixRoute("admin", "/", "b")}}}, rc.VirtualHosts...)
	h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), rc,
		[]*cluster.Cluster{edsCluster("a"), edsCluster("b")}, loadAssignment(t, "a", a.URL), loadAssignment(t, "b", b.URL)))

	for _, tc := range []struct {
		desc, method, path string
		hdr                map[string]string
		wantStatus         int
		wantBody           string
	}{
		{desc: "prefix", method: "GET", path: "/pets/1", wantStatus: 200, wantBody: "a "},
		{desc: "exact path wins by order", method: "GET", path: "/pets/special", wantStatus: 200, wantBody: "b "},
		{desc: "regex matches whole path", method: "GET", path: "/items/42", wantStatus: 200, wantBody: "b "},
		{desc: "regex does not match partially", method: "GET", path: "/items/42x", wantStatus: 200, wantBody: "a "},
		{desc: "header match", method: "GET", path: "/h", hdr: map[string]string{"X-Canary": "1"}, wantStatus: 200, wantBody: "b "},
		{desc: "header mismatch falls through", method: "GET", path: "/h", hdr: map[string]string{"X-Canary": "2"}, wantStatus: 200, wantBody: "a "},
		{desc: "method match", method: "POST", path: "/m", wantStatus: 200, wantBody: "b "},
		{desc: "method mismatch", method: "GET", path: "/m", wantStatus: 200, wantBody: "a "},
		{desc: "prefix and host rewrite", method: "GET", path: "/api/pets", wantStatus: 200, wantBody: "a pets.internal /v1/pets"},
		{desc: "direct response", method: "GET", path: "/ping", wantStatus: 200, wantBody: "pong"},
		{desc: "virtual host by domain", method: "GET", path: "/pets", hdr: map[string]string{"Host": "admin.example.com"}, wantStatus: 200, wantBody: "b "},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			st, hd, body := h.do(t, tc.method, tc.path, tc.hdr, nil)
			if st != tc.wantStatus || !strings.HasPrefix(body, tc.wantBody) {
				t.Fatalf("got %d %q, want %d %q...", st, body, tc.wantStatus, tc.wantBody)
			}
			if hd.Get("X-Request-Id") == "" {
				t.Error("no x-request-id")
			}
		})
	}
	t.Run("no route is 404 JSON", func(t *testing.T) {
		rc2 := routeConfig("r", prefixRoute("pets", "/pets", "a"))
		if err := h.dp.Apply(context.Background(), resources(listenerRDS(t, testListener, "r"), rc2, []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", a.URL))); err != nil {
			t.Fatal(err)
		}
		st, _, body := h.do(t, "GET", "/nothing", nil, nil)
		if st != 404 || !strings.Contains(body, `"code":"not_found"`) {
			t.Fatalf("got %d %s", st, body)
		}
	})
}

func TestWeightedSplit(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	r := prefixRoute("canary", "/", "")
	r.GetRoute().ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{Clusters: []*route.WeightedCluster_ClusterWeight{
		{Name: "a", Weight: wrapperspb.UInt32(90)}, {Name: "b", Weight: wrapperspb.UInt32(10)}}}}
	h := newHarness(t, Options{Rand: lockedRand(42)}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", r),
		[]*cluster.Cluster{edsCluster("a"), edsCluster("b")}, loadAssignment(t, "a", a.URL), loadAssignment(t, "b", b.URL)))
	n, got := 2000, map[string]int{}
	for range n {
		_, _, body := h.do(t, "GET", "/", nil, nil)
		got[body[:1]]++
	}
	if share := float64(got["b"]) / float64(n) * 100; share < 7 || share > 13 {
		t.Fatalf("b got %.1f%% of requests, want 10%% ± 3 (%v)", share, got)
	}
}

// flaky answers 503 to the first fails requests, then "ok"; it counts
// attempts and records request bodies.
type flaky struct {
	fails    int32
	attempts atomic.Int32
	mu       sync.Mutex
	bodies   []string
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.bodies = append(f.bodies, string(b))
	f.mu.Unlock()
	if f.attempts.Add(1) <= f.fails {
		w.WriteHeader(503)
		return
	}
	fmt.Fprint(w, "ok")
}

func retryRoute(retryOn string, n uint32, nonIdempotent bool) *route.Route {
	r := prefixRoute("retry", "/", "a")
	r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: retryOn, NumRetries: wrapperspb.UInt32(n),
		RetryBackOff: &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	if nonIdempotent {
		r.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataNamespace: {Fields: map[string]*structpb.Value{
			MetaRetryNonIdempotent: structpb.NewBoolValue(true)}}}}
	}
	return r
}

func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		desc          string
		method        string
		body          string
		retryOn       string
		fails         int32
		nonIdempotent bool
		budget        *cluster.CircuitBreakers
		wantStatus    int
		wantAttempts  int32
	}{
		{desc: "GET retried on 5xx", method: "GET", retryOn: "5xx", fails: 2, wantStatus: 200, wantAttempts: 3},
		{desc: "gateway-error covers 503", method: "GET", retryOn: "gateway-error", fails: 1, wantStatus: 200, wantAttempts: 2},
		{desc: "retriable status codes only", method: "GET", retryOn: "retriable-status-codes", fails: 1, wantStatus: 503, wantAttempts: 1},
		{desc: "attempts exhausted returns upstream status", method: "GET", retryOn: "5xx", fails: 10, wantStatus: 503, wantAttempts: 4},
		{desc: "POST not retried", method: "POST", body: "x", retryOn: "5xx", fails: 1, wantStatus: 503, wantAttempts: 1},
		{desc: "POST retried with opt-in, body replayed", method: "POST", body: "payload", retryOn: "5xx", fails: 1, nonIdempotent: true, wantStatus: 200, wantAttempts: 2},
		{desc: "PUT body larger than the buffer not retried", method: "PUT", body: strings.Repeat("x", 70<<10), retryOn: "5xx", fails: 1, wantStatus: 503, wantAttempts: 1},
		{desc: "budget exhausted: no retry", method: "GET", retryOn: "5xx", fails: 1, wantStatus: 503, wantAttempts: 1,
			budget: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{RetryBudget: &cluster.CircuitBreakers_Thresholds_RetryBudget{
				BudgetPercent: &typev3.Percent{Value: 0}, MinRetryConcurrency: wrapperspb.UInt32(0)}}}}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			f := &flaky{fails: tc.fails}
			be := httptest.NewServer(f)
			defer be.Close()
			c := edsCluster("a")
			c.CircuitBreakers = tc.budget
			h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", retryRoute(tc.retryOn, 3, tc.nonIdempotent)),
				[]*cluster.Cluster{c}, loadAssignment(t, "a", be.URL)))
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			st, _, _ := h.do(t, tc.method, "/x", nil, body)
			if st != tc.wantStatus || f.attempts.Load() != tc.wantAttempts {
				t.Fatalf("status %d after %d attempts, want %d after %d", st, f.attempts.Load(), tc.wantStatus, tc.wantAttempts)
			}
			for i, b := range f.bodies {
				if b != tc.body {
					t.Fatalf("attempt %d got a body of %d bytes, want %d", i, len(b), len(tc.body))
				}
			}
		})
	}
}

func TestTimeoutsAndErrors(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	var calls atomic.Int32
	slowOnce := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			<-r.Context().Done()
			return
		}
		fmt.Fprint(w, "fast")
	}))
	defer slowOnce.Close()
	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}))
	defer reset.Close()
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := "http://" + lis.Addr().String()
	lis.Close()

	timeoutRoute := prefixRoute("t", "/", "a")
	timeoutRoute.GetRoute().Timeout = durationpb.New(100 * time.Millisecond)
	perTry := prefixRoute("p", "/", "a")
	perTry.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1), PerTryTimeout: durationpb.New(100 * time.Millisecond),
		RetryBackOff: &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}

	for _, tc := range []struct {
		desc       string
		rt         *route.Route
		backend    string
		wantStatus int
		wantBody   string
	}{
		{desc: "route timeout is 504", rt: timeoutRoute, backend: slow.URL, wantStatus: 504, wantBody: `"code":"timeout"`},
		{desc: "per-try timeout retried", rt: perTry, backend: slowOnce.URL, wantStatus: 200, wantBody: "fast"},
		{desc: "connection refused is 503", rt: prefixRoute("r", "/", "a"), backend: refused, wantStatus: 503, wantBody: "upstream connect error"},
		{desc: "reset is 502", rt: prefixRoute("r", "/", "a"), backend: reset.URL, wantStatus: 502, wantBody: `"code":"bad_gateway"`},
		{desc: "no endpoints is 503", rt: prefixRoute("r", "/", "a"), backend: "", wantStatus: 503, wantBody: "no healthy upstream"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			cla := loadAssignment(t, "a")
			if tc.backend != "" {
				cla = loadAssignment(t, "a", tc.backend)
			}
			h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", tc.rt), []*cluster.Cluster{edsCluster("a")}, cla))
			st, _, body := h.do(t, "GET", "/", nil, nil)
			if st != tc.wantStatus || !strings.Contains(body, tc.wantBody) {
				t.Fatalf("got %d %s, want %d with %q", st, body, tc.wantStatus, tc.wantBody)
			}
		})
	}
}

func TestOutlierEjectionAndRecovery(t *testing.T) {
	good := backend(t, "good")
	var failing atomic.Bool
	failing.Store(true)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(500)
			return
		}
		fmt.Fprint(w, "bad-recovered")
	}))
	defer bad.Close()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	c := edsCluster("a")
	c.OutlierDetection = &cluster.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3), BaseEjectionTime: durationpb.New(30 * time.Second), MaxEjectionPercent: wrapperspb.UInt32(50)}
	h := newHarness(t, Options{Now: clk.Now}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "a")),
		[]*cluster.Cluster{c}, loadAssignment(t, "a", good.URL, bad.URL)))
	count := func(n int) (bads int) {
		for range n {
			if st, _, _ := h.do(t, "GET", "/", nil, nil); st != 200 {
				bads++
			}
		}
		return bads
	}
	if got := count(10); got != 3 {
		t.Fatalf("%d failures before ejection, want exactly 3 (consecutive_5xx)", got)
	}
	if got := count(20); got != 0 {
		t.Fatalf("%d failures after ejection, want 0", got)
	}
	if got := testutil.ToFloat64(h.dp.metrics.ejections.WithLabelValues("a")); got != 1 {
		t.Errorf("ejections metric %v", got)
	}
	failing.Store(false)
	clk.Advance(31 * time.Second)
	seen := false
	for range 10 {
		if _, _, body := h.do(t, "GET", "/", nil, nil); body == "bad-recovered" {
			seen = true
		}
	}
	if !seen {
		t.Fatal("ejected endpoint did not come back after base_ejection_time")
	}
	t.Run("second ejection doubles the time", func(t *testing.T) {
		failing.Store(true)
		count(10)
		failing.Store(false)
		clk.Advance(31 * time.Second)
		for range 10 {
			if _, _, body := h.do(t, "GET", "/", nil, nil); body == "bad-recovered" {
				t.Fatal("endpoint back after 31s; the second ejection should last 60s")
			}
		}
		clk.Advance(30 * time.Second)
		if count(4) != 0 {
			t.Fatal("failures after recovery")
		}
	})
}

func TestHealthChecks(t *testing.T) {
	var healthy atomic.Bool
	mk := func(name string, hc *atomic.Bool) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" {
				if hc != nil && !hc.Load() {
					w.WriteHeader(503)
				}
				return
			}
			fmt.Fprint(w, name)
		}))
		t.Cleanup(s.Close)
		return s
	}
	a, b := mk("a", nil), mk("b", &healthy)
	c := edsCluster("a")
	c.HealthChecks = []*core.HealthCheck{{Interval: durationpb.New(20 * time.Millisecond), Timeout: durationpb.New(time.Second),
		UnhealthyThreshold: wrapperspb.UInt32(1), HealthyThreshold: wrapperspb.UInt32(1),
		HealthChecker: &core.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &core.HealthCheck_HttpHealthCheck{Path: "/healthz"}}}}
	h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "a")),
		[]*cluster.Cluster{c}, loadAssignment(t, "a", a.URL, b.URL)))
	onlyA := func() error {
		for range 6 {
			if _, _, body := h.do(t, "GET", "/", nil, nil); body != "a" {
				return fmt.Errorf("got %q from an unhealthy endpoint", body)
			}
		}
		return nil
	}
	tu.Eventually(t, 5*time.Second, onlyA)
	healthy.Store(true)
	tu.Eventually(t, 5*time.Second, func() error {
		for range 6 {
			if _, _, body := h.do(t, "GET", "/", nil, nil); body == "b" {
				return nil
			}
		}
		return errors.New("b not back")
	})
}

func TestCircuitBreaker(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	}))
	defer be.Close()
	c := edsCluster("a")
	c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(0)}}}
	h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "a")), []*cluster.Cluster{c}, loadAssignment(t, "a", be.URL)))
	done := make(chan int)
	go func() {
		st, _, _ := h.do(t, "GET", "/", nil, nil)
		done <- st
	}()
	<-entered
	st, hdr, body := h.do(t, "GET", "/", nil, nil)
	if st != 503 || hdr.Get(HeaderOverloaded) != "true" || !strings.Contains(body, "overloaded") {
		t.Fatalf("got %d %v %s, want 503 with %s: true", st, hdr, body, HeaderOverloaded)
	}
	circuit := h.dp.metrics.circuitOpen.WithLabelValues("a", "requests")
	if got := testutil.ToFloat64(circuit); got != 1 {
		t.Fatalf("circuit_open{requests} = %v while overflowing, want 1", got)
	}
	// A rebuilt cluster starts closed: the gauge must not stay at 1 because
	// the cluster it replaced can no longer close it.
	c2 := edsCluster("a")
	c2.CircuitBreakers = c.CircuitBreakers
	c2.ConnectTimeout = durationpb.New(3 * time.Second)
	if err := h.dp.Apply(context.Background(), resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "a")), []*cluster.Cluster{c2}, loadAssignment(t, "a", be.URL))); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(circuit); got != 0 {
		t.Fatalf("circuit_open{requests} = %v after the cluster was rebuilt, want 0", got)
	}
	close(release)
	if st := <-done; st != 200 {
		t.Fatalf("first request %d", st)
	}
}

func TestRateLimit(t *testing.T) {
	be := backend(t, "a")
	rl := &lrlv3.LocalRateLimit{StatPrefix: "rl",
		TokenBucket:    &typev3.TokenBucket{MaxTokens: 2, TokensPerFill: wrapperspb.UInt32(1), FillInterval: durationpb.New(time.Hour)},
		FilterEnabled:  &core.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100}},
		FilterEnforced: &core.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100}}}
	limited := prefixRoute("limited", "/limited", "a")
	limited.TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.local_ratelimit": mustAny(t, rl)}
	l := listenerRDS(t, testListener, "r", filter(t, "envoy.filters.http.local_ratelimit", &lrlv3.LocalRateLimit{StatPrefix: "rl"}))
	h := newHarness(t, Options{}, resources(l, routeConfig("r", limited, prefixRoute("free", "/", "a")), []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))
	for i := range 2 {
		if st, _, _ := h.do(t, "GET", "/limited", nil, nil); st != 200 {
			t.Fatalf("request %d: %d", i, st)
		}
	}
	st, hdr, body := h.do(t, "GET", "/limited", nil, nil)
	if st != 429 || hdr.Get("Retry-After") == "" || hdr.Get("RateLimit-Limit") != "2" || !strings.Contains(body, "rate_limited") {
		t.Fatalf("got %d %v %s", st, hdr, body)
	}
	if st, _, _ := h.do(t, "GET", "/other", nil, nil); st != 200 {
		t.Fatalf("unlimited route: %d", st)
	}
	if got := testutil.ToFloat64(h.dp.metrics.rateLimited.WithLabelValues(testListener, "limited")); got != 1 {
		t.Errorf("rate limited metric %v", got)
	}
}

func TestFault(t *testing.T) {
	be := backend(t, "a")
	abort := prefixRoute("abort", "/abort", "a")
	abort.TypedPerFilterConfig = map[string]*anypb.Any{"fault": mustAny(t, &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{
		ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 418}, Percentage: &typev3.FractionalPercent{Numerator: 100}}})}
	delay := prefixRoute("delay", "/delay", "a")
	delay.TypedPerFilterConfig = map[string]*anypb.Any{"fault": mustAny(t, &faultv3.HTTPFault{Delay: &faultcommon.FaultDelay{
		FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: durationpb.New(150 * time.Millisecond)}, Percentage: &typev3.FractionalPercent{Numerator: 100}}})}
	l := listenerRDS(t, testListener, "r", filter(t, "fault", &faultv3.HTTPFault{}))
	h := newHarness(t, Options{}, resources(l, routeConfig("r", abort, delay, prefixRoute("r", "/", "a")), []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))
	if st, _, _ := h.do(t, "GET", "/abort", nil, nil); st != 418 {
		t.Fatalf("abort: %d", st)
	}
	start := time.Now()
	if st, _, _ := h.do(t, "GET", "/delay", nil, nil); st != 200 || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("delay: %d after %v", st, time.Since(start))
	}
	if st, _, _ := h.do(t, "GET", "/", nil, nil); st != 200 {
		t.Fatalf("no fault: %d", st)
	}
}

func TestJWTHook(t *testing.T) {
	var seen atomic.Value
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get(identity.HeaderSubject) + "|" + r.Header.Get(identity.HeaderRoles))
	}))
	defer be.Close()
	auth := AuthenticatorFunc(func(r *http.Request, req *AuthRequirement) (identity.Identity, error) {
		switch r.Header.Get("Authorization") {
		case "Bearer alice":
			return identity.Identity{Subject: "alice", Roles: []string{"viewer"}}, nil
		case "":
			return identity.Identity{}, httpx.Unauthenticated("token required")
		}
		return identity.Identity{}, errors.New("bad signature")
	})
	jwtCfg := &jwtv3.JwtAuthentication{RequirementMap: map[string]*jwtv3.JwtRequirement{"user": {RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: "edge"}}}}
	withRoles := func(name, prefix string, roles ...string) *route.Route {
		r := prefixRoute(name, prefix, "a")
		vs := []*structpb.Value{}
		for _, x := range roles {
			vs = append(vs, structpb.NewStringValue(x))
		}
		r.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataNamespace: {Fields: map[string]*structpb.Value{MetaRoles: structpb.NewListValue(&structpb.ListValue{Values: vs})}}}}
		r.TypedPerFilterConfig = map[string]*anypb.Any{"jwt": mustAny(t, &jwtv3.PerRouteConfig{RequirementSpecifier: &jwtv3.PerRouteConfig_RequirementName{RequirementName: "user"}})}
		return r
	}
	l := listenerRDS(t, testListener, "r", filter(t, "jwt", jwtCfg))
	factory := func(*jwtv3.JwtAuthentication) (Authenticator, error) { return auth, nil }
	h := newHarness(t, Options{Auth: factory}, resources(l, routeConfig("r", withRoles("admin", "/admin", "admin"), withRoles("pets", "/pets", "viewer"), prefixRoute("public", "/", "a")),
		[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))
	for _, tc := range []struct {
		desc, path, authz, spoof string
		want                     int
		wantSeen                 string
	}{
		{desc: "verified identity forwarded", path: "/pets", authz: "Bearer alice", want: 200, wantSeen: "alice|viewer"},
		{desc: "spoofed identity replaced", path: "/pets", authz: "Bearer alice", spoof: "mallory", want: 200, wantSeen: "alice|viewer"},
		{desc: "missing token 401", path: "/pets", want: 401},
		{desc: "bad token 401", path: "/pets", authz: "Bearer forged", want: 401},
		{desc: "missing role 403", path: "/admin", authz: "Bearer alice", want: 403},
		{desc: "public route strips spoofed identity", path: "/public", spoof: "mallory", want: 200, wantSeen: "|"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			seen.Store("")
			hdr := map[string]string{}
			if tc.authz != "" {
				hdr["Authorization"] = tc.authz
			}
			if tc.spoof != "" {
				hdr[identity.HeaderSubject] = tc.spoof
				hdr[identity.HeaderRoles] = "admin"
			}
			st, rh, _ := h.do(t, "GET", tc.path, hdr, nil)
			if st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			if st == 401 && rh.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if tc.wantSeen != "" && seen.Load() != tc.wantSeen {
				t.Fatalf("backend saw %q, want %q", seen.Load(), tc.wantSeen)
			}
		})
	}
	t.Run("no authenticator: NACK", func(t *testing.T) {
		dp, _ := New(Options{})
		err := dp.Validate(resources(l, routeConfig("r"), nil))
		if err == nil || !strings.Contains(err.Error(), "no authenticator") {
			t.Fatalf("err %v", err)
		}
	})
}

func TestUnsupportedFieldNACK(t *testing.T) {
	be := backend(t, "a")
	for _, tc := range []struct {
		desc    string
		mutate  func(*Resources)
		wantErr string
	}{
		{desc: "route field", mutate: func(r *Resources) {
			r.Routes["r"].VirtualHosts[0].Routes[0].GetRoute().RequestMirrorPolicies = []*route.RouteAction_RequestMirrorPolicy{{Cluster: "a"}}
		}, wantErr: `route configuration "r": virtual_hosts[0].routes[0].route.request_mirror_policies: unsupported field`},
		{desc: "cluster field", mutate: func(r *Resources) {
			r.Clusters["a"].PerConnectionBufferLimitBytes = wrapperspb.UInt32(1)
		}, wantErr: `cluster "a": per_connection_buffer_limit_bytes: unsupported field`},
		{desc: "unsupported lb value", mutate: func(r *Resources) {
			r.Clusters["a"].LbPolicy = cluster.Cluster_MAGLEV
		}, wantErr: `cluster "a": lb_policy: unsupported value MAGLEV`},
		{desc: "unknown retry_on", mutate: func(r *Resources) {
			r.Routes["r"].VirtualHosts[0].Routes[0].GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx,refused-stream"}
		}, wantErr: `retry_on: unsupported condition "refused-stream"`},
		{desc: "bad regex", mutate: func(r *Resources) {
			r.Routes["r"].VirtualHosts[0].Routes[0].Match.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "("}}
		}, wantErr: `routes[0].match.safe_regex.regex`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			good := func() *Resources {
				return resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "a")), []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL))
			}
			h := newHarness(t, Options{}, good())
			bad := good()
			tc.mutate(bad)
			err := h.dp.Apply(context.Background(), bad)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
			}
			if st, _, _ := h.do(t, "GET", "/", nil, nil); st != 200 {
				t.Fatalf("old config not kept: %d", st)
			}
		})
	}
}

func TestAllowListNamesRealFields(t *testing.T) {
	// Every allow-list entry must name a field that exists, so that a typo
	// cannot silently reject a supported field.
	checkAllowList(t)
}

func TestHotSwapUnderLoad(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	cfg := func(i int) *Resources {
		target := "a"
		if i%2 == 1 {
			target = "b"
		}
		return resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute(fmt.Sprintf("r%d", i), "/", target)),
			[]*cluster.Cluster{edsCluster("a"), edsCluster("b")}, loadAssignment(t, "a", a.URL), loadAssignment(t, "b", b.URL))
	}
	h := newHarness(t, Options{}, cfg(0))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := h.srv.Client().Get(h.srv.URL + "/x")
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	for i := 1; i <= 50; i++ {
		if err := h.dp.Apply(context.Background(), cfg(i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // pacing the swaps, not waiting for readiness
	}
	cancel()
	wg.Wait()
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("%d failed, %d ok requests across 50 swaps", failed.Load(), ok.Load())
	}
}

func TestWarmingHoldsIncompleteConfig(t *testing.T) {
	a := backend(t, "a")
	h := newHarness(t, Options{WarmingTimeout: time.Hour}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "a")),
		[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", a.URL)))
	// The route moves to cluster "new" whose load assignment has not arrived.
	inc := resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "new")),
		[]*cluster.Cluster{edsCluster("a"), edsCluster("new")}, loadAssignment(t, "a", a.URL))
	if err := h.dp.Apply(context.Background(), inc); err != nil {
		t.Fatal(err)
	}
	if st, _, body := h.do(t, "GET", "/", nil, nil); st != 200 || body[:1] != "a" {
		t.Fatalf("incomplete config was swapped in: %d %s", st, body)
	}
	inc.Endpoints["new"] = loadAssignment(t, "new", a.URL)
	if err := h.dp.Apply(context.Background(), inc); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.dp.ConfigDumpHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/config_dump", nil))
	if !strings.Contains(rec.Body.String(), `"new"`) {
		t.Fatalf("config dump lacks the new cluster: %s", rec.Body.String())
	}
}

func TestAccessLog(t *testing.T) {
	be := backend(t, "a")
	var got AccessEntry
	var mu sync.Mutex
	h := newHarness(t, Options{AccessLog: func(_ context.Context, e *AccessEntry) { mu.Lock(); got = *e; mu.Unlock() }},
		resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("pets", "/", "a")), []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))
	h.do(t, "GET", "/pets", map[string]string{"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Authorization": "Bearer secret"}, nil)
	mu.Lock()
	defer mu.Unlock()
	if got.Route != "pets" || got.Cluster != "a" || got.Upstream != hostOf(be.URL) || got.Status != 200 || got.TraceID != "0af7651916cd43dd8448eb211c80319c" || got.BytesSent == 0 {
		t.Fatalf("entry %+v", got)
	}
	if strings.Contains(fmt.Sprintf("%+v", got), "secret") {
		t.Fatal("token in the access entry")
	}
	if v := testutil.ToFloat64(h.dp.metrics.requests.WithLabelValues(testListener, "pets", "a", "200")); v != 1 {
		t.Fatalf("requests metric %v", v)
	}
}
