package standin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/petmesh/petmesh/internal/config"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/telemetry"
)

// Run is the petfinder-standin program: it parses flags (each also read
// from a PETFINDER_STANDIN_* variable), serves until ctx is done and
// drains.
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	var (
		addr, clientID, clientSecret, fixtures, faults, logLevel string
		seed, count                                              int
		tokenTTL                                                 time.Duration
	)
	fl := config.New("petfinder-standin", getenv, stderr)
	fl.String(&addr, "addr", "PETFINDER_STANDIN_ADDR", ":7010", "listen address of the stand-in API")
	fl.String(&clientID, "client-id", "PETFINDER_STANDIN_CLIENT_ID", DefaultClientID, "OAuth2 client id accepted by /v2/oauth2/token")
	fl.String(&clientSecret, "client-secret", "PETFINDER_STANDIN_CLIENT_SECRET", DefaultClientSecret, "OAuth2 client secret accepted by /v2/oauth2/token (dev value; the stand-in serves only fixtures)")
	fl.String(&fixtures, "fixtures", "PETFINDER_STANDIN_FIXTURES", "", `recorded fixture file {"animals":[...]} in the Petfinder format; empty generates -count animals from -seed`)
	fl.Int(&seed, "seed", "PETFINDER_STANDIN_SEED", 1, "seed of the generated fixtures (same seed and count, same animals)")
	fl.Int(&count, "count", "PETFINDER_STANDIN_COUNT", 250, "number of generated fixture animals")
	fl.Duration(&tokenTTL, "token-ttl", "PETFINDER_STANDIN_TOKEN_TTL", time.Hour, "lifetime of issued access tokens")
	fl.String(&faults, "faults", "PETFINDER_STANDIN_FAULTS", "", `faults injected from the start, as JSON: a fault or an array, e.g. [{"status":429,"retry_after":"1","count":2}]`)
	fl.String(&logLevel, "log-level", "PETFINDER_STANDIN_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	if err := fl.Parse(args); err != nil {
		return err
	}
	level, err := telemetry.ParseLevel(logLevel)
	if err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	if count < 0 || count > 100000 {
		return fmt.Errorf("-count: want 0..100000, got %d", count)
	}
	if seed < 0 {
		return fmt.Errorf("-seed: want a non-negative integer, got %d", seed)
	}
	if tokenTTL < time.Second {
		return fmt.Errorf("-token-ttl: want at least 1s, got %v", tokenTTL)
	}
	if clientID == "" || clientSecret == "" {
		return errors.New("-client-id and -client-secret must not be empty")
	}
	fs, err := ParseFaults(faults)
	if err != nil {
		return fmt.Errorf("-faults: %w", err)
	}
	animals := Generate(uint64(seed), count)
	if fixtures != "" {
		if animals, err = LoadFixtures(fixtures); err != nil {
			return fmt.Errorf("-fixtures: %w", err)
		}
	}

	tel, shutdown, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "petfinder-standin", LogLevel: level, LogWriter: stderr, Getenv: getenv})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = shutdown(sctx)
	}()

	s := New(Options{ClientID: clientID, ClientSecret: clientSecret, TokenTTL: tokenTTL, Animals: animals, Faults: fs, Logger: tel.Logger})
	h := s.Handler()
	if mux, ok := h.(*http.ServeMux); ok {
		h = httpx.RouteNames(mux) // server spans "GET /v2/animals" with http.route
	}
	h = httpx.Chain(h, httpx.Trace(tel, "petfinder-standin"), httpx.RequestID, httpx.Recover(tel.Logger))
	srv, err := httpx.Listen(httpx.DefaultServerConfig(addr), h, tel.Logger)
	if err != nil {
		return err
	}
	srv.Announce("http")
	tel.Logger.Info("serving fixtures", "animals", len(animals), "client_id", clientID)
	return srv.Run(ctx)
}
