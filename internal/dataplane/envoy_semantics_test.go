package dataplane

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	tu "github.com/petmesh/petmesh/internal/testutil"
)

// TestDegradedEndpointsAreAFallback: as in Envoy, DEGRADED endpoints get
// traffic only while no healthy endpoint is available.
func TestDegradedEndpointsAreAFallback(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	cla := loadAssignment(t, "c", a.URL, b.URL)
	cla.Endpoints[0].LbEndpoints[1].HealthStatus = core.HealthStatus_DEGRADED
	res := resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "c")), []*cluster.Cluster{edsCluster("c")}, cla)
	h := newHarness(t, Options{}, res)
	for i := range 10 {
		if _, _, body := h.do(t, "GET", "/", nil, nil); body[:1] != "a" {
			t.Fatalf("request %d went to %q while a healthy endpoint is available", i, body)
		}
	}
	cla = loadAssignment(t, "c", a.URL, b.URL)
	cla.Endpoints[0].LbEndpoints[0].HealthStatus = core.HealthStatus_UNHEALTHY
	cla.Endpoints[0].LbEndpoints[1].HealthStatus = core.HealthStatus_DEGRADED
	res.Endpoints["c"] = cla
	if err := h.dp.Apply(t.Context(), res); err != nil {
		t.Fatal(err)
	}
	if st, _, body := h.do(t, "GET", "/", nil, nil); st != 200 || body[:1] != "b" {
		t.Fatalf("got %d %q, want the degraded endpoint when nothing healthy is left", st, body)
	}
}

// TestHealthCheckHostIsClusterName: as in Envoy, an active health check
// sends the cluster name as Host unless http_health_check.host is set.
func TestHealthCheckHostIsClusterName(t *testing.T) {
	for _, tc := range []struct{ desc, cluster, host, want string }{
		{desc: "subset cluster name", cluster: "pets~v2", want: "pets~v2"},
		{desc: "explicit host", cluster: "pets", host: "pets.internal", want: "pets.internal"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			var mu sync.Mutex
			var hosts []string
			be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				hosts = append(hosts, r.Host)
				mu.Unlock()
			}))
			defer be.Close()
			c := edsCluster(tc.cluster)
			c.HealthChecks = []*core.HealthCheck{{Interval: durationpb.New(20 * time.Millisecond), Timeout: durationpb.New(time.Second),
				UnhealthyThreshold: wrapperspb.UInt32(1), HealthyThreshold: wrapperspb.UInt32(1),
				HealthChecker: &core.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &core.HealthCheck_HttpHealthCheck{Path: "/healthz", Host: tc.host}}}}
			newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", tc.cluster)),
				[]*cluster.Cluster{c}, loadAssignment(t, tc.cluster, be.URL)))
			tu.Eventually(t, 5*time.Second, func() error {
				mu.Lock()
				defer mu.Unlock()
				if len(hosts) == 0 || hosts[0] != tc.want {
					return fmt.Errorf("health check hosts %q, want %q", hosts, tc.want)
				}
				return nil
			})
		})
	}
}
