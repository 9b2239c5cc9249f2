// Package stats is the petmesh statistics service: it ingests request
// events posted by the edge, keeps pre-aggregated latency histograms in
// SQLite, and serves request and pet statistics.
package stats

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"golang.org/x/sync/errgroup"

	"github.com/petmesh/petmesh/internal/config"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/services/stats/store"
)

// Config is the stats service configuration.
type Config struct {
	Addr              string
	AdminAddr         string
	DBPath            string
	Retention         time.Duration
	RetentionInterval time.Duration
	PetsURL           string
	PetsHost          string
	PetsCacheTTL      time.Duration
	PetsTimeout       time.Duration
	QueueSize         int
	BatchSize         int
	FlushInterval     time.Duration
	LogLevel          string
}

// minRetention is the shortest retention: the 1h window must be served.
const minRetention = time.Hour

// Validate checks the configuration; errors name the flag.
func (c *Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("-addr: required"))
	}
	if c.AdminAddr == "" {
		errs = append(errs, errors.New("-admin-addr: required"))
	}
	if c.DBPath == "" {
		errs = append(errs, errors.New("-db: required"))
	} else if strings.ContainsAny(c.DBPath, "?#") {
		errs = append(errs, fmt.Errorf("-db: a file path without ? or #, got %q", c.DBPath))
	}
	if c.Retention < minRetention {
		errs = append(errs, fmt.Errorf("-retention: want at least %v, got %v", minRetention, c.Retention))
	}
	if c.RetentionInterval <= 0 {
		errs = append(errs, fmt.Errorf("-retention-interval: want > 0, got %v", c.RetentionInterval))
	}
	if u, err := url.Parse(c.PetsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("-pets-url: want an http(s) URL, got %q", c.PetsURL))
	}
	if c.PetsCacheTTL < 0 {
		errs = append(errs, fmt.Errorf("-pets-cache-ttl: want >= 0, got %v", c.PetsCacheTTL))
	}
	if c.PetsTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-pets-timeout: want > 0, got %v", c.PetsTimeout))
	}
	if c.QueueSize < MaxBatch {
		errs = append(errs, fmt.Errorf("-queue-size: want at least %d (one full batch), got %d", MaxBatch, c.QueueSize))
	}
	if c.BatchSize < 1 {
		errs = append(errs, fmt.Errorf("-batch-size: want >= 1, got %d", c.BatchSize))
	}
	if c.FlushInterval <= 0 {
		errs = append(errs, fmt.Errorf("-flush-interval: want > 0, got %v", c.FlushInterval))
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %w", err))
	}
	return errors.Join(errs...)
}

// ParseConfig reads flags and STATS_* environment variables.
func ParseConfig(args []string, getenv func(string) string, out io.Writer) (*Config, error) {
	var c Config
	f := config.New("stats", getenv, out)
	f.String(&c.Addr, "addr", "STATS_ADDR", "127.0.0.1:7003", "public API listen address (loopback by default: the app trusts the identity headers of the sidecar beside it, which must be its only caller)")
	f.String(&c.AdminAddr, "admin-addr", "STATS_ADMIN_ADDR", "127.0.0.1:7103", "admin listen address (/metrics, /healthz, /readyz)")
	f.String(&c.DBPath, "db", "STATS_DB", "stats.db", "SQLite database file (WAL mode; created if missing)")
	f.Duration(&c.Retention, "retention", "STATS_RETENTION", 7*24*time.Hour+time.Hour, "how long aggregates and pet views are kept (at least 1h)")
	f.Duration(&c.RetentionInterval, "retention-interval", "STATS_RETENTION_INTERVAL", time.Minute, "how often expired rows are deleted")
	f.String(&c.PetsURL, "pets-url", "STATS_PETS_URL", "http://127.0.0.1:7001", "base URL of the pets API")
	f.String(&c.PetsHost, "pets-host", "STATS_PETS_HOST", "", "Host header sent to pets; set it to pets when -pets-url is the sidecar's egress listener (empty: the host of -pets-url)")
	f.Duration(&c.PetsCacheTTL, "pets-cache-ttl", "STATS_PETS_CACHE_TTL", 60*time.Second, "how long pet counts read from the pets API are cached (0: no caching)")
	f.Duration(&c.PetsTimeout, "pets-timeout", "STATS_PETS_TIMEOUT", 10*time.Second, "timeout of one request to the pets API")
	f.Int(&c.QueueSize, "queue-size", "STATS_QUEUE_SIZE", 100000, "ingest queue capacity in events; POST /events answers 503 when full")
	f.Int(&c.BatchSize, "batch-size", "STATS_BATCH_SIZE", 5000, "most events written to SQLite in one transaction")
	f.Duration(&c.FlushInterval, "flush-interval", "STATS_FLUSH_INTERVAL", 500*time.Millisecond, "how often queued events are written (earlier when a batch is full)")
	f.String(&c.LogLevel, "log-level", "STATS_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	if err := f.Parse(args); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Run runs the stats service until ctx is done, then drains HTTP, flushes
// the ingest queue and closes the database.
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := ParseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	level, _ := telemetry.ParseLevel(cfg.LogLevel)
	tel, shutdown, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "stats", LogLevel: level, LogWriter: stderr, Getenv: getenv})
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
	return serve(ctx, cfg, tel, time.Now)
}

// Service is an assembled stats service: store, queue, writer and HTTP
// handlers. Tests build one with New and drive it without sockets.
type Service struct {
	cfg    *Config
	tel    *telemetry.Telemetry
	Store  *store.Store
	Queue  *Queue
	Server *Server
	writer *Writer
	now    func() time.Time
}

// New opens the store and wires the service. The caller must Close it.
func New(ctx context.Context, cfg *Config, tel *telemetry.Telemetry, now func() time.Time) (*Service, error) {
	st, err := store.Open(ctx, cfg.DBPath)
	if err != nil {
		return nil, err
	}
	q := NewQueue(cfg.QueueSize, cfg.BatchSize)
	m, err := newMetrics(tel.Registry, q)
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = 16
	hc := &http.Client{
		Timeout: cfg.PetsTimeout,
		Transport: otelhttp.NewTransport(base,
			otelhttp.WithTracerProvider(tel.TracerProvider),
			otelhttp.WithMeterProvider(tel.MeterProvider),
			otelhttp.WithPropagators(tel.Propagator)),
	}
	pets := &PetsClient{base: strings.TrimRight(cfg.PetsURL, "/"), host: cfg.PetsHost, hc: hc, ttl: cfg.PetsCacheTTL, now: now, logger: tel.Logger, m: m}
	return &Service{
		cfg: cfg, tel: tel, Store: st, Queue: q, now: now,
		Server: &Server{store: st, queue: q, pets: pets, m: m, retention: cfg.Retention, now: now, logger: tel.Logger},
		writer: &Writer{q: q, st: st, interval: cfg.FlushInterval, batch: cfg.BatchSize, m: m, logger: tel.Logger},
	}, nil
}

// Handler is the public API with the standard middleware.
func (s *Service) Handler() http.Handler {
	return httpx.Standard(s.tel, "stats", MaxEventsBody)(s.Server.Routes())
}

// RunWriter runs the writer until ctx is done, then flushes the queue.
func (s *Service) RunWriter(ctx context.Context) { s.writer.Run(ctx) }

// RunRetention deletes expired rows every interval until ctx is done. A
// panic in one pass is logged and the loop goes on.
func (s *Service) RunRetention(ctx context.Context) {
	t := time.NewTicker(s.cfg.RetentionInterval)
	defer t.Stop()
	for {
		s.prune(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Service) prune(ctx context.Context) {
	defer func() {
		if v := recover(); v != nil {
			s.tel.Logger.ErrorContext(ctx, "panic in retention pass", "panic", fmt.Sprint(v))
		}
	}()
	n, err := s.Store.Prune(ctx, s.now(), s.cfg.Retention)
	if err != nil {
		if ctx.Err() == nil {
			s.tel.Logger.ErrorContext(ctx, "retention pass failed", "err", err)
		}
		return
	}
	s.Server.m.pruned.Add(float64(n))
	if n > 0 {
		s.tel.Logger.DebugContext(ctx, "retention pass", "deleted_rows", n)
	}
}

// Close closes the store.
func (s *Service) Close() error { return s.Store.Close() }

func serve(ctx context.Context, cfg *Config, tel *telemetry.Telemetry, now func() time.Time) error {
	logger := tel.Logger
	svc, err := New(ctx, cfg, tel, now)
	if err != nil {
		return err
	}
	defer func() {
		if err := svc.Close(); err != nil {
			logger.Warn("close database", "err", err)
		}
	}()

	var ready httpx.Readiness
	ready.SetCheck(svc.Store.Ping)
	api, err := httpx.Listen(httpx.DefaultServerConfig(cfg.Addr), svc.Handler(), logger)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	admin, err := httpx.Listen(httpx.DefaultServerConfig(cfg.AdminAddr), httpx.AdminMux(tel.MetricsHandler(), &ready), logger)
	if err != nil {
		closed, cancel := context.WithCancel(ctx)
		cancel()
		_ = api.Run(closed) // releases the API listener
		return fmt.Errorf("-admin-addr: %w", err)
	}

	// The writer outlives the HTTP servers: it stops only once no request
	// can enqueue any more, and then flushes what is queued.
	wctx, stopWriter := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWriter()
	var wg sync.WaitGroup
	wg.Go(func() { svc.RunWriter(wctx) })

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { svc.RunRetention(gctx); return nil })
	g.Go(func() error { return api.Run(gctx) })
	g.Go(func() error { return admin.Run(gctx) })
	api.Announce("http")
	admin.Announce("admin")
	ready.SetReady(true)
	logger.Info("stats started", "db", cfg.DBPath, "pets_url", cfg.PetsURL, "retention", cfg.Retention.String())

	err = g.Wait()
	ready.SetReady(false)
	pending := svc.Queue.Len()
	stopWriter()
	wg.Wait()
	logger.Info("stats stopped", "flushed_events", pending)
	return err
}
