package edge

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/petmesh/petmesh/internal/config"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Config is the edge's configuration (flags and EDGE_* variables).
type Config struct {
	Addr                string
	AdminAddr           string
	TLSCert, TLSKey     string
	XDSAddr             string
	XDSTokenFile        string
	XDSCAFile           string
	XDSServerName       string
	XDSTLS              bool
	XDSDelta            bool
	NodeID              string
	Bootstrap           string
	UsersFile           string
	ServiceAccountsFile string
	KeysDir             string
	KeyRotation         time.Duration
	TokenTTL            time.Duration
	Issuer              string
	Audience            []string
	StatsURL            string
	StatsDirect         bool
	MaxConcurrent       int
	MaxHeaderBytes      int
	ReadHeaderTimeout   time.Duration
	MaxBody             int64
	RouteMaxBody        []string
	TrustedProxies      []string
	CORSAllowedOrigins  []string
	CORSAllowedMethods  []string
	CORSAllowedHeaders  []string
	CORSMaxAge          time.Duration
	AccessLog           bool
	ShutdownTimeout     time.Duration
	LogLevel            string

	trusted []netip.Prefix
	// traceSpans: an OTLP trace exporter is configured (OTEL_* variables,
	// as telemetry.Setup decides), so the data plane records spans.
	traceSpans  bool
	routeLimits []routeLimit
}

// defaultReadHeaderTimeout bounds how long a client may take to send a
// request's header block.
const defaultReadHeaderTimeout = 5 * time.Second

// routeLimit is a body limit for the paths under a prefix (-route-max-body).
type routeLimit struct {
	prefix string
	max    int64
}

func defaultNodeID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "edge"
	}
	return resource.EdgeNodeID(h)
}

// ParseConfig reads flags and EDGE_* variables and validates them.
func ParseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	var c Config
	var maxBody int
	f := config.New("edge", getenv, out)
	f.String(&c.Addr, "addr", "EDGE_ADDR", ":8080", "public listener (HTTP, or HTTPS with -tls-cert/-tls-key)")
	f.String(&c.AdminAddr, "admin-addr", "EDGE_ADMIN_ADDR", "127.0.0.1:8081", "admin listener: /metrics /healthz /readyz /config_dump /debug/pprof/")
	f.String(&c.TLSCert, "tls-cert", "EDGE_TLS_CERT", "", "PEM certificate file; with -tls-key the public listener serves HTTPS and HTTP/2")
	f.String(&c.TLSKey, "tls-key", "EDGE_TLS_KEY", "", "PEM private key file of -tls-cert")
	f.String(&c.XDSAddr, "xds-addr", "EDGE_XDS_ADDR", "127.0.0.1:18000", "control plane ADS address (host:port); empty: only -bootstrap")
	f.String(&c.XDSTokenFile, "xds-token-file", "EDGE_XDS_TOKEN_FILE", "", "file holding the xDS token (one of the control plane's -xds-token-file), sent as authorization: Bearer on the ADS stream; re-read when it changes")
	f.String(&c.XDSCAFile, "xds-ca-file", "EDGE_XDS_CA_FILE", "", "PEM CA certificate(s) verifying the control plane's xDS TLS certificate; setting it turns TLS on")
	f.String(&c.XDSServerName, "xds-server-name", "EDGE_XDS_SERVER_NAME", "", "name checked in the control plane's xDS certificate (default: the host of -xds-addr)")
	f.Bool(&c.XDSTLS, "xds-tls", "EDGE_XDS_TLS", false, "use TLS to the control plane with the system roots (implied by -xds-ca-file)")
	f.Bool(&c.XDSDelta, "xds-delta", "EDGE_XDS_DELTA", true, "incremental (delta) ADS: only changed resources are sent; false uses the state of the world")
	f.String(&c.NodeID, "node-id", "EDGE_NODE_ID", defaultNodeID(), "xDS node id, edge~<instance>")
	f.String(&c.Bootstrap, "bootstrap", "EDGE_BOOTSTRAP", "", "Envoy v3 bootstrap file (JSON or YAML) with static resources, served before and merged under the control plane's")
	f.String(&c.UsersFile, "users-file", "EDGE_USERS_FILE", "", "users file (YAML, or JSON for .json) with bcrypt hashes and roles for POST /auth/token")
	f.String(&c.ServiceAccountsFile, "service-accounts-file", "EDGE_SERVICE_ACCOUNTS_FILE", "", "service accounts file for grant_type=client_credentials")
	f.String(&c.KeysDir, "keys-dir", "EDGE_KEYS_DIR", "./edge-keys", "directory of the ES256 signing keys (0700; 0600 files generated at first start)")
	f.Duration(&c.KeyRotation, "key-rotation", "EDGE_KEY_ROTATION", jwtauth.DefaultRotationInterval, "how long a signing key signs before the next one takes over")
	f.Duration(&c.TokenTTL, "token-ttl", "EDGE_TOKEN_TTL", jwtauth.DefaultTokenTTL, "lifetime of issued tokens (at most 1h)")
	f.String(&c.Issuer, "issuer", "EDGE_ISSUER", "http://127.0.0.1:8080", "iss of issued tokens; the control plane's -issuer must be the same")
	f.StringList(&c.Audience, "audience", "EDGE_AUDIENCE", "petmesh", "aud of issued tokens (comma-separated)")
	f.String(&c.StatsURL, "stats-url", "EDGE_STATS_URL", "", "base URL of stats; access events are POSTed to <url>/events; empty disables")
	f.Bool(&c.StatsDirect, "stats-direct", "EDGE_STATS_DIRECT", true, "stats is reached directly (no sidecar): also send X-Petmesh-Subject/-Roles beside the bearer token")
	f.Int(&c.MaxConcurrent, "max-concurrent", "EDGE_MAX_CONCURRENT", 10000, "requests in flight on the public listener; more are shed with 503 (0: unlimited)")
	f.Int(&c.MaxHeaderBytes, "max-header-bytes", "EDGE_MAX_HEADER_BYTES", 64<<10, "largest request header block in bytes (431 above)")
	f.Duration(&c.ReadHeaderTimeout, "read-header-timeout", "EDGE_READ_HEADER_TIMEOUT", defaultReadHeaderTimeout, "time a client has to send a request's whole header block (slow-loris bound)")
	f.Int(&maxBody, "max-body", "EDGE_MAX_BODY", 10<<20, "largest request body in bytes (413 above; 0: unlimited)")
	f.StringList(&c.RouteMaxBody, "route-max-body", "EDGE_ROUTE_MAX_BODY", "", "body limits per path prefix, prefix=bytes (comma-separated, longest prefix wins), e.g. /auth/=65536,/pets=1048576")
	f.StringList(&c.TrustedProxies, "trusted-proxies", "EDGE_TRUSTED_PROXIES", "", "CIDRs of proxies in front of the edge whose X-Forwarded-For is trusted (comma-separated)")
	f.StringList(&c.CORSAllowedOrigins, "cors-allowed-origins", "EDGE_CORS_ALLOWED_ORIGINS", "", "origins allowed to call the edge from a browser (scheme://host[:port], comma-separated, or *); empty: CORS closed")
	f.StringList(&c.CORSAllowedMethods, "cors-allowed-methods", "EDGE_CORS_ALLOWED_METHODS", "GET,HEAD,POST,PUT,PATCH,DELETE", "methods allowed in CORS requests")
	f.StringList(&c.CORSAllowedHeaders, "cors-allowed-headers", "EDGE_CORS_ALLOWED_HEADERS", "Authorization,Content-Type,X-Request-Id", "request headers allowed in CORS requests")
	f.Duration(&c.CORSMaxAge, "cors-max-age", "EDGE_CORS_MAX_AGE", 10*time.Minute, "how long browsers may cache a preflight answer")
	f.Bool(&c.AccessLog, "access-log", "EDGE_ACCESS_LOG", true, "write one JSON access-log line per request to stderr")
	f.Duration(&c.ShutdownTimeout, "shutdown-timeout", "EDGE_SHUTDOWN_TIMEOUT", 20*time.Second, "how long in-flight requests may drain on SIGTERM")
	f.String(&c.LogLevel, "log-level", "EDGE_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	if err := f.Parse(args); err != nil {
		return c, err
	}
	c.MaxBody = int64(maxBody)
	c.traceSpans = telemetry.TracesExported(getenv)
	return c, c.Validate()
}

// Validate checks the configuration; every error names its flag.
func (c *Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("-addr: required"))
	}
	if c.AdminAddr == "" {
		errs = append(errs, errors.New("-admin-addr: required"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("-tls-cert and -tls-key: set both or neither"))
	}
	if c.XDSAddr == "" && c.Bootstrap == "" {
		errs = append(errs, errors.New("-xds-addr or -bootstrap: at least one is required"))
	}
	if id, err := resource.ParseNodeID(c.NodeID); err != nil || id.Kind != resource.KindEdge {
		errs = append(errs, fmt.Errorf("-node-id: want edge~<instance>, got %q", c.NodeID))
	}
	if c.KeysDir == "" {
		errs = append(errs, errors.New("-keys-dir: required"))
	}
	if c.KeyRotation < time.Hour {
		errs = append(errs, fmt.Errorf("-key-rotation: at least 1h, got %v", c.KeyRotation))
	}
	if c.TokenTTL < time.Minute || c.TokenTTL > jwtauth.DefaultMaxTokenLifetime {
		errs = append(errs, fmt.Errorf("-token-ttl: between 1m and %v, got %v", jwtauth.DefaultMaxTokenLifetime, c.TokenTTL))
	}
	if c.Issuer == "" {
		errs = append(errs, errors.New("-issuer: required"))
	}
	if len(c.Audience) == 0 {
		errs = append(errs, errors.New("-audience: at least one audience is required"))
	}
	if c.StatsURL != "" {
		u, err := url.Parse(c.StatsURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("-stats-url: want an http(s) URL, got %q", c.StatsURL))
		}
	}
	if c.MaxConcurrent < 0 {
		errs = append(errs, fmt.Errorf("-max-concurrent: must not be negative, got %d", c.MaxConcurrent))
	}
	if c.MaxHeaderBytes < 4096 {
		errs = append(errs, fmt.Errorf("-max-header-bytes: at least 4096, got %d", c.MaxHeaderBytes))
	}
	if c.MaxBody < 0 {
		errs = append(errs, fmt.Errorf("-max-body: must not be negative, got %d", c.MaxBody))
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if c.ReadHeaderTimeout < 0 || c.ReadHeaderTimeout > time.Minute {
		errs = append(errs, fmt.Errorf("-read-header-timeout: between 0 and 1m, got %v", c.ReadHeaderTimeout))
	}
	c.routeLimits = nil
	for _, s := range c.RouteMaxBody {
		prefix, n, ok := strings.Cut(strings.TrimSpace(s), "=")
		max, err := strconv.ParseInt(n, 10, 64)
		if !ok || !strings.HasPrefix(prefix, "/") || err != nil || max < 0 {
			errs = append(errs, fmt.Errorf("-route-max-body: want /prefix=bytes, got %q", s))
			continue
		}
		c.routeLimits = append(c.routeLimits, routeLimit{prefix: prefix, max: max})
	}
	slices.SortStableFunc(c.routeLimits, func(a, b routeLimit) int { return len(b.prefix) - len(a.prefix) })
	for _, o := range c.CORSAllowedOrigins {
		if o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil || strings.ToLower(o) != o {
			errs = append(errs, fmt.Errorf("-cors-allowed-origins: want * or a lowercase scheme://host[:port] origin, got %q", o))
		}
	}
	for _, m := range c.CORSAllowedMethods {
		if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, " ,") {
			errs = append(errs, fmt.Errorf("-cors-allowed-methods: want upper-case method names, got %q", m))
		}
	}
	for _, h := range c.CORSAllowedHeaders {
		if h == "" || strings.ContainsAny(h, " ,:") {
			errs = append(errs, fmt.Errorf("-cors-allowed-headers: want header names, got %q", h))
		}
	}
	if c.CORSMaxAge < 0 || c.CORSMaxAge > 24*time.Hour {
		errs = append(errs, fmt.Errorf("-cors-max-age: between 0 and 24h, got %v", c.CORSMaxAge))
	}
	c.trusted = nil
	for _, s := range c.TrustedProxies {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				errs = append(errs, fmt.Errorf("-trusted-proxies: %q is not a CIDR or an IP address", s))
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		c.trusted = append(c.trusted, p.Masked())
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-shutdown-timeout: must be positive, got %v", c.ShutdownTimeout))
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %w", err))
	}
	return errors.Join(errs...)
}
