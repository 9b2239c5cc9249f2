// Package edge is the petmesh edge server: the public front door. It issues
// tokens (POST /auth/token, GET /.well-known/jwks.json), verifies them
// (internal/meshauth) and routes every request through the shared data plane
// (internal/dataplane) configured over ADS by the control plane (listener
// edge-http). Run is the whole binary; README.md documents every flag.
package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/meshauth"
	"github.com/petmesh/petmesh/internal/statsink"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// ServiceSubject and ServiceRoles are the edge's own identity in the
// service token it mints for its calls to stats.
const ServiceSubject = "edge"

// ServiceRoles of the edge's service token.
var ServiceRoles = []string{"edge", identity.RoleViewer}

// DefaultGCPercent is the edge's GOGC when the environment sets none.
const DefaultGCPercent = 400

// Run runs the edge until ctx is done, then drains. args are the command
// line arguments without the program name; "hash-password" as the first
// argument is handled by the main package (see HashPasswordCommand).
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := ParseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	if getenv("GOGC") == "" {
		// Proxying allocates ≈15 KB per request, nearly all of it garbage
		// when the request ends, over a live heap of a few MB: at Go's
		// default GOGC of 100 the collector then ran every few ms under
		// load and took about a tenth of the CPU per request. 400 lets
		// the heap grow to 5× the live data between cycles (tens of MB
		// for the edge; see results/bench-edge.md). GOGC in the
		// environment still wins.
		debug.SetGCPercent(DefaultGCPercent)
	}
	level, _ := telemetry.ParseLevel(cfg.LogLevel)
	tel, shutdown, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "edge", InstanceID: cfg.NodeID, LogLevel: level, LogWriter: stderr, Getenv: getenv})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			tel.Logger.Warn("telemetry shutdown", "err", err)
		}
	}()
	return serve(ctx, &cfg, tel, stderr)
}

// server holds the edge's parts; built by build, run by serve.
type server struct {
	cfg       *Config
	log       *slog.Logger
	keys      *jwtauth.KeyStore
	issuer    *jwtauth.Issuer
	auth      *meshauth.Factory
	dp        *dataplane.DataPlane
	sink      *statsink.Sink
	local     http.Handler // edge-local handlers (token, JWKS): the edge_local cluster
	front     *front
	svcTok    *serviceToken
	accessLog bool
	// accessOut receives the access-log lines (batched, see lineBuffer);
	// when nil they go through log.
	accessOut io.Writer
}

// build assembles everything that does not need a socket.
func build(cfg *Config, tel *telemetry.Telemetry) (*server, error) {
	s := &server{cfg: cfg, log: tel.Logger, accessLog: cfg.AccessLog}
	var err error
	s.keys, err = jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: cfg.KeysDir, RotationInterval: cfg.KeyRotation, Logger: tel.Logger})
	if err != nil {
		return nil, fmt.Errorf("-keys-dir: %w", err)
	}
	s.issuer, err = jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: cfg.Issuer, Audience: cfg.Audience, TTL: cfg.TokenTTL, Keys: s.keys})
	if err != nil {
		return nil, fmt.Errorf("-issuer: %w", err)
	}
	s.svcTok = &serviceToken{issuer: s.issuer}
	local, err := newLocalHandler(cfg, s.issuer, tel.Logger)
	if err != nil {
		return nil, err
	}
	s.local = local
	s.auth, err = meshauth.New(meshauth.Options{
		Local:  map[string]jwtauth.KeySource{cfg.Issuer: s.keys},
		Logger: tel.Logger,
	})
	if err != nil {
		return nil, err
	}
	reg := tel.Registry
	if err := registerAuthMetrics(reg, s.auth); err != nil {
		return nil, err
	}
	if cfg.StatsURL != "" {
		sc := statsink.Config{URL: cfg.StatsURL, Token: s.svcTok.Get, Namespace: "edge", Registerer: reg, Logger: tel.Logger}
		if cfg.StatsDirect {
			sc.Identity = &identity.Identity{Subject: ServiceSubject, Roles: ServiceRoles}
		}
		if s.sink, err = statsink.New(sc); err != nil {
			return nil, fmt.Errorf("-stats-url: %w", err)
		}
	}
	dpOpts := dataplane.Options{
		Logger: tel.Logger, Registerer: reg,
		Auth:      s.auth.Auth,
		AccessLog: s.access,
		// Routes to edge_local (/auth/, /.well-known/) are served in
		// process by the token and JWKS handlers, after the route's filters.
		LocalClusters: map[string]http.Handler{resource.ClusterEdgeLocal: s.local},
		Propagator:    tel.Propagator,
	}
	if cfg.traceSpans {
		dpOpts.TracerProvider = tel.TracerProvider
	}
	s.dp, err = dataplane.New(dpOpts)
	if err != nil {
		return nil, err
	}
	s.front, err = newFront(s.dp.Handler(resource.ListenerEdge), cfg, reg)
	if err != nil {
		s.dp.Close()
		return nil, err
	}
	return s, nil
}

func registerAuthMetrics(reg prometheus.Registerer, f *meshauth.Factory) error {
	for _, c := range []struct {
		name, help string
		v          func(jwtauth.VerifierStats) uint64
	}{
		{"petmesh_edge_jwt_cache_hits_total", "Tokens verified from the verification cache.", func(s jwtauth.VerifierStats) uint64 { return s.CacheHits }},
		{"petmesh_edge_jwt_signature_checks_total", "Token signatures checked.", func(s jwtauth.VerifierStats) uint64 { return s.SignatureChecks }},
		{"petmesh_edge_jwt_verified_total", "Tokens verified.", func(s jwtauth.VerifierStats) uint64 { return s.Verified }},
		{"petmesh_edge_jwt_failed_total", "Tokens refused.", func(s jwtauth.VerifierStats) uint64 { return s.Failed }},
	} {
		v := c.v
		if err := reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help},
			func() float64 { return float64(v(f.Stats())) })); err != nil {
			return err
		}
	}
	return nil
}

func serve(ctx context.Context, cfg *Config, tel *telemetry.Telemetry, stderr io.Writer) error {
	log := tel.Logger
	s, err := build(cfg, tel)
	if err != nil {
		return err
	}
	defer s.dp.Close()
	// Access-log lines are batched (flushed every 100ms or per 32 KiB) and
	// written to stderr beside the other log lines.
	accessBuf := newLineBuffer(stderr, 32<<10)
	s.accessOut = accessBuf
	var logWG sync.WaitGroup
	logCtx, stopLog := context.WithCancel(context.WithoutCancel(ctx))
	logWG.Go(func() { accessBuf.Run(logCtx, 100*time.Millisecond) })
	defer func() { stopLog(); logWG.Wait() }()

	var bootstrap *client.Snapshot
	if cfg.Bootstrap != "" {
		if bootstrap, err = client.LoadBootstrap(cfg.Bootstrap); err != nil {
			return fmt.Errorf("-bootstrap: %w", err)
		}
	}

	var servers []*httpx.Server
	closeAll := func() {
		closed, cancel := context.WithCancel(context.Background())
		cancel()
		for _, srv := range servers {
			_ = srv.Run(closed) // releases the listener
		}
	}
	pubCfg := httpx.DefaultServerConfig(cfg.Addr)
	pubCfg.MaxHeaderBytes = cfg.MaxHeaderBytes
	pubCfg.ShutdownTimeout = cfg.ShutdownTimeout
	pubCfg.ReadHeaderTimeout = cfg.ReadHeaderTimeout
	pubCfg.ReadTimeout = 0 // streaming bodies are bounded by -max-body and route timeouts
	pubCfg.WriteTimeout = 0
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	if cfg.TLSCert == "" {
		// Plain HTTP/1.1: the framing guard refuses ambiguous requests
		// (request smuggling) before net/http resolves them (framing.go).
		ln = framingListener{Listener: ln, limit: cfg.MaxHeaderBytes + 8<<10}
	}
	public := httpx.NewServer(pubCfg, ln, s.front, log)
	servers = append(servers, public)

	var ready httpx.Readiness
	draining := make(chan struct{})
	ready.SetCheck(func(context.Context) error {
		select {
		case <-draining:
			return errors.New("draining")
		default:
		}
		if !s.dp.Ready() {
			return errors.New("no configuration applied yet")
		}
		return nil
	})
	admin := httpx.AdminMux(tel.MetricsHandler(), &ready)
	admin.Handle("GET /config_dump", s.dp.ConfigDumpHandler())
	admin.HandleFunc("/debug/pprof/", pprof.Index)
	admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
	admin.HandleFunc("/debug/pprof/trace", pprof.Trace)
	admin.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	adminSrv, err := httpx.Listen(httpx.DefaultServerConfig(cfg.AdminAddr), admin, log)
	if err != nil {
		closeAll()
		return fmt.Errorf("-admin-addr: %w", err)
	}
	servers = append(servers, adminSrv)

	port := public.Addr().(*net.TCPAddr).Port
	xc, err := client.New(client.Config{
		Server:     cfg.XDSAddr,
		Node:       &corev3.Node{Id: cfg.NodeID, Cluster: "edge", Metadata: resource.NodeMeta{ListenPort: port}.Struct()},
		Apply:      s.apply,
		Bootstrap:  bootstrap,
		TokenFile:  cfg.XDSTokenFile,
		CAFile:     cfg.XDSCAFile,
		ServerName: cfg.XDSServerName,
		TLS:        cfg.XDSTLS,
		Delta:      cfg.XDSDelta,
		Logger:     log,
		Registerer: tel.Registry,
	})
	if err != nil {
		closeAll()
		return fmt.Errorf("xds (-xds-addr, -xds-token-file, -xds-ca-file): %w", err)
	}
	admin.HandleFunc("GET /xds", func(w http.ResponseWriter, _ *http.Request) {
		out := map[string]any{"versions": xc.Versions(), "last_nack": xc.LastNack(), "delta": cfg.XDSDelta}
		if err := xc.StreamError(); err != nil {
			out["stream_error"] = err.Error() // e.g. Unauthenticated: the token was refused
		}
		httpx.WriteJSON(w, http.StatusOK, out)
	})

	// The sink outlives the servers: it stops once no request can add an
	// event, then flushes.
	var sinkWG sync.WaitGroup
	sinkCtx, stopSink := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSink()
	if s.sink != nil {
		sinkWG.Go(func() { _ = s.sink.Run(sinkCtx) })
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.keys.Run(gctx) })
	g.Go(func() error { return s.auth.Run(gctx) })
	g.Go(func() error {
		err := xc.Run(gctx)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-gctx.Done()
		close(draining)
		return nil
	})
	run := func(srv *httpx.Server) func() error {
		return func() error { return srv.Run(gctx) }
	}
	if cfg.TLSCert != "" {
		g.Go(func() error { return public.RunTLS(gctx, cfg.TLSCert, cfg.TLSKey) })
	} else {
		g.Go(run(public))
	}
	g.Go(run(adminSrv))
	public.Announce("http")
	adminSrv.Announce("admin")
	ready.SetReady(true)
	log.Info("edge started", "node_id", cfg.NodeID, "xds", cfg.XDSAddr, "issuer", cfg.Issuer, "tls", cfg.TLSCert != "", "stats", cfg.StatsURL != "")

	err = g.Wait()
	ready.SetReady(false)
	stopSink()
	sinkWG.Wait()
	if s.sink != nil {
		sent, dropped, batchErrs := s.sink.Counters()
		log.Info("edge stopped", "events_sent", sent, "events_dropped", dropped, "event_batch_errors", batchErrs)
	} else {
		log.Info("edge stopped")
	}
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// apply is the xDS client's Apply step: the resources are built and
// swapped in, or rejected (NACK).
func (s *server) apply(ctx context.Context, snap *client.Snapshot) error {
	res := dataplane.Resources(*snap)
	return s.dp.Apply(ctx, &res)
}

// access is the data plane's access-log hook: one JSON line and one stats
// event per request. It never blocks (the event queue drops when full).
func (s *server) access(ctx context.Context, e *dataplane.AccessEntry) {
	if s.accessLog && s.accessOut != nil {
		traceID, spanID := e.TraceID, ""
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			traceID, spanID = sc.TraceID().String(), sc.SpanID().String()
		}
		bp := accessBufs.Get().(*[]byte)
		*bp = appendAccessLine((*bp)[:0], time.Now(), e, traceID, spanID)
		_, _ = s.accessOut.Write(*bp)
		accessBufs.Put(bp)
	} else if s.accessLog {
		logger := s.log
		attrs := [...]slog.Attr{
			slog.String("client_ip", e.ClientIP),
			slog.String("method", e.Method),
			slog.String("path", e.Path),
			slog.String("route", e.Route),
			slog.Int("status", e.Status),
			slog.Int64("bytes", e.BytesSent),
			slog.Float64("latency_ms", float64(e.Duration.Microseconds())/1000),
			slog.String("cluster", e.Cluster),
			slog.String("upstream", e.Upstream),
			slog.Int("retries", e.Retries),
			slog.String("subject", e.Subject),
			slog.String("request_id", e.RequestID),
			slog.String("upstream_error", e.UpstreamError),
		}
		n := len(attrs)
		if e.UpstreamError == "" {
			n--
		}
		if !trace.SpanContextFromContext(ctx).IsValid() && e.TraceID != "" {
			all := append(attrs[:n:n], slog.String("trace_id", e.TraceID))
			logger.LogAttrs(ctx, slog.LevelInfo, "access", all...)
		} else {
			logger.LogAttrs(ctx, slog.LevelInfo, "access", attrs[:n]...)
		}
	}
	if s.sink != nil {
		ev := statsink.Event{
			Time: e.Time.UTC(), Route: e.Route, Method: e.Method, Path: e.Path, Status: e.Status,
			LatencyMS: float64(e.Duration.Microseconds()) / 1000, Subject: e.Subject,
			TraceID: e.TraceID, Upstream: e.Cluster,
		}
		statsink.Sanitize(&ev)
		s.sink.Send(ev)
	}
}
