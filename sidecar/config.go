package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/config"
	"github.com/petmesh/petmesh/internal/telemetry"
)

// Registry backends.
const (
	RegistryBuiltin = "builtin"
	RegistryConsul  = "consul"
	RegistryNone    = "none"
)

// Config is the sidecar's configuration (see README.md for every flag).
type Config struct {
	Service       string
	Instance      string
	Version       string
	AppAddr       string
	AppHealthPath string
	InboundAddr   string
	AdvertiseHost string
	OutboundAddr  string
	AdminAddr     string
	XDSAddr       string
	XDSTokenFile  string
	XDSCAFile     string
	XDSServerName string
	XDSTLS        bool
	XDSDelta      bool
	Bootstrap     string

	Registry              string
	RegistryURL           string
	RegistrationToken     string
	RegistrationTokenFile string
	ConsulAddr            string
	TTL                   time.Duration
	HealthInterval        time.Duration
	HealthTimeout         time.Duration
	UnhealthyThreshold    int
	HealthyThreshold      int

	JWKSURL string
	Issuer  string

	TokenURL         string
	ClientID         string
	ClientSecret     string
	ClientSecretFile string

	DrainTimeout   time.Duration
	DeregisterWait time.Duration
	AccessLog      bool
	AccessLogFlush time.Duration
	LogLevel       string
	Pprof          bool
	CPUs           int
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	idRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	idCleanRE = regexp.MustCompile(`[^A-Za-z0-9._-]+`)
)

func parseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	var c Config
	f := config.New("sidecar", getenv, out)
	f.String(&c.Service, "service", "SIDECAR_SERVICE", "", "service name of the local app (required; a lowercase DNS label such as pets)")
	f.String(&c.Instance, "instance", "SIDECAR_INSTANCE", "", "instance id registered in the registry and used in the xDS node id (default <service>-<host>-<inbound port>)")
	f.String(&c.Version, "version", "SIDECAR_VERSION", "v1", "version tag of the instance (canary subsets such as pets~v2 select on it)")
	f.String(&c.AppAddr, "app-addr", "SIDECAR_APP_ADDR", "", "host:port of the local app, e.g. 127.0.0.1:7001 (required)")
	f.String(&c.AppHealthPath, "app-health-path", "SIDECAR_APP_HEALTH_PATH", "/health", "health endpoint of the app, checked every -health-interval; also the path loopback callers may reach on the inbound listener without a token")
	f.String(&c.InboundAddr, "inbound-addr", "SIDECAR_INBOUND_ADDR", ":15001", "inbound listener (in front of the app; its port is registered)")
	f.String(&c.AdvertiseHost, "advertise-host", "SIDECAR_ADVERTISE_HOST", "", "host registered for the inbound listener (default: the host of -inbound-addr, or 127.0.0.1 when it is empty or unspecified)")
	f.String(&c.OutboundAddr, "outbound-addr", "SIDECAR_OUTBOUND_ADDR", "127.0.0.1:15002", "outbound (egress) listener through which the app calls other services by name")
	f.String(&c.AdminAddr, "admin-addr", "SIDECAR_ADMIN_ADDR", "127.0.0.1:15000", "admin listener: /metrics /healthz /readyz /config_dump POST /quitquitquit")
	f.String(&c.XDSAddr, "xds-addr", "SIDECAR_XDS_ADDR", "127.0.0.1:18000", "control plane xDS (ADS gRPC) address; empty serves only -bootstrap")
	f.String(&c.XDSTokenFile, "xds-token-file", "SIDECAR_XDS_TOKEN_FILE", "", "file holding the xDS token (one of the control plane's -xds-token-file), sent as authorization: Bearer on the ADS stream; re-read when it changes")
	f.String(&c.XDSCAFile, "xds-ca-file", "SIDECAR_XDS_CA_FILE", "", "PEM CA certificate(s) verifying the control plane's xDS TLS certificate; setting it turns TLS on")
	f.String(&c.XDSServerName, "xds-server-name", "SIDECAR_XDS_SERVER_NAME", "", "name checked in the control plane's xDS certificate (default: the host of -xds-addr)")
	f.Bool(&c.XDSTLS, "xds-tls", "SIDECAR_XDS_TLS", false, "use TLS to the control plane with the system roots (implied by -xds-ca-file)")
	f.Bool(&c.XDSDelta, "xds-delta", "SIDECAR_XDS_DELTA", true, "incremental (delta) ADS: only changed resources are sent; false uses the state of the world")
	f.String(&c.Bootstrap, "bootstrap", "SIDECAR_BOOTSTRAP", "", "Envoy v3 bootstrap file (JSON, or YAML for .yaml/.yml) with static listeners and clusters, applied before the control plane answers")
	f.String(&c.Registry, "registry", "SIDECAR_REGISTRY", RegistryBuiltin, "registry backend: builtin (the control plane's API), consul (the local agent) or none")
	f.String(&c.RegistryURL, "registry-url", "SIDECAR_REGISTRY_URL", "http://127.0.0.1:18080", "control plane API base URL of the built-in registry")
	f.String(&c.RegistrationToken, "registration-token", "SIDECAR_REGISTRATION_TOKEN", "", "registration token of the built-in registry (prefer the file or the environment variable: flags show in ps)")
	f.String(&c.RegistrationTokenFile, "registration-token-file", "SIDECAR_REGISTRATION_TOKEN_FILE", "", "file holding the registration token")
	f.String(&c.ConsulAddr, "consul-addr", "SIDECAR_CONSUL_ADDR", "127.0.0.1:8500", "Consul agent HTTP address (-registry consul)")
	f.Duration(&c.TTL, "ttl", "SIDECAR_TTL", 5*time.Second, "registration TTL: without a heartbeat for this long the instance is removed (builtin) or critical (consul); heartbeats go out every min(-health-interval, ttl/3)")
	f.Duration(&c.HealthInterval, "health-interval", "SIDECAR_HEALTH_INTERVAL", 2*time.Second, "how often the app's health endpoint is checked")
	f.Duration(&c.HealthTimeout, "health-timeout", "SIDECAR_HEALTH_TIMEOUT", time.Second, "timeout of one app health check")
	f.Int(&c.UnhealthyThreshold, "unhealthy-threshold", "SIDECAR_UNHEALTHY_THRESHOLD", 3, "consecutive failed (or timed-out) app health checks before a passing app is reported critical (Envoy's unhealthy_threshold)")
	f.Int(&c.HealthyThreshold, "healthy-threshold", "SIDECAR_HEALTHY_THRESHOLD", 2, "consecutive passed app health checks before a critical app is reported passing again (Envoy's healthy_threshold; the first pass at startup is enough)")
	f.String(&c.JWKSURL, "jwks-url", "SIDECAR_JWKS_URL", "", "JWKS URL of -issuer (the edge's /.well-known/jwks.json); when set, tokens of that issuer are verified with keys from here instead of the remote_jwks URI the control plane sends")
	f.String(&c.Issuer, "issuer", "SIDECAR_ISSUER", "", "token issuer (iss) whose keys come from -jwks-url")
	f.String(&c.TokenURL, "token-url", "SIDECAR_TOKEN_URL", "", "edge token endpoint (/auth/token) for the service's own token on egress; empty disables egress identity")
	f.String(&c.ClientID, "client-id", "SIDECAR_CLIENT_ID", "", "service account client_id (default: -service)")
	f.String(&c.ClientSecretFile, "client-secret-file", "SIDECAR_CLIENT_SECRET_FILE", "", "file holding the service account secret, re-read on every token fetch (or set SIDECAR_CLIENT_SECRET)")
	f.Duration(&c.DrainTimeout, "drain-timeout", "SIDECAR_DRAIN_TIMEOUT", 20*time.Second, "how long in-flight requests may take to finish on shutdown, per listener")
	f.Duration(&c.DeregisterWait, "deregister-wait", "SIDECAR_DEREGISTER_WAIT", 3*time.Second, "after deregistering, the longest wait for the removal to reach the proxies (ends early once this sidecar's own xDS endpoints no longer list it) while inbound keeps serving")
	f.Bool(&c.AccessLog, "access-log", "SIDECAR_ACCESS_LOG", true, "log every request as a JSON line (msg \"access\")")
	f.Duration(&c.AccessLogFlush, "access-log-flush-interval", "SIDECAR_ACCESS_LOG_FLUSH_INTERVAL", time.Second, "longest time an access log line waits before it is written (Envoy's access_log_flush_interval); lines are written sooner when 256 are waiting")
	f.String(&c.LogLevel, "log-level", "SIDECAR_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	f.Bool(&c.Pprof, "pprof", "SIDECAR_PPROF", false, "serve /debug/pprof/ on the admin listener")
	f.Int(&c.CPUs, "cpus", "SIDECAR_CPUS", 1, "CPUs the sidecar runs Go code on at once (GOMAXPROCS); 0 keeps the Go default (all CPUs, or $GOMAXPROCS). The default 1, as Linkerd's proxy runs one worker thread, costs about a quarter less CPU per request than 2 (no cross-thread wake-ups) and serves several thousand requests a second; raise it for a busier service")
	if err := f.Parse(args); err != nil {
		return c, err
	}
	if getenv != nil {
		c.ClientSecret = getenv("SIDECAR_CLIENT_SECRET")
	}
	if c.RegistrationTokenFile != "" {
		b, err := os.ReadFile(c.RegistrationTokenFile)
		if err != nil {
			return c, fmt.Errorf("-registration-token-file: %w", err)
		}
		c.RegistrationToken = strings.TrimSpace(string(b))
	}
	if c.ClientID == "" {
		c.ClientID = c.Service
	}
	return c, c.Validate()
}

// Validate checks the configuration; errors name the flag.
func (c Config) Validate() error {
	var errs []error
	if !nameRE.MatchString(c.Service) {
		errs = append(errs, fmt.Errorf("-service: want a lowercase DNS label such as pets, got %q", c.Service))
	}
	if c.Instance != "" && !idRE.MatchString(c.Instance) {
		errs = append(errs, fmt.Errorf("-instance: want letters, digits, '.', '_' or '-' (at most 128), got %q", c.Instance))
	}
	if !idRE.MatchString(c.Version) || len(c.Version) > 63 {
		errs = append(errs, fmt.Errorf("-version: want letters, digits, '.', '_' or '-', got %q", c.Version))
	}
	if _, port, err := net.SplitHostPort(c.AppAddr); err != nil || port == "" || port == "0" {
		errs = append(errs, fmt.Errorf("-app-addr: want host:port of the local app, got %q", c.AppAddr))
	} else if _, err := strconv.Atoi(port); err != nil {
		errs = append(errs, fmt.Errorf("-app-addr: numeric port required, got %q", c.AppAddr))
	}
	if !strings.HasPrefix(c.AppHealthPath, "/") {
		errs = append(errs, fmt.Errorf("-app-health-path: want an absolute path such as /health, got %q", c.AppHealthPath))
	}
	for _, a := range []struct{ flag, v string }{{"-inbound-addr", c.InboundAddr}, {"-outbound-addr", c.OutboundAddr}, {"-admin-addr", c.AdminAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			errs = append(errs, fmt.Errorf("%s: want host:port, got %q", a.flag, a.v))
		}
	}
	if c.XDSAddr == "" && c.Bootstrap == "" {
		errs = append(errs, errors.New("-xds-addr: required unless -bootstrap is set"))
	}
	switch c.Registry {
	case RegistryBuiltin:
		if u, err := url.Parse(c.RegistryURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("-registry-url: want the control plane API base URL such as http://127.0.0.1:18080, got %q", c.RegistryURL))
		}
		if c.RegistrationToken == "" {
			errs = append(errs, errors.New("-registration-token-file: a registration token is required with -registry builtin (or set SIDECAR_REGISTRATION_TOKEN)"))
		}
	case RegistryConsul:
		if c.ConsulAddr == "" {
			errs = append(errs, errors.New("-consul-addr: required with -registry consul"))
		}
	case RegistryNone:
	default:
		errs = append(errs, fmt.Errorf("-registry: want builtin, consul or none, got %q", c.Registry))
	}
	if c.TTL < registry.MinTTL || c.TTL > registry.MaxTTL {
		errs = append(errs, fmt.Errorf("-ttl: want between %v and %v, got %v", registry.MinTTL, registry.MaxTTL, c.TTL))
	}
	if c.HealthInterval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("-health-interval: want at least 10ms, got %v", c.HealthInterval))
	}
	if c.HealthTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-health-timeout: must be positive, got %v", c.HealthTimeout))
	}
	if c.UnhealthyThreshold < 1 || c.UnhealthyThreshold > 100 {
		errs = append(errs, fmt.Errorf("-unhealthy-threshold: want 1 to 100 consecutive failures, got %d", c.UnhealthyThreshold))
	}
	if c.HealthyThreshold < 1 || c.HealthyThreshold > 100 {
		errs = append(errs, fmt.Errorf("-healthy-threshold: want 1 to 100 consecutive passes, got %d", c.HealthyThreshold))
	}
	if (c.JWKSURL == "") != (c.Issuer == "") {
		errs = append(errs, errors.New("-jwks-url and -issuer: set both or neither"))
	}
	if c.JWKSURL != "" {
		if u, err := url.Parse(c.JWKSURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("-jwks-url: want an absolute http(s) URL, got %q", c.JWKSURL))
		}
	}
	if c.TokenURL != "" {
		if u, err := url.Parse(c.TokenURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("-token-url: want an absolute http(s) URL such as http://127.0.0.1:8080/auth/token, got %q", c.TokenURL))
		}
		if (c.ClientSecret == "") == (c.ClientSecretFile == "") {
			errs = append(errs, errors.New("-client-secret-file: with -token-url set exactly one of -client-secret-file and SIDECAR_CLIENT_SECRET"))
		}
	}
	if c.AccessLogFlush < time.Millisecond || c.AccessLogFlush > time.Minute {
		errs = append(errs, fmt.Errorf("-access-log-flush-interval: want between 1ms and 1m, got %v", c.AccessLogFlush))
	}
	if c.DrainTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-drain-timeout: must be positive, got %v", c.DrainTimeout))
	}
	if c.DeregisterWait < 0 {
		errs = append(errs, fmt.Errorf("-deregister-wait: must not be negative, got %v", c.DeregisterWait))
	}
	if c.CPUs < 0 || c.CPUs > 1024 {
		errs = append(errs, fmt.Errorf("-cpus: want 0 (Go default) to 1024, got %d", c.CPUs))
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %w", err))
	}
	return errors.Join(errs...)
}

// appPort is the numeric port of -app-addr (validated).
func (c Config) appPort() int {
	_, p, _ := net.SplitHostPort(c.AppAddr)
	n, _ := strconv.Atoi(p)
	return n
}

// advertiseHost is the host registered for the inbound listener.
func (c Config) advertiseHost() string {
	if c.AdvertiseHost != "" {
		return c.AdvertiseHost
	}
	h, _, _ := net.SplitHostPort(c.InboundAddr)
	if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
		return "127.0.0.1"
	}
	return h
}

// defaultInstance is the instance id when -instance is not set.
func defaultInstance(service string, inboundPort int) string {
	host, _ := os.Hostname()
	host = strings.Trim(idCleanRE.ReplaceAllString(host, "-"), "-")
	if host == "" {
		return fmt.Sprintf("%s-%d", service, inboundPort)
	}
	id := fmt.Sprintf("%s-%s-%d", service, host, inboundPort)
	if len(id) > 128 {
		id = id[:128]
	}
	return id
}
