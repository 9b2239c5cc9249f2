// Package httpx is the HTTP plumbing shared by every petmesh binary: a
// server with safe timeouts and graceful shutdown, an admin mux, the one
// JSON error format, and request-id, recovery and tracing middleware.
package httpx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// ServerConfig holds the limits of one HTTP server. Zero values take the
// defaults of DefaultServerConfig.
type ServerConfig struct {
	Addr              string
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	// ShutdownTimeout bounds how long in-flight requests may drain.
	ShutdownTimeout time.Duration
}

// DefaultServerConfig returns conservative limits suitable for APIs.
func DefaultServerConfig(addr string) ServerConfig {
	return ServerConfig{
		Addr:              addr,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ShutdownTimeout:   20 * time.Second,
	}
}

func (c ServerConfig) withDefaults() ServerConfig {
	d := DefaultServerConfig(c.Addr)
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = d.ReadHeaderTimeout
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = d.ReadTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = d.ShutdownTimeout
	}
	return c
}

// Server is an http.Server with a listener bound up front (so that tests
// can use 127.0.0.1:0 and read the real address) and a Run that drains
// in-flight requests when its context ends.
type Server struct {
	cfg    ServerConfig
	srv    *http.Server
	ln     net.Listener
	logger *slog.Logger
}

// Listen binds cfg.Addr and returns a server ready to Run.
func Listen(cfg ServerConfig, h http.Handler, logger *slog.Logger) (*Server, error) {
	cfg = cfg.withDefaults()
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	return NewServer(cfg, ln, h, logger), nil
}

// NewServer wraps an existing listener.
func NewServer(cfg ServerConfig, ln net.Listener, h http.Handler, logger *slog.Logger) *Server {
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return &Server{cfg: cfg, srv: srv, ln: ln, logger: logger}
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is http://<bound address>.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// HTTPServer exposes the underlying server for TLS or HTTP/2 settings; set
// them before Run.
func (s *Server) HTTPServer() *http.Server { return s.srv }

// Run serves until ctx is done, then stops accepting, waits up to
// ShutdownTimeout for in-flight requests and returns. A nil error means a
// clean drain.
func (s *Server) Run(ctx context.Context) error {
	return s.run(ctx, func() error { return s.srv.Serve(s.ln) })
}

// RunTLS is Run with TLS from certificate files.
func (s *Server) RunTLS(ctx context.Context, certFile, keyFile string) error {
	return s.run(ctx, func() error { return s.srv.ServeTLS(s.ln, certFile, keyFile) })
}

func (s *Server) run(ctx context.Context, serve func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	<-errc
	if err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("shutdown %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// Readiness is a concurrency-safe readiness flag with an optional check.
type Readiness struct {
	ready atomic.Bool
	check atomic.Pointer[func(context.Context) error]
}

// SetReady marks the process ready or not ready.
func (r *Readiness) SetReady(v bool) { r.ready.Store(v) }

// SetCheck installs a check run by /readyz when the flag is set.
func (r *Readiness) SetCheck(f func(context.Context) error) { r.check.Store(&f) }

// Ready reports nil when ready.
func (r *Readiness) Ready(ctx context.Context) error {
	if !r.ready.Load() {
		return errors.New("not ready")
	}
	if f := r.check.Load(); f != nil && *f != nil {
		return (*f)(ctx)
	}
	return nil
}

// AdminMux returns a mux with /metrics, /healthz (liveness: the process
// answers) and /readyz (readiness). Callers may add more routes.
func AdminMux(metrics http.Handler, ready *Readiness) *http.ServeMux {
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			if err := ready.Ready(r.Context()); err != nil {
				WriteError(w, Unavailable("%v", err))
				return
			}
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	return mux
}

// Announce logs the bound address under the message "listening" with the
// listener's name. Tests and the dev launcher read these lines to find
// processes started on port 0, so every binary announces every listener.
func (s *Server) Announce(name string) {
	s.logger.Info("listening", "name", name, "addr", s.ln.Addr().String())
}
