// Package controlplane wires the petmesh control plane: the route store
// (file or Consul KV), the registry (built-in or Consul), the xDS server
// (controlplane/xds) and the REST API (controlplane/api). Run is the
// whole binary; README.md documents every flag.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/petmesh/petmesh/controlplane/api"
	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/store"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/internal/config"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Config is the control plane's configuration.
type Config struct {
	XDSAddr               string
	XDSTokenFile          string
	XDSTLSCertFile        string
	XDSTLSKeyFile         string
	APIAddr               string
	Registry              string
	ConsulAddr            string
	Store                 string
	StoreDir              string
	ConsulPrefix          string
	JWKSURL               string
	JWKSFile              string
	Issuer                string
	Audience              []string
	InsecureNoAuth        bool
	MeshJWKSURL           string
	JWTQueryParam         string
	OmitResilienceFields  bool
	EdgeLocalAddr         string
	RegistrationTokenFile string
	RegistrationToken     string
	InitialTable          string
	DebounceQuiet         time.Duration
	DebounceMax           time.Duration
	NodeGrace             time.Duration
	StaleAfter            time.Duration
	RegistryTTL           time.Duration
	RegistryStateFile     string
	LogLevel              string
	ShutdownTimeout       time.Duration
}

func parseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	var c Config
	f := config.New("controlplane", getenv, out)
	f.String(&c.XDSAddr, "xds-addr", "CONTROLPLANE_XDS_ADDR", ":18000", "xDS (ADS gRPC) listen address")
	f.String(&c.XDSTokenFile, "xds-token-file", "CONTROLPLANE_XDS_TOKEN_FILE", "", "file of accepted xDS tokens, one per line ('#' comments), each at least 16 characters; when set every ADS stream needs authorization: Bearer <token> (re-read when it changes); empty: xDS is unauthenticated (a warning is logged)")
	f.String(&c.XDSTLSCertFile, "xds-tls-cert-file", "CONTROLPLANE_XDS_TLS_CERT_FILE", "", "PEM certificate (chain) of the xDS listener; with -xds-tls-key-file serves xDS over TLS (re-read when it changes)")
	f.String(&c.XDSTLSKeyFile, "xds-tls-key-file", "CONTROLPLANE_XDS_TLS_KEY_FILE", "", "PEM private key of -xds-tls-cert-file")
	f.String(&c.APIAddr, "api-addr", "CONTROLPLANE_API_ADDR", "127.0.0.1:18080", "REST API listen address (also /metrics, /healthz, /readyz, /openapi.json, /v1/registry/...)")
	f.String(&c.Registry, "registry", "CONTROLPLANE_REGISTRY", "builtin", "service registry: builtin or consul")
	f.String(&c.ConsulAddr, "consul-addr", "CONTROLPLANE_CONSUL_ADDR", "127.0.0.1:8500", "Consul agent HTTP address (for -registry consul and -store consul)")
	f.String(&c.Store, "store", "CONTROLPLANE_STORE", "file", "route table store: file or consul")
	f.String(&c.StoreDir, "store-dir", "CONTROLPLANE_STORE_DIR", "./controlplane-data", "directory of the file store")
	f.String(&c.ConsulPrefix, "consul-prefix", "CONTROLPLANE_CONSUL_PREFIX", store.DefaultConsulPrefix, "Consul KV prefix of the Consul store")
	f.String(&c.JWKSURL, "jwks-url", "CONTROLPLANE_JWKS_URL", "", "JWKS URL of the token issuer (the edge's /.well-known/jwks.json); API tokens are verified with it and proxies fetch it")
	f.String(&c.JWKSFile, "jwks-file", "CONTROLPLANE_JWKS_FILE", "", "JWKS file of the token issuer (instead of -jwks-url); reloaded when it changes; sent inline to proxies")
	f.String(&c.Issuer, "issuer", "CONTROLPLANE_ISSUER", "", "accepted token issuer (iss)")
	f.StringList(&c.Audience, "audience", "CONTROLPLANE_AUDIENCE", "petmesh", "accepted token audiences (aud), comma-separated")
	f.Bool(&c.InsecureNoAuth, "insecure-no-auth", "CONTROLPLANE_INSECURE_NO_AUTH", false, "DEVELOPMENT ONLY: serve the API without authentication (every caller is admin)")
	f.Bool(&c.OmitResilienceFields, "omit-resilience-fields", "CONTROLPLANE_OMIT_RESILIENCE_FIELDS", false, "leave out of the proxies' resources the resilience fields (the previous_hosts retry host predicate, healthy_panic_threshold, the edge's buffer filter with each route's max_body_bytes): for data planes older than them during a rolling upgrade; the route table's values for them are then not enforced (a warning is logged)")
	f.String(&c.JWTQueryParam, "jwt-query-param", "CONTROLPLANE_JWT_QUERY_PARAM", "", "query parameter the edge and sidecars also take a token from when a request has no Authorization header (jwt_authn from_params); the proxies remove it before forwarding; empty: a token in the query string is refused")
	f.String(&c.MeshJWKSURL, "mesh-jwks-url", "CONTROLPLANE_MESH_JWKS_URL", "", "JWKS URL the proxies fetch, when it differs from -jwks-url")
	f.String(&c.EdgeLocalAddr, "edge-local-addr", "CONTROLPLANE_EDGE_LOCAL_ADDR", "127.0.0.1:8080", "endpoint of the edge_local cluster (routes served by the edge itself)")
	f.String(&c.RegistrationTokenFile, "registration-token-file", "CONTROLPLANE_REGISTRATION_TOKEN_FILE", "", "file holding the registration token of /v1/registry/... (or set CONTROLPLANE_REGISTRATION_TOKEN)")
	f.String(&c.RegistrationToken, "registration-token", "CONTROLPLANE_REGISTRATION_TOKEN", "", "registration token (prefer the file or the environment variable: flags show in ps)")
	f.String(&c.InitialTable, "initial-table", "CONTROLPLANE_INITIAL_TABLE", "", "route table file stored as version 1 when the store is empty (default: the embedded default table)")
	f.Duration(&c.DebounceQuiet, "debounce-quiet", "CONTROLPLANE_DEBOUNCE_QUIET", xds.DefaultQuietPeriod, "rebuild an isolated change after no other change has arrived for this long (0: at once)")
	f.Duration(&c.DebounceMax, "debounce-max", "CONTROLPLANE_DEBOUNCE_MAX", xds.DefaultMaxDelay, "rebuild at the latest this long after the first pending change")
	f.Duration(&c.NodeGrace, "node-grace", "CONTROLPLANE_NODE_GRACE", xds.DefaultNodeGrace, "keep a disconnected proxy's snapshot this long")
	f.Duration(&c.StaleAfter, "stale-after", "CONTROLPLANE_STALE_AFTER", xds.DefaultStaleAfter, "report a proxy stale when it has not ACKed its latest configuration this long")
	f.Duration(&c.RegistryTTL, "registry-default-ttl", "CONTROLPLANE_REGISTRY_DEFAULT_TTL", registry.DefaultTTL, "TTL of registrations that do not set one")
	f.String(&c.RegistryStateFile, "registry-state-file", "CONTROLPLANE_REGISTRY_STATE_FILE", "", "built-in registry: file that keeps the instances across restarts (default: registry-state.json in -store-dir; none: keep nothing)")
	f.String(&c.LogLevel, "log-level", "CONTROLPLANE_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	f.Duration(&c.ShutdownTimeout, "shutdown-timeout", "CONTROLPLANE_SHUTDOWN_TIMEOUT", 10*time.Second, "how long in-flight API requests may drain on shutdown")
	if err := f.Parse(args); err != nil {
		return c, err
	}
	if c.RegistrationTokenFile != "" {
		b, err := os.ReadFile(c.RegistrationTokenFile)
		if err != nil {
			return c, fmt.Errorf("-registration-token-file: %w", err)
		}
		c.RegistrationToken = strings.TrimSpace(string(b))
	}
	return c, c.Validate()
}

// Validate checks the configuration; errors name the flag.
func (c Config) Validate() error {
	var errs []error
	if c.XDSAddr == "" {
		errs = append(errs, errors.New("-xds-addr: required"))
	}
	if c.APIAddr == "" {
		errs = append(errs, errors.New("-api-addr: required"))
	}
	if (c.XDSTLSCertFile == "") != (c.XDSTLSKeyFile == "") {
		errs = append(errs, errors.New("-xds-tls-cert-file and -xds-tls-key-file: set both or neither"))
	}
	switch c.Registry {
	case "builtin", "consul":
	default:
		errs = append(errs, fmt.Errorf("-registry: must be builtin or consul, got %q", c.Registry))
	}
	switch c.Store {
	case "file":
		if c.StoreDir == "" {
			errs = append(errs, errors.New("-store-dir: required with -store file"))
		}
	case "consul":
	default:
		errs = append(errs, fmt.Errorf("-store: must be file or consul, got %q", c.Store))
	}
	if c.Registry == "builtin" && c.RegistrationToken == "" {
		errs = append(errs, errors.New("-registration-token-file: a registration token is required with -registry builtin (or set CONTROLPLANE_REGISTRATION_TOKEN)"))
	}
	if c.Registry == "builtin" && c.RegistryStateFile == "" && c.StoreDir == "" {
		errs = append(errs, errors.New("-registry-state-file: set it (or none), or -store-dir for its default"))
	}
	if c.RegistrationToken != "" && len(c.RegistrationToken) < 16 {
		errs = append(errs, errors.New("-registration-token-file: the token must be at least 16 characters"))
	}
	if c.JWTQueryParam != "" && !resource.ValidQueryParam(c.JWTQueryParam) {
		errs = append(errs, fmt.Errorf("-jwt-query-param: %q: want a query parameter name of letters, digits, '_', '.' and '-' (at most 64)", c.JWTQueryParam))
	}
	if c.JWKSURL != "" && c.JWKSFile != "" {
		errs = append(errs, errors.New("-jwks-url and -jwks-file: set only one"))
	}
	if !c.InsecureNoAuth {
		if c.JWKSURL == "" && c.JWKSFile == "" {
			errs = append(errs, errors.New("-jwks-url or -jwks-file: required (or -insecure-no-auth for development)"))
		}
		if c.Issuer == "" {
			errs = append(errs, errors.New("-issuer: required (or -insecure-no-auth for development)"))
		}
		if len(c.Audience) == 0 {
			errs = append(errs, errors.New("-audience: at least one audience is required"))
		}
	}
	if c.DebounceQuiet < 0 {
		errs = append(errs, fmt.Errorf("-debounce-quiet: must not be negative, got %v", c.DebounceQuiet))
	}
	if c.DebounceMax < c.DebounceQuiet {
		errs = append(errs, fmt.Errorf("-debounce-max: must be at least -debounce-quiet (%v), got %v", c.DebounceQuiet, c.DebounceMax))
	}
	if c.NodeGrace <= 0 {
		errs = append(errs, fmt.Errorf("-node-grace: must be positive, got %v", c.NodeGrace))
	}
	if c.StaleAfter <= 0 {
		errs = append(errs, fmt.Errorf("-stale-after: must be positive, got %v", c.StaleAfter))
	}
	if c.RegistryTTL < registry.MinTTL || c.RegistryTTL > registry.MaxTTL {
		errs = append(errs, fmt.Errorf("-registry-default-ttl: must be between %v and %v, got %v", registry.MinTTL, registry.MaxTTL, c.RegistryTTL))
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %w", err))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-shutdown-timeout: must be positive, got %v", c.ShutdownTimeout))
	}
	return errors.Join(errs...)
}

// registryStateFile is the built-in registry's state file ("" for none).
func (c Config) registryStateFile() string {
	switch c.RegistryStateFile {
	case "none":
		return ""
	case "":
		return filepath.Join(c.StoreDir, "registry-state.json")
	}
	return c.RegistryStateFile
}

// Run runs the control plane until ctx is done, then drains.
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		if errors.Is(err, config.ErrHelp) {
			return nil
		}
		return err
	}
	level, _ := telemetry.ParseLevel(cfg.LogLevel)
	tel, shutdown, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "controlplane", LogLevel: level, LogWriter: stderr, Getenv: getenv})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if serr := shutdown(sctx); serr != nil {
			tel.Logger.Warn("telemetry shutdown", "error", serr)
		}
	}()
	log := tel.Logger
	if cfg.InsecureNoAuth {
		log.Warn("AUTHENTICATION DISABLED (-insecure-no-auth): every API caller is admin; never use this outside development")
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var runErrs []error
	// spawn runs f until ctx ends; an error stops everything.
	spawn := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil {
				errMu.Lock()
				runErrs = append(runErrs, fmt.Errorf("%s: %w", name, err))
				errMu.Unlock()
				log.Error("component failed", "component", name, "error", err)
			}
			cancel()
		})
	}
	defer wg.Wait()
	defer cancel()

	var consul *consulapi.Client
	if cfg.Registry == "consul" || cfg.Store == "consul" {
		consul, err = consulapi.NewClient(&consulapi.Config{Address: cfg.ConsulAddr})
		if err != nil {
			return fmt.Errorf("-consul-addr: %w", err)
		}
	}

	// Route store, seeded when empty.
	var st store.Store
	switch cfg.Store {
	case "file":
		fs, err := store.OpenFile(cfg.StoreDir)
		if err != nil {
			return fmt.Errorf("-store-dir: %w", err)
		}
		st = fs
	case "consul":
		cs, err := store.OpenConsul(consul, cfg.ConsulPrefix)
		if err != nil {
			return fmt.Errorf("-store consul: %w", err)
		}
		st = cs
	}
	defer func() { _ = st.Close() }()
	if err := seed(ctx, st, cfg.InitialTable, log); err != nil {
		return err
	}

	// Registry.
	var reg interface {
		registry.Registry
		registry.HandlerBackend
	}
	switch cfg.Registry {
	case "builtin":
		m, err := registry.NewMemory(registry.MemoryOptions{DefaultTTL: cfg.RegistryTTL, Registerer: tel.Registry, Logger: log, StateFile: cfg.registryStateFile()})
		if err != nil {
			return fmt.Errorf("-registry: %w", err)
		}
		reg = m
	case "consul":
		c, err := registry.NewConsul(registry.ConsulOptions{Client: consul, DefaultTTL: cfg.RegistryTTL, Registerer: tel.Registry, Logger: log})
		if err != nil {
			return fmt.Errorf("-registry: %w", err)
		}
		reg = c
	}
	spawn("registry", reg.Run)
	var regHandler *registry.Handler
	if cfg.RegistrationToken != "" {
		regHandler, err = registry.NewHandler(reg, registry.HandlerOptions{Token: cfg.RegistrationToken, Logger: log})
		if err != nil {
			return fmt.Errorf("registry api: %w", err)
		}
	}

	// Token verification (API) and the JWT provider (proxies).
	verifier, provider, err := setupAuth(cfg, log, spawn)
	if err != nil {
		return err
	}
	topts := translate.Options{EdgeLocalAddress: cfg.EdgeLocalAddr, OmitResilienceFields: cfg.OmitResilienceFields}
	if cfg.OmitResilienceFields {
		log.Warn("-omit-resilience-fields: the route table's panic thresholds, retry host predicates and body limits are not sent to the proxies; for rolling upgrades of older data planes only")
	}
	if provider != nil {
		p := *provider
		if cfg.JWTQueryParam != "" {
			p.FromParams = []string{cfg.JWTQueryParam}
		}
		topts.JWTProviders = []translate.JWTProvider{p}
	} else {
		log.Warn("no JWT provider for the proxies: edge and sidecar snapshots cannot be built (set -jwks-url or -jwks-file and -issuer)")
	}

	xs, err := xds.New(xds.Options{
		Tables: st, Registry: reg, Translate: topts,
		QuietPeriod: cfg.DebounceQuiet, MaxDelay: cfg.DebounceMax, NodeGrace: cfg.NodeGrace, StaleAfter: cfg.StaleAfter,
		Registerer: tel.Registry, Logger: log,
	})
	if err != nil {
		return err
	}
	var ready httpx.Readiness
	ready.SetCheck(func(context.Context) error {
		if !xs.Ready() {
			return errors.New("xds state not built yet")
		}
		return nil
	})
	apiOpts := api.Options{Store: st, Proxies: xs, Registry: reg, Verifier: verifier, InsecureNoAuth: cfg.InsecureNoAuth, Telemetry: tel, Ready: &ready}
	if regHandler != nil {
		apiOpts.RegistryHandler = regHandler
	}
	h, err := api.New(apiOpts)
	if err != nil {
		return err
	}
	apiCfg := httpx.DefaultServerConfig(cfg.APIAddr)
	apiCfg.ShutdownTimeout = cfg.ShutdownTimeout
	apiSrv, err := httpx.Listen(apiCfg, h, log)
	if err != nil {
		return fmt.Errorf("-api-addr: %w", err)
	}
	xln, err := net.Listen("tcp", cfg.XDSAddr)
	if err != nil {
		_ = apiSrv.HTTPServer().Close()
		return fmt.Errorf("-xds-addr: %w", err)
	}
	grpcOpts, err := xdsServerOptions(cfg, log, tel.Registry, spawn)
	if err != nil {
		_ = apiSrv.HTTPServer().Close()
		_ = xln.Close()
		return err
	}
	spawn("xds", xs.Run)
	spawn("xds-grpc", func(ctx context.Context) error { return xs.Serve(ctx, xln, grpcOpts...) })
	spawn("api", apiSrv.Run)
	log.Info("listening", "name", "xds", "addr", xln.Addr().String(), "auth", cfg.XDSTokenFile != "", "tls", cfg.XDSTLSCertFile != "")
	apiSrv.Announce("api")
	ready.SetReady(true)

	<-ctx.Done()
	ready.SetReady(false)
	log.Info("shutting down")
	cancel()
	wg.Wait()
	errMu.Lock()
	defer errMu.Unlock()
	return errors.Join(runErrs...)
}

// xdsServerOptions are the xDS listener's authentication and TLS options.
// Without -xds-token-file xDS stays open, as before (make run), with a
// loud warning: anyone who reaches the port reads every route, endpoint
// and JWT provider.
func xdsServerOptions(cfg Config, log *slog.Logger, reg prometheus.Registerer, spawn func(string, func(context.Context) error)) ([]grpc.ServerOption, error) {
	var opts []grpc.ServerOption
	if cfg.XDSTokenFile != "" {
		auth, err := xds.NewTokenAuth(xds.TokenAuthOptions{File: cfg.XDSTokenFile, Logger: log, Registerer: reg})
		if err != nil {
			return nil, fmt.Errorf("-xds-token-file: %w", err)
		}
		opts = append(opts, auth.ServerOptions()...)
		spawn("xds-auth", auth.Run) // a removed token ends its open streams
	} else {
		log.Warn("XDS UNAUTHENTICATED (no -xds-token-file): any client that reaches the xDS port gets every route, endpoint and JWT provider; set -xds-token-file outside development")
	}
	if cfg.XDSTLSCertFile != "" {
		o, err := xds.ServerTLS(cfg.XDSTLSCertFile, cfg.XDSTLSKeyFile, log)
		if err != nil {
			return nil, fmt.Errorf("-xds-tls-cert-file: %w", err)
		}
		opts = append(opts, o)
	} else if cfg.XDSTokenFile != "" {
		log.Warn("xds tokens travel in plaintext (no -xds-tls-cert-file): keep the xDS port on a trusted network")
	}
	return opts, nil
}

// seed stores the initial table as version 1 when the store is empty.
func seed(ctx context.Context, st store.Store, file string, log *slog.Logger) error {
	cur, err := st.Current(ctx)
	if err != nil {
		return fmt.Errorf("route store: %w", err)
	}
	if cur.Number > 0 {
		log.Info("route store", "version", cur.Number, "hash", cur.Hash)
		return nil
	}
	data, src := routes.DefaultYAML, "embedded default table"
	if file != "" {
		data, err = os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("-initial-table: %w", err)
		}
		src = file
	}
	t, err := routes.Load(data, routes.ValidateOptions{})
	if err != nil {
		return fmt.Errorf("-initial-table %s: %w", src, err)
	}
	v, err := st.Put(ctx, 0, t, "controlplane", "initial table from "+src)
	if errors.Is(err, store.ErrVersionConflict) {
		return nil // another replica seeded it
	}
	if err != nil {
		return fmt.Errorf("route store: seed: %w", err)
	}
	log.Info("route store seeded", "version", v.Number, "source", src)
	return nil
}

// setupAuth builds the API token verifier and the proxies' JWT provider.
func setupAuth(cfg Config, log *slog.Logger, spawn func(string, func(context.Context) error)) (*jwtauth.Verifier, *translate.JWTProvider, error) {
	var keys jwtauth.KeySource
	var provider *translate.JWTProvider
	switch {
	case cfg.JWKSFile != "":
		fj, err := jwtauth.NewFileJWKS(cfg.JWKSFile, 0, log)
		if err != nil {
			return nil, nil, fmt.Errorf("-jwks-file: %w", err)
		}
		spawn("jwks-file", fj.Run)
		keys = fj
		if cfg.Issuer != "" {
			provider = &translate.JWTProvider{Name: "petmesh", Issuer: cfg.Issuer, Audiences: cfg.Audience}
			if cfg.MeshJWKSURL != "" {
				provider.JWKSURI = cfg.MeshJWKSURL
			} else {
				b, err := os.ReadFile(cfg.JWKSFile)
				if err != nil {
					return nil, nil, fmt.Errorf("-jwks-file: %w", err)
				}
				provider.LocalJWKS = string(b)
			}
		}
	case cfg.JWKSURL != "":
		rj, err := jwtauth.NewRemoteJWKS(jwtauth.RemoteJWKSConfig{URL: cfg.JWKSURL, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("-jwks-url: %w", err)
		}
		spawn("jwks-url", rj.Run)
		keys = rj
		if cfg.Issuer != "" {
			uri := cfg.JWKSURL
			if cfg.MeshJWKSURL != "" {
				uri = cfg.MeshJWKSURL
			}
			provider = &translate.JWTProvider{Name: "petmesh", Issuer: cfg.Issuer, Audiences: cfg.Audience, JWKSURI: uri}
		}
	}
	if cfg.InsecureNoAuth {
		return nil, provider, nil
	}
	v, err := jwtauth.NewVerifier(jwtauth.VerifierConfig{Issuers: []jwtauth.TrustedIssuer{{Issuer: cfg.Issuer, Audiences: cfg.Audience, Keys: keys}}})
	if err != nil {
		return nil, nil, fmt.Errorf("-issuer: %w", err)
	}
	return v, provider, nil
}
