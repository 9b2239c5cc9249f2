package translate

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

func u32(v int) *wrapperspb.UInt32Value { return wrapperspb.UInt32(uint32(v)) }

func durOr(d *routes.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.Std()
}

func intOr(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// edsCluster builds the EDS cluster name of service svc (version subset
// when version is set) with the service's policies. Proxyless clusters
// carry no active health checks (gRPC clients ignore them).
func edsCluster(name, svc, version string, p routes.Service, proxyless bool) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: resource.ADS(), ServiceName: name},
		ConnectTimeout:       resource.Duration(durOr(p.ConnectTimeout, DefaultConnectTimeout)),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
	}
	if p.LB == "least_request" {
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	}
	if cb := p.CircuitBreaker; cb != nil {
		th := &clusterv3.CircuitBreakers_Thresholds{Priority: core.RoutingPriority_DEFAULT}
		if cb.MaxConnections > 0 {
			th.MaxConnections = u32(cb.MaxConnections)
		}
		if cb.MaxPending > 0 {
			th.MaxPendingRequests = u32(cb.MaxPending)
		}
		if cb.MaxRequests > 0 {
			th.MaxRequests = u32(cb.MaxRequests)
		}
		if cb.MaxRetries > 0 {
			th.MaxRetries = u32(cb.MaxRetries)
		}
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	}
	if od := p.OutlierDetection; od != nil {
		o := &clusterv3.OutlierDetection{
			Consecutive_5Xx:    u32(intOr(od.Consecutive5xx, DefaultConsecutive5xx)),
			Interval:           resource.Duration(durOr(od.Interval, DefaultODInterval)),
			BaseEjectionTime:   resource.Duration(durOr(od.BaseEjectionTime, DefaultBaseEjection)),
			MaxEjectionPercent: u32(DefaultMaxEjectionPct),
		}
		if od.MaxEjectionPercent != nil {
			o.MaxEjectionPercent = u32(*od.MaxEjectionPercent)
		}
		if od.ConsecutiveGatewayErrors > 0 {
			o.ConsecutiveGatewayFailure = u32(od.ConsecutiveGatewayErrors)
			// Envoy enforces gateway-failure ejection 0% of the time by
			// default; the route table means "eject".
			o.EnforcingConsecutiveGatewayFailure = u32(100)
		}
		c.OutlierDetection = o
	}
	if hc := p.HealthCheck; hc != nil && !proxyless {
		c.HealthChecks = []*core.HealthCheck{{
			Timeout:            resource.Duration(durOr(hc.Timeout, DefaultHCTimeout)),
			Interval:           resource.Duration(durOr(hc.Interval, DefaultHCInterval)),
			HealthyThreshold:   u32(intOr(hc.HealthyThreshold, DefaultHealthyThresh)),
			UnhealthyThreshold: u32(intOr(hc.UnhealthyThreshold, DefaultUnhealthyThresh)),
			HealthChecker: &core.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &core.HealthCheck_HttpHealthCheck{
				Path: hc.Path,
			}},
		}}
	}
	md := map[string]any{resource.ClusterMetaService: svc}
	if version != "" {
		md[resource.ClusterMetaVersion] = version
	}
	if p.Cache != nil {
		md[resource.ClusterMetaCacheTTL] = p.Cache.TTL.String()
	}
	c.Metadata = resource.Metadata(md)
	return c
}

// commonLbConfig carries the service's healthy panic threshold, always
// explicit (DefaultPanicThreshold, Envoy's 50%, when the table leaves it
// out; 0 disables panic mode): below that share of healthy endpoints
// the proxy balances over every endpoint instead of piling the load on
// the few healthy ones.
func commonLbConfig(p routes.Service) *clusterv3.Cluster_CommonLbConfig {
	pct := DefaultPanicThreshold
	if p.PanicThreshold != nil {
		pct = *p.PanicThreshold
	}
	return &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: pct}}
}

// healthStatus maps registry health to Envoy's.
func healthStatus(h Health) core.HealthStatus {
	switch h {
	case HealthPassing:
		return core.HealthStatus_HEALTHY
	case HealthWarning:
		return core.HealthStatus_DEGRADED
	case HealthCritical:
		return core.HealthStatus_UNHEALTHY
	case HealthDraining:
		return core.HealthStatus_DRAINING
	}
	return core.HealthStatus_UNKNOWN
}

// loadAssignment lists the instances (of one version when version is set)
// in one locality with weight >= 1; every endpoint has weight 1 and its
// health status. Unhealthy endpoints are kept so the data plane can report
// them; it balances over healthy ones.
func loadAssignment(name string, instances []Instance, version string) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	var eps []*endpointv3.LbEndpoint
	for _, i := range instances {
		if version != "" && i.Version != version {
			continue
		}
		md := map[string]any{"instance": i.ID}
		if i.Version != "" {
			md["version"] = i.Version
		}
		eps = append(eps, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address:  socketAddress(i.Address, i.Port),
				Hostname: i.ID,
			}},
			HealthStatus:        healthStatus(i.Health),
			LoadBalancingWeight: u32(1),
			Metadata:            resource.Metadata(md),
		})
	}
	if len(eps) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{
			Locality:            &core.Locality{Region: "petmesh"},
			LbEndpoints:         eps,
			LoadBalancingWeight: u32(len(eps)),
		}}
	}
	return cla
}

func socketAddress(host string, port int) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Protocol:      core.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

// staticCluster is a STATIC cluster with one endpoint.
func staticCluster(name, host string, port int, connect time.Duration) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       resource.Duration(connect),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)}},
			}}}},
		},
	}
}

// localAppCluster is a sidecar's cluster to its app; the service's
// bulkhead is its circuit breaker max_requests.
func localAppCluster(port int, p routes.Service) *clusterv3.Cluster {
	c := staticCluster(resource.ClusterLocalApp, "127.0.0.1", port, durOr(p.ConnectTimeout, DefaultConnectTimeout))
	if b := p.Bulkhead; b != nil {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:    core.RoutingPriority_DEFAULT,
			MaxRequests: u32(b.MaxConcurrent),
		}}}
	}
	return c
}

// edgeLocalCluster is the cluster of routes the edge serves itself.
func (in *input) edgeLocalCluster() (*clusterv3.Cluster, error) {
	addr := in.opts.EdgeLocalAddress
	if addr == "" {
		addr = "127.0.0.1:" + strconv.Itoa(DefaultEdgePort)
	}
	host, port, err := splitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("edge local address: %w", err)
	}
	return staticCluster(resource.ClusterEdgeLocal, host, port, DefaultConnectTimeout), nil
}

// jwksClusters are the clusters remote JWKS are fetched through.
func (in *input) jwksClusters() ([]*clusterv3.Cluster, error) {
	var cs []*clusterv3.Cluster
	for _, p := range in.opts.JWTProviders {
		if p.LocalJWKS != "" || p.JWKSURI == "" {
			continue
		}
		u, err := url.Parse(p.JWKSURI)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("jwt provider %q: bad jwks uri %q", p.Name, p.JWKSURI)
		}
		hostport := u.Host
		if u.Port() == "" {
			if u.Scheme == "https" {
				hostport += ":443"
			} else {
				hostport += ":80"
			}
		}
		host, port, err := splitHostPort(hostport)
		if err != nil {
			return nil, fmt.Errorf("jwt provider %q: %w", p.Name, err)
		}
		c := staticCluster(resource.JWKSCluster(p.Name), host, port, DefaultConnectTimeout)
		if net.ParseIP(host) == nil {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}
		}
		cs = append(cs, c)
	}
	return cs, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("address %q: bad port", addr)
	}
	return host, port, nil
}
