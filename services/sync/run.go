package syncsvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/petmesh/petmesh/internal/config"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/services/sync/petfinder"
)

// Config is the sync process configuration.
type Config struct {
	Addr, AdminAddr       string
	DB                    string
	PetfinderURL          string
	ClientID              string
	ClientSecret          string
	ClientSecretFile      string
	PetfinderTimeout      time.Duration
	MaxAttempts           int
	PageLimit             int
	Interval              time.Duration
	Cron                  string
	RunAtStart            bool
	Jitter                time.Duration
	Overlap               time.Duration
	FullEvery             time.Duration
	PetsURL               string
	PetsHost              string
	BatchSize             int
	TokenFile             string
	LockFile              string
	ConsulAddr, ConsulKey string
	Instance              string
	LogLevel              string
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	var c Config
	host, _ := os.Hostname()
	fl := config.New("sync", getenv, stderr)
	fl.String(&c.Addr, "addr", "SYNC_ADDR", "127.0.0.1:7002", "listen address of the sync API (loopback by default: the app trusts the identity headers of the sidecar beside it, which must be its only caller)")
	fl.String(&c.AdminAddr, "admin-addr", "SYNC_ADMIN_ADDR", "127.0.0.1:7102", "listen address of the admin endpoints (/metrics /healthz /readyz)")
	fl.String(&c.DB, "db", "SYNC_DB", "sync.db", "SQLite file holding the run history (WAL; may be shared by instances on one machine)")
	fl.String(&c.PetfinderURL, "petfinder-url", "SYNC_PETFINDER_URL", "http://127.0.0.1:7010", "base URL of the Petfinder API (without /v2); the default is the local stand-in")
	fl.String(&c.ClientID, "petfinder-client-id", "SYNC_PETFINDER_CLIENT_ID", "petmesh-dev", "Petfinder OAuth2 client id (API key)")
	fl.String(&c.ClientSecretFile, "petfinder-client-secret-file", "SYNC_PETFINDER_CLIENT_SECRET_FILE", "", "file holding the Petfinder client secret; or set SYNC_PETFINDER_CLIENT_SECRET (environment only)")
	fl.Duration(&c.PetfinderTimeout, "petfinder-timeout", "SYNC_PETFINDER_TIMEOUT", 30*time.Second, "timeout of one Petfinder request attempt")
	fl.Int(&c.MaxAttempts, "max-attempts", "SYNC_MAX_ATTEMPTS", 6, "attempts per Petfinder or pets request before a run fails")
	fl.Int(&c.PageLimit, "page-limit", "SYNC_PAGE_LIMIT", 100, "animals per Petfinder page (1..100)")
	fl.Duration(&c.Interval, "interval", "SYNC_INTERVAL", 24*time.Hour, "interval between scheduled runs (ignored when -cron is set)")
	fl.String(&c.Cron, "cron", "SYNC_CRON", "", "cron expression (5 fields or @daily...) for scheduled runs, in UTC; overrides -interval")
	fl.Bool(&c.RunAtStart, "run-at-start", "SYNC_RUN_AT_START", false, "start a run as soon as the process starts")
	fl.Duration(&c.Jitter, "jitter", "SYNC_JITTER", time.Minute, "random delay in [0, jitter) added to every scheduled run")
	fl.Duration(&c.Overlap, "overlap", "SYNC_OVERLAP", time.Hour, "incremental runs ask for animals published after (last high-water mark - overlap)")
	fl.Duration(&c.FullEvery, "full-sync-every", "SYNC_FULL_SYNC_EVERY", 7*24*time.Hour, "force a full run when the last full success is older (0 disables)")
	fl.String(&c.PetsURL, "pets-url", "SYNC_PETS_URL", "http://127.0.0.1:7001", "base URL of the pets service")
	fl.String(&c.PetsHost, "pets-host", "SYNC_PETS_HOST", "", "Host header sent to pets; set it to pets when -pets-url is the sidecar's egress listener (empty: the host of -pets-url)")
	fl.Int(&c.BatchSize, "batch-size", "SYNC_BATCH_SIZE", 100, "pets per POST /pets:batchUpsert (1..500)")
	fl.String(&c.TokenFile, "token-file", "SYNC_TOKEN_FILE", "", "file holding the bearer token sent to pets (re-read on every request); none when empty")
	fl.String(&c.LockFile, "lock-file", "SYNC_LOCK_FILE", "", "flock file electing the single executor (default: <db>.lock); unused with -consul-addr")
	fl.String(&c.ConsulAddr, "consul-addr", "SYNC_CONSUL_ADDR", "", "Consul HTTP address; when set the executor is elected with a Consul session lock")
	fl.String(&c.ConsulKey, "consul-lock-key", "SYNC_CONSUL_LOCK_KEY", "petmesh/sync/leader", "Consul KV key of the executor lock")
	fl.String(&c.Instance, "instance", "SYNC_INSTANCE", host, "instance name recorded in runs and in the lock")
	fl.String(&c.LogLevel, "log-level", "SYNC_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	if err := fl.Parse(args); err != nil {
		return c, err
	}
	c.ClientSecret = getenv("SYNC_PETFINDER_CLIENT_SECRET")
	if c.ClientSecretFile != "" {
		b, err := os.ReadFile(c.ClientSecretFile)
		if err != nil {
			return c, fmt.Errorf("-petfinder-client-secret-file: %w", err)
		}
		c.ClientSecret = strings.TrimSpace(string(b))
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	var errs []error
	for _, u := range []struct{ flag, v string }{{"-petfinder-url", c.PetfinderURL}, {"-pets-url", c.PetsURL}} {
		p, err := url.Parse(u.v)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			errs = append(errs, fmt.Errorf("%s: want http(s)://host[:port], got %q", u.flag, u.v))
		}
	}
	if c.ClientID == "" {
		errs = append(errs, errors.New("-petfinder-client-id: required"))
	}
	if c.ClientSecret == "" {
		errs = append(errs, errors.New("-petfinder-client-secret-file or SYNC_PETFINDER_CLIENT_SECRET: required"))
	}
	if c.PageLimit < 1 || c.PageLimit > petfinder.MaxLimit {
		errs = append(errs, fmt.Errorf("-page-limit: want 1..100, got %d", c.PageLimit))
	}
	if c.BatchSize < 1 || c.BatchSize > 500 {
		errs = append(errs, fmt.Errorf("-batch-size: want 1..500, got %d", c.BatchSize))
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > 100 {
		errs = append(errs, fmt.Errorf("-max-attempts: want 1..100, got %d", c.MaxAttempts))
	}
	if c.Cron == "" && c.Interval < time.Second {
		errs = append(errs, fmt.Errorf("-interval: want at least 1s, got %v", c.Interval))
	}
	if c.Cron != "" {
		if _, err := ParseCron(c.Cron); err != nil {
			errs = append(errs, fmt.Errorf("-cron: %w", err))
		}
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"-jitter", c.Jitter}, {"-overlap", c.Overlap}, {"-full-sync-every", c.FullEvery}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %v", d.flag, d.v))
		}
	}
	if c.PetfinderTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-petfinder-timeout: must be positive, got %v", c.PetfinderTimeout))
	}
	if c.DB == "" {
		errs = append(errs, errors.New("-db: required"))
	}
	if c.LockFile == "" {
		c.LockFile = c.DB + ".lock"
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %w", err))
	}
	return errors.Join(errs...)
}

// Run is the sync program.
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	level, _ := telemetry.ParseLevel(cfg.LogLevel)
	tel, shutdown, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "sync", InstanceID: cfg.Instance, LogLevel: level, LogWriter: stderr, Getenv: getenv})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = shutdown(sctx)
	}()
	logger := tel.Logger

	if dir := filepath.Dir(cfg.DB); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("-db: %w", err)
		}
	}
	store, err := OpenStore(ctx, cfg.DB)
	if err != nil {
		return fmt.Errorf("-db: %w", err)
	}
	defer store.Close()

	var locker Locker = &FileLocker{Path: cfg.LockFile}
	if cfg.ConsulAddr != "" {
		cc := consul.DefaultConfig()
		cc.Address = cfg.ConsulAddr
		client, err := consul.NewClient(cc)
		if err != nil {
			return fmt.Errorf("-consul-addr: %w", err)
		}
		locker = &ConsulLocker{Client: client, Key: cfg.ConsulKey, Holder: cfg.Instance}
	}

	metrics := NewMetrics(tel.Registry)
	pf, err := petfinder.New(petfinder.Config{
		BaseURL: cfg.PetfinderURL, ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret,
		RequestTimeout: cfg.PetfinderTimeout, MaxAttempts: cfg.MaxAttempts,
		TracerProvider: tel.TracerProvider, MeterProvider: tel.MeterProvider, Propagator: tel.Propagator,
		OnError: func(kind string) { metrics.PetfinderErrors.WithLabelValues(kind).Inc() },
	})
	if err != nil {
		return fmt.Errorf("-petfinder-url: %w", err)
	}
	var tokens TokenSource
	if cfg.TokenFile != "" {
		tokens = FileTokenSource{Path: cfg.TokenFile}
	}
	pets := NewPetsClient(PetsConfig{BaseURL: cfg.PetsURL, Host: cfg.PetsHost, Tokens: tokens, MaxAttempts: cfg.MaxAttempts, Telemetry: tel})

	syncer := NewSyncer(Options{
		Store: store, Locker: locker, Source: pf, Pets: pets, BatchSize: cfg.BatchSize, PageLimit: cfg.PageLimit,
		Overlap: cfg.Overlap, FullEvery: cfg.FullEvery, Instance: cfg.Instance, Logger: logger, Metrics: metrics,
		Tracer: tel.Tracer("github.com/petmesh/petmesh/services/sync"),
	})
	if err := syncer.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile interrupted runs: %w", err)
	}

	var schedule Schedule = Every(cfg.Interval)
	if cfg.Cron != "" {
		schedule, _ = ParseCron(cfg.Cron)
	}
	sched := &Scheduler{
		Schedule: schedule, Jitter: cfg.Jitter, RunAtStart: cfg.RunAtStart, Logger: logger,
		Fire: func(ctx context.Context, trigger string) {
			run, err := syncer.Trigger(ctx, trigger, false)
			switch {
			case errors.Is(err, ErrRunning):
				logger.Info("scheduled run skipped: another run is in progress", "trigger", trigger)
			case err != nil && ctx.Err() == nil:
				logger.Error("scheduled run not started", "trigger", trigger, "err", err)
			case err == nil:
				logger.Debug("scheduled run started", "run", run.ID)
			}
		},
	}

	api := &API{Syncer: syncer, Store: store}
	h := httpx.Chain(api.Handler(), httpx.Standard(tel, "sync", 64<<10))
	srv, err := httpx.Listen(httpx.DefaultServerConfig(cfg.Addr), h, logger)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	var ready httpx.Readiness
	ready.SetCheck(store.Ping)
	admin, err := httpx.Listen(httpx.DefaultServerConfig(cfg.AdminAddr), httpx.AdminMux(tel.MetricsHandler(), &ready), logger)
	if err != nil {
		return fmt.Errorf("-admin-addr: %w", err)
	}
	srv.Announce("http")
	admin.Announce("admin")
	ready.SetReady(true)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, f := range []func(context.Context) error{syncer.Run, srv.Run, admin.Run} {
		wg.Go(func() { errs <- f(ctx) })
	}
	wg.Go(func() {
		defer func() {
			if p := recover(); p != nil {
				errs <- fmt.Errorf("scheduler panicked: %v", p)
			}
		}()
		errs <- sched.Run(ctx)
	})
	var first error
	select {
	case <-ctx.Done():
	case first = <-errs:
	}
	ready.SetReady(false)
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		first = errors.Join(first, err)
	}
	return first
}
