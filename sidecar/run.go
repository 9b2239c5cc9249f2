// Package sidecar is the petmesh sidecar: it runs beside one instance of a
// service and moves the cross-cutting work out of it. The inbound listener
// (in front of the app) re-verifies the edge-issued token, applies the
// bulkhead and fault injection, logs, traces and measures every request; the
// outbound listener (loopback) lets the app call other services by name with
// retries, timeouts, outlier detection, load balancing and the service's own
// token; both are internal/dataplane handler graphs configured over ADS by
// the control plane. The sidecar also owns the instance's lifecycle: it
// waits for the app, registers it with its version tag, keeps its health
// current, and on shutdown deregisters, waits for the removal to propagate
// and drains. Run is the whole binary; README.md documents every flag.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/config"
	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/meshauth"
	"github.com/petmesh/petmesh/internal/svctoken"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Listener names announced in the "listening" log lines.
const (
	ListenerInbound  = "inbound"
	ListenerOutbound = "outbound"
	ListenerAdmin    = "admin"
)

// settle is how long the sidecar keeps serving after its own xDS stream
// showed its removal, for the other proxies to apply the same push.
const settle = 500 * time.Millisecond

// Run runs the sidecar until ctx is done (SIGTERM) or POST /quitquitquit,
// then deregisters, waits for the removal to propagate, drains and returns.
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		if errors.Is(err, config.ErrHelp) {
			return nil
		}
		return err
	}
	level, _ := telemetry.ParseLevel(cfg.LogLevel)
	if cfg.CPUs > 0 {
		runtime.GOMAXPROCS(cfg.CPUs)
	}

	// Bind first: the instance id and the node metadata need the ports.
	inLn, err := net.Listen("tcp", cfg.InboundAddr)
	if err != nil {
		return fmt.Errorf("-inbound-addr: %w", err)
	}
	defer func() { _ = inLn.Close() }()
	outLn, err := net.Listen("tcp", cfg.OutboundAddr)
	if err != nil {
		return fmt.Errorf("-outbound-addr: %w", err)
	}
	defer func() { _ = outLn.Close() }()
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("-admin-addr: %w", err)
	}
	defer func() { _ = adminLn.Close() }()
	inPort := inLn.Addr().(*net.TCPAddr).Port
	outPort := outLn.Addr().(*net.TCPAddr).Port
	if cfg.Instance == "" {
		cfg.Instance = defaultInstance(cfg.Service, inPort)
	}

	logOut := &lockedWriter{w: stderr}
	tel, shutdown, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: "sidecar-" + cfg.Service, ServiceVersion: cfg.Version, InstanceID: cfg.Instance,
		LogLevel: level, LogWriter: logOut, Getenv: getenv,
	})
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
	log := tel.Logger.With("instance", cfg.Instance)

	// Background work lives until the very end, after the drain: it is not
	// canceled by the signal.
	bg, cancelBG := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBG()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancelBG()
	fatal := make(chan error, 8)
	spawn := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(bg); err != nil {
				log.Error("component failed", "component", name, "error", err)
				select {
				case fatal <- fmt.Errorf("%s: %w", name, err):
				default:
				}
			}
		})
	}

	// Token verification on inbound: the mesh adapter from the control
	// plane's jwt_authn config, with -issuer's keys from -jwks-url.
	maOpts := meshauth.Options{Logger: log}
	if cfg.JWKSURL != "" {
		rj, err := jwtauth.NewRemoteJWKS(jwtauth.RemoteJWKSConfig{URL: cfg.JWKSURL, Logger: log})
		if err != nil {
			return fmt.Errorf("-jwks-url: %w", err)
		}
		spawn("jwks", rj.Run)
		maOpts.Local = map[string]jwtauth.KeySource{cfg.Issuer: rj}
	}
	auth, err := meshauth.New(maOpts)
	if err != nil {
		return fmt.Errorf("jwt: %w", err)
	}
	spawn("meshauth", auth.Run)

	var alog dataplane.AccessLogFunc
	if cfg.AccessLog {
		svcName := "sidecar-" + cfg.Service // as telemetry.Setup names the logs
		if v := getenv("OTEL_SERVICE_NAME"); v != "" {
			svcName = v
		}
		al, err := newAccessLog(logOut, level, []any{"service", svcName, "instance", cfg.Instance}, log, accessLogSize, cfg.AccessLogFlush, tel.Registry)
		if err != nil {
			return err
		}
		wg.Go(func() { al.run(bg) })
		alog = al.record
	}
	dp, err := dataplane.New(dataplane.Options{
		Logger: log, Registerer: tel.Registry,
		Auth:           healthBypass(auth.AuthFactory(), cfg.AppHealthPath),
		AccessLog:      alog,
		TracerProvider: spanProvider(tel.TracerProvider, getenv), Propagator: tel.Propagator,
	})
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	defer dp.Close()

	// xDS.
	var bs *client.Snapshot
	if cfg.Bootstrap != "" {
		if bs, err = client.LoadBootstrap(cfg.Bootstrap); err != nil {
			return fmt.Errorf("-bootstrap: %w", err)
		}
	}
	meta := resource.NodeMeta{Service: cfg.Service, Version: cfg.Version, InboundPort: inPort, OutboundPort: outPort, AppPort: cfg.appPort()}
	xc, err := client.New(client.Config{
		Server:    cfg.XDSAddr,
		Node:      &core.Node{Id: resource.SidecarNodeID(cfg.Service, cfg.Instance), Cluster: cfg.Service, Metadata: meta.Struct()},
		Bootstrap: bs,
		Apply: func(ctx context.Context, s *client.Snapshot) error {
			r := dataplane.Resources(*s)
			adapted, err := meshauth.Adapt(&r)
			if err != nil {
				return err
			}
			return dp.Apply(ctx, adapted)
		},
		TokenFile: cfg.XDSTokenFile, CAFile: cfg.XDSCAFile, ServerName: cfg.XDSServerName, TLS: cfg.XDSTLS,
		Delta:  cfg.XDSDelta,
		Logger: log, Registerer: tel.Registry,
	})
	if err != nil {
		return fmt.Errorf("xds (-xds-addr, -xds-token-file, -xds-ca-file): %w", err)
	}
	spawn("xds", xc.Run)

	// Egress identity.
	var tokens *svctoken.Source
	if cfg.TokenURL != "" {
		tokens, err = svctoken.New(svctoken.Config{
			TokenURL: cfg.TokenURL, ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, ClientSecretFile: cfg.ClientSecretFile,
			Logger: log, Registerer: tel.Registry,
		})
		if err != nil {
			return fmt.Errorf("-token-url: %w", err)
		}
		spawn("svctoken", tokens.Run)
	}

	// Registry.
	reg, err := newRegistrar(cfg)
	if err != nil {
		return err
	}
	info := registry.Registration{
		Service: cfg.Service, ID: cfg.Instance, Address: cfg.advertiseHost(), Port: inPort, Version: cfg.Version, TTL: cfg.TTL,
	}
	if err := info.Validate(); err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	inGate := &gate{next: dp.Handler(resource.ListenerInbound)}
	lc, err := newLifecycle(cfg, log, reg, info, inGate, func() bool { return configComplete(xc.Current()) }, tel.Registry)
	if err != nil {
		return err
	}

	// Servers. Each has its own context so that shutdown goes in order:
	// inbound first, then outbound (the app may call out while it drains),
	// admin last.
	var ready httpx.Readiness
	draining := make(chan struct{})
	ready.SetCheck(func(context.Context) error {
		switch {
		case isClosed(draining):
			return errors.New("draining")
		case !lc.healthy.Load():
			return errors.New("app not healthy")
		case !configComplete(xc.Current()):
			return errors.New("no complete configuration from the control plane yet")
		case !auth.Ready():
			return errors.New("token keys (JWKS) not fetched yet")
		}
		return nil
	})
	quit := make(chan struct{})
	var quitOnce sync.Once
	admin := httpx.AdminMux(tel.MetricsHandler(), &ready)
	admin.Handle("GET /config_dump", dp.ConfigDumpHandler())
	admin.HandleFunc("POST /quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		log.Info("quitquitquit: stopping", "remote", r.RemoteAddr)
		quitOnce.Do(func() { close(quit) })
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "stopping"})
	})

	if cfg.Pprof {
		admin.HandleFunc("/debug/pprof/", pprof.Index)
		admin.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
		admin.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		admin.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}

	outHandler := dp.Handler(resource.ListenerOutbound)
	if tokens != nil {
		outHandler = attachToken(tokens, outHandler)
	}
	srvCfg := func(addr string) httpx.ServerConfig {
		c := httpx.DefaultServerConfig(addr)
		c.ShutdownTimeout = cfg.DrainTimeout
		// Route timeouts bound requests; the server must not cut them first.
		c.ReadTimeout, c.WriteTimeout = 5*time.Minute, 5*time.Minute
		return c
	}
	inSrv := httpx.NewServer(srvCfg(cfg.InboundAddr), inLn, inGate, log)
	outSrv := httpx.NewServer(srvCfg(cfg.OutboundAddr), outLn, outHandler, log)
	adminSrv := httpx.NewServer(httpx.DefaultServerConfig(cfg.AdminAddr), adminLn, admin, log)
	inCtx, stopIn := context.WithCancel(bg)
	defer stopIn()
	outCtx, stopOut := context.WithCancel(bg)
	defer stopOut()
	adminCtx, stopAdmin := context.WithCancel(bg)
	defer stopAdmin()
	inDone, outDone := make(chan error, 1), make(chan error, 1)
	wg.Go(func() { inDone <- inSrv.Run(inCtx) })
	wg.Go(func() { outDone <- outSrv.Run(outCtx) })
	spawn("admin", func(context.Context) error { return adminSrv.Run(adminCtx) })
	inSrv.Announce(ListenerInbound)
	outSrv.Announce(ListenerOutbound)
	adminSrv.Announce(ListenerAdmin)
	ready.SetReady(true)

	lcCtx, stopLC := context.WithCancel(bg)
	defer stopLC()
	lcDone := make(chan struct{})
	wg.Go(func() {
		defer close(lcDone)
		if err := lc.run(lcCtx); err != nil {
			log.Error("lifecycle failed", "error", err)
			select {
			case fatal <- err:
			default:
			}
		}
	})

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("signal received: shutting down")
	case <-quit:
	case runErr = <-fatal:
	case err := <-inDone:
		runErr = fmt.Errorf("inbound listener: %w", err)
	case err := <-outDone:
		runErr = fmt.Errorf("outbound listener: %w", err)
	}

	// Shutdown: unready, deregister, wait for propagation, drain.
	close(draining)
	stopLC()
	<-lcDone
	lc.deregister(bg)
	waitPropagation(bg, xc, cfg.Service, info, cfg.DeregisterWait, log)
	log.Info("draining inbound", "timeout", cfg.DrainTimeout)
	stopIn()
	if err := <-inDone; err != nil {
		log.Warn("inbound drain", "error", err)
	}
	stopOut()
	if err := <-outDone; err != nil {
		log.Warn("outbound drain", "error", err)
	}
	log.Info("drained; exiting")
	stopAdmin()
	cancelBG()
	wg.Wait()
	return runErr
}

// waitPropagation waits until this sidecar's own xDS endpoints of its
// service no longer list the instance (the control plane pushed the removal
// to every proxy in the same rebuild) plus a short settle time, or at most
// limit. Inbound keeps serving meanwhile.
func waitPropagation(ctx context.Context, xc *client.Client, service string, info registry.Registration, limit time.Duration, log *slog.Logger) {
	if limit <= 0 {
		return
	}
	start := time.Now()
	deadline := start.Add(limit)
	for time.Now().Before(deadline) {
		if !listed(xc.Current(), service, info) {
			rest := min(settle, time.Until(deadline))
			log.Info("removal propagated", "after", time.Since(start).Round(time.Millisecond), "settle", rest.Round(time.Millisecond))
			sleep(ctx, max(rest, 0))
			return
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return
		}
	}
	log.Info("deregister wait elapsed", "wait", limit)
}

// configComplete reports whether s holds listeners and every route
// configuration and load assignment they reference (nothing is warming).
func configComplete(s *client.Snapshot) bool {
	if s == nil || len(s.Listeners) == 0 {
		return false
	}
	for _, n := range client.RouteNames(s) {
		if s.Routes[n] == nil {
			return false
		}
	}
	for _, n := range client.EndpointNames(s) {
		if s.Endpoints[n] == nil {
			return false
		}
	}
	return true
}

// listed reports whether the instance is an endpoint of its service's
// cluster in s.
func listed(s *client.Snapshot, service string, info registry.Registration) bool {
	if s == nil {
		return false
	}
	cla := s.Endpoints[resource.Cluster(service, "")]
	if cla == nil {
		return false
	}
	port := uint32(info.Port)
	for _, loc := range cla.GetEndpoints() {
		for _, ep := range loc.GetLbEndpoints() {
			e := ep.GetEndpoint()
			if e.GetHostname() == info.ID {
				return true
			}
			sa := e.GetAddress().GetSocketAddress()
			if sa.GetAddress() == info.Address && sa.GetPortValue() == port {
				return true
			}
		}
	}
	return false
}

// attachToken sets the service's own token on egress requests that carry
// no Authorization header. Without a token it answers 503 rather than
// sending an anonymous request that the callee would refuse.
func attachToken(src *svctoken.Source, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			tok, err := src.Token(r.Context())
			if err != nil {
				w.Header().Set("Retry-After", "1")
				httpx.WriteError(w, &httpx.Error{Status: http.StatusServiceUnavailable, Code: "service_token_unavailable", Message: "the service token is not available: " + err.Error()})
				return
			}
			r.Header.Set("Authorization", "Bearer "+tok)
		}
		next.ServeHTTP(w, r)
	})
}

// spanProvider returns tp when spans are exported (an OTLP trace exporter
// is configured, as telemetry.Setup decides), else a no-op provider: the
// server and client spans would be built, attributes and all, for every
// request and then dropped. The no-op spans keep the caller's span context,
// so the traceparent is still propagated and the trace id still logged,
// and otelhttp still records the OTel HTTP metrics.
func spanProvider(tp trace.TracerProvider, getenv func(string) string) trace.TracerProvider {
	if telemetry.TracesExported(getenv) {
		return tp
	}
	return noop.NewTracerProvider()
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
