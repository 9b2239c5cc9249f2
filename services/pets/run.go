package pets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/petmesh/petmesh/internal/config"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/services/pets/store"
)

// DefaultDB is the store used when neither -db nor PETS_DB is set: a
// SQLite file in the working directory.
const DefaultDB = "sqlite://./pets.db"

// Config is the configuration of the pets binary.
type Config struct {
	Addr            string
	AdminAddr       string
	DB              string
	DBMaxConns      int
	MaxBody         int
	LogLevel        string
	Instance        string
	ShutdownTimeout time.Duration
	OpenTimeout     time.Duration
	Pprof           bool
	ListCacheBytes  int
	ListCacheTTL    time.Duration
	RetryAfter      time.Duration
}

// parseConfig binds the flags to their environment variables.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	var c Config
	f := config.New("pets", getenv, out)
	f.String(&c.Addr, "addr", "PETS_ADDR", "127.0.0.1:7001", "public API listen address (loopback by default: the app trusts the identity headers of the sidecar beside it, which must be its only caller)")
	f.String(&c.AdminAddr, "admin-addr", "PETS_ADMIN_ADDR", "127.0.0.1:7101", "admin listen address (/metrics, /healthz, /readyz)")
	f.String(&c.DB, "db", "PETS_DB", DefaultDB, "store DSN: sqlite://PATH or a file path for SQLite, postgres://USER:PASS@HOST:PORT/DB?sslmode=disable for PostgreSQL")
	f.Int(&c.DBMaxConns, "db-max-conns", "PETS_DB_MAX_CONNS", 0, "database connection pool size (0: 2×GOMAXPROCS, at least 4, for SQLite; 10 for PostgreSQL)")
	f.Int(&c.MaxBody, "max-body", "PETS_MAX_BODY", DefaultMaxBody, "request body limit in bytes")
	f.String(&c.LogLevel, "log-level", "PETS_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	f.String(&c.Instance, "instance", "PETS_INSTANCE", "", "instance id reported as service.instance.id")
	f.Duration(&c.ShutdownTimeout, "shutdown-timeout", "PETS_SHUTDOWN_TIMEOUT", 20*time.Second, "how long in-flight requests may drain on shutdown")
	f.Duration(&c.OpenTimeout, "db-open-timeout", "PETS_DB_OPEN_TIMEOUT", 60*time.Second, "how long to wait for the database and its migrations at start")
	f.Bool(&c.Pprof, "pprof", "PETS_PPROF", false, "serve /debug/pprof/ on the admin listener")
	f.Int(&c.ListCacheBytes, "list-cache-bytes", "PETS_LIST_CACHE_BYTES", DefaultListCacheBytes, "size of the GET /pets response cache in bytes (0 disables it)")
	f.Duration(&c.ListCacheTTL, "list-cache-ttl", "PETS_LIST_CACHE_TTL", DefaultListCacheTTL, "longest a cached GET /pets response is served on PostgreSQL, which cannot report other instances' writes (0 disables the cache there; SQLite reports every commit and ignores it)")
	f.Duration(&c.RetryAfter, "retry-after", "PETS_RETRY_AFTER", DefaultRetryAfter, "Retry-After of the 503 answered while the database is read-only, full or unreachable (whole seconds, at least 1s)")
	if err := f.Parse(args); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// Validate checks the configuration; errors name the flag.
func (c Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("-addr: required"))
	}
	if c.AdminAddr == "" {
		errs = append(errs, errors.New("-admin-addr: required"))
	}
	if c.DB == "" {
		errs = append(errs, errors.New("-db: required"))
	}
	if c.DBMaxConns < 0 {
		errs = append(errs, fmt.Errorf("-db-max-conns: must be >= 0, got %d", c.DBMaxConns))
	}
	if c.ListCacheBytes < 0 {
		errs = append(errs, fmt.Errorf("-list-cache-bytes: must be >= 0, got %d", c.ListCacheBytes))
	}
	if c.ListCacheTTL < 0 {
		errs = append(errs, fmt.Errorf("-list-cache-ttl: must be >= 0, got %v", c.ListCacheTTL))
	}
	if c.RetryAfter < time.Second {
		errs = append(errs, fmt.Errorf("-retry-after: must be at least 1s, got %v", c.RetryAfter))
	}
	if c.MaxBody < 1024 {
		errs = append(errs, fmt.Errorf("-max-body: must be at least 1024 bytes, got %d", c.MaxBody))
	}
	if _, err := telemetry.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %w", err))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-shutdown-timeout: must be positive, got %v", c.ShutdownTimeout))
	}
	if c.OpenTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-db-open-timeout: must be positive, got %v", c.OpenTimeout))
	}
	return errors.Join(errs...)
}

// Run runs the pets service until ctx is done, then drains in-flight
// requests and closes the store.
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) (err error) {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		if errors.Is(err, config.ErrHelp) {
			return nil
		}
		return err
	}
	level, _ := telemetry.ParseLevel(cfg.LogLevel)
	tel, shutdown, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: "pets", InstanceID: cfg.Instance, LogLevel: level, LogWriter: stderr, Getenv: getenv,
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
	log := tel.Logger

	octx, cancel := context.WithTimeout(ctx, cfg.OpenTimeout)
	st, err := store.Open(octx, cfg.DB, store.Options{
		Tracer:       tel.Tracer("github.com/petmesh/petmesh/services/pets/store"),
		Registerer:   tel.Registry,
		MaxOpenConns: cfg.DBMaxConns,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("-db: %w", err)
	}
	defer func() {
		if cerr := st.Close(); cerr != nil {
			log.Warn("close store", "error", cerr)
		}
	}()
	log.Info("store open", "system", st.System())

	h, err := NewHandler(st, tel, HandlerOptions{
		MaxBody:        int64(cfg.MaxBody),
		ListCacheBytes: int64(cfg.ListCacheBytes),
		ListCacheTTL:   cfg.ListCacheTTL,
		RetryAfter:     cfg.RetryAfter,
	})
	if err != nil {
		return err
	}
	switch {
	case cfg.ListCacheBytes == 0:
		log.Info("list cache off")
	case st.DataVersionShared():
		log.Info("list cache on", "bytes", cfg.ListCacheBytes, "invalidation", "data_version")
	case cfg.ListCacheTTL > 0:
		log.Info("list cache on", "bytes", cfg.ListCacheBytes, "invalidation", "own writes and ttl", "ttl", cfg.ListCacheTTL.String())
	default:
		log.Info("list cache off", "reason", "-list-cache-ttl 0 on a store that cannot see other instances' writes")
	}
	apiCfg := httpx.DefaultServerConfig(cfg.Addr)
	apiCfg.ShutdownTimeout = cfg.ShutdownTimeout
	apiSrv, err := httpx.Listen(apiCfg, h, log)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	var ready httpx.Readiness
	ready.SetCheck(st.Ping)
	adminMux := httpx.AdminMux(tel.MetricsHandler(), &ready)
	if cfg.Pprof {
		adminMux.HandleFunc("/debug/pprof/", pprof.Index)
		adminMux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		adminMux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		adminMux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		adminMux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	adminCfg := httpx.DefaultServerConfig(cfg.AdminAddr)
	adminCfg.WriteTimeout = 2 * time.Minute // long enough for a CPU profile
	adminSrv, err := httpx.Listen(adminCfg, adminMux, log)
	if err != nil {
		return fmt.Errorf("-admin-addr: %w", err)
	}
	apiSrv.Announce("http")
	adminSrv.Announce("admin")
	ready.SetReady(true)

	return serve(ctx, log, &ready, apiSrv, adminSrv)
}

// serve runs the servers until ctx is done or one fails, then stops them
// all and waits for them.
func serve(ctx context.Context, log *slog.Logger, ready *httpx.Readiness, srvs ...*httpx.Server) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(srvs))
	var wg sync.WaitGroup
	for i, s := range srvs {
		wg.Go(func() {
			if err := s.Run(ctx); err != nil {
				errs[i] = fmt.Errorf("serve %s: %w", s.Addr(), err)
			}
			cancel() // one server down stops the others
		})
	}
	<-ctx.Done()
	ready.SetReady(false)
	log.Info("shutting down")
	wg.Wait()
	return errors.Join(errs...)
}
