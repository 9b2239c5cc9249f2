package edge

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"

	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Edge-local paths, served by the edge itself behind the edge_local cluster.
const (
	PathToken = "/auth/token"
	PathJWKS  = "/.well-known/jwks.json"
)

// newLocalHandler serves the edge-local endpoints: POST /auth/token and
// GET /.well-known/jwks.json. The data plane reaches it through the
// edge_local cluster (a loopback listener), so the route table's policies
// (rate limits, auth optional) apply before it.
func newLocalHandler(cfg *Config, issuer *jwtauth.Issuer, log *slog.Logger) (http.Handler, error) {
	mux := http.NewServeMux()
	var users, accounts *jwtauth.Credentials
	var err error
	if cfg.UsersFile != "" {
		if users, err = jwtauth.LoadUsers(cfg.UsersFile); err != nil {
			return nil, fmt.Errorf("-users-file: %w", err)
		}
	}
	if cfg.ServiceAccountsFile != "" {
		if accounts, err = jwtauth.LoadServiceAccounts(cfg.ServiceAccountsFile); err != nil {
			return nil, fmt.Errorf("-service-accounts-file: %w", err)
		}
	}
	if users != nil || accounts != nil {
		th, err := jwtauth.NewTokenHandler(jwtauth.TokenHandlerConfig{
			Issuer: issuer, Users: users, ServiceAccounts: accounts,
			ClientIP: forwardedClientIP, Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("token endpoint: %w", err)
		}
		mux.Handle(PathToken, httpx.MaxBody(64<<10)(th))
	} else {
		mux.Handle(PathToken, httpx.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			return &httpx.Error{Status: http.StatusNotFound, Code: httpx.CodeNotFound, Message: "no users or service accounts configured"}
		}))
	}
	mux.Handle(PathJWKS, issuer.Keys().JWKSHandler())
	mux.Handle("/", httpx.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error {
		return httpx.NotFound("no edge-local handler for %s", r.URL.Path)
	}))
	return httpx.Chain(mux, httpx.Recover(log)), nil
}

// forwardedClientIP is the client address of a request on the edge-local
// listener. That listener is only reached through the edge's own data plane
// over loopback, which sets X-Forwarded-For to the client address it
// resolved (the front handler already applied -trusted-proxies); any other
// peer is taken at its word of RemoteAddr.
func forwardedClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			parts := strings.Split(xff[len(xff)-1], ",")
			if ip := strings.TrimSpace(parts[len(parts)-1]); ip != "" {
				return ip
			}
		}
	}
	return host
}

// pointEdgeLocal replaces the endpoints of the edge_local cluster (the
// control plane's -edge-local-addr, by default the edge's public port,
// which would loop) with the edge-local listener of this process.
func pointEdgeLocal(res *dataplane.Resources, addr netip.AddrPort) {
	c, ok := res.Clusters[resource.ClusterEdgeLocal]
	if !ok {
		return
	}
	nc := proto.Clone(c).(*clusterv3.Cluster)
	nc.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	nc.EdsClusterConfig = nil
	nc.HealthChecks = nil
	nc.LoadAssignment = &endpointv3.ClusterLoadAssignment{
		ClusterName: resource.ClusterEdgeLocal,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       addr.Addr().String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(addr.Port())},
				}}},
			}},
		}}}},
	}
	clusters := make(map[string]*clusterv3.Cluster, len(res.Clusters))
	for k, v := range res.Clusters {
		clusters[k] = v
	}
	clusters[resource.ClusterEdgeLocal] = nc
	res.Clusters = clusters
	if _, ok := res.Endpoints[resource.ClusterEdgeLocal]; ok {
		eps := make(map[string]*endpointv3.ClusterLoadAssignment, len(res.Endpoints))
		for k, v := range res.Endpoints {
			if k != resource.ClusterEdgeLocal {
				eps[k] = v
			}
		}
		res.Endpoints = eps
	}
}

// serviceToken is the edge's own token (subject "edge"), minted in-process
// and renewed when less than a third of its lifetime is left.
type serviceToken struct {
	issuer *jwtauth.Issuer
	mu     sync.Mutex
	tok    jwtauth.Token
	now    func() time.Time
}

// Get returns a valid service token.
func (s *serviceToken) Get() (string, error) {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok.Raw != "" && now().Add(s.issuer.TTL()/3).Before(s.tok.ExpiresAt) {
		return s.tok.Raw, nil
	}
	t, err := s.issuer.Issue(ServiceSubject, ServiceRoles)
	if err != nil {
		return "", fmt.Errorf("service token: %w", err)
	}
	s.tok = t
	return t.Raw, nil
}

// HashPasswordCommand implements "edge hash-password [-cost N]": it reads
// one password line from stdin and prints its bcrypt hash for a users or
// service accounts file.
func HashPasswordCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edge hash-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cost := fs.Int("cost", jwtauth.DefaultBcryptCost, fmt.Sprintf("bcrypt cost (at least %d)", jwtauth.MinBcryptCost))
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: edge hash-password [-cost N] < password-file   (reads one line from stdin)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read password: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return errors.New("read password: empty password on stdin")
	}
	h, err := jwtauth.HashPassword(pw, *cost)
	if err != nil {
		return fmt.Errorf("-cost: %w", err)
	}
	_, err = fmt.Fprintln(stdout, h)
	return err
}
