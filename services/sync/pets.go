package syncsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/services/sync/petfinder"
)

// TokenSource supplies the bearer token sync presents to other services
// as itself. The sidecar will provide service-account tokens; until then
// a file (re-read on every call so that rotation needs no restart) or
// nothing.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// TokenSourceFunc adapts a function.
type TokenSourceFunc func(ctx context.Context) (string, error)

// Token implements TokenSource.
func (f TokenSourceFunc) Token(ctx context.Context) (string, error) { return f(ctx) }

// FileTokenSource reads the token from a file on every call.
type FileTokenSource struct{ Path string }

var _ TokenSource = FileTokenSource{}

// Token implements TokenSource.
func (f FileTokenSource) Token(context.Context) (string, error) {
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", f.Path)
	}
	return tok, nil
}

// UpsertResult is the answer of POST /pets:batchUpsert.
type UpsertResult struct {
	Inserted  int `json:"inserted"`
	Updated   int `json:"updated"`
	Unchanged int `json:"unchanged"`
}

// RejectedError is a 400 naming one item of the batch (field
// "pets[N]..."); the caller may drop item N and send the rest again.
type RejectedError struct {
	Index   int
	Field   string
	Message string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("pets rejected %s: %s", e.Field, e.Message)
}

// PetsConfig configures a PetsClient.
type PetsConfig struct {
	BaseURL string
	// Host, when set, is sent as the Host header: the sidecar's egress
	// listener routes by it (e.g. BaseURL http://127.0.0.1:15002, Host pets).
	Host        string
	Tokens      TokenSource // optional
	Timeout     time.Duration
	MaxAttempts int
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	Clock       petfinder.Clock
	Rand        func() float64
	Telemetry   *telemetry.Telemetry
	Transport   http.RoundTripper
}

// PetsClient writes to the pets service. It is safe for concurrent use.
type PetsClient struct {
	cfg  PetsConfig
	http *http.Client
}

type sleeper struct{}

func (sleeper) Now() time.Time { return time.Now() }
func (sleeper) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// NewPetsClient returns a client of the pets API at cfg.BaseURL.
func NewPetsClient(cfg PetsConfig) *PetsClient {
	cfg.BaseURL = strings.TrimSuffix(cfg.BaseURL, "/")
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 6
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = sleeper{}
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	base := cfg.Transport
	if base == nil {
		base = petfinder.NewTransport(cfg.Timeout)
	}
	var opts []otelhttp.Option
	if t := cfg.Telemetry; t != nil {
		opts = append(opts, otelhttp.WithTracerProvider(t.TracerProvider), otelhttp.WithMeterProvider(t.MeterProvider), otelhttp.WithPropagators(t.Propagator))
	}
	opts = append(opts, otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "pets " + r.Method + " " + r.URL.Path }))
	return &PetsClient{cfg: cfg, http: &http.Client{Transport: otelhttp.NewTransport(base, opts...)}}
}

var itemField = regexp.MustCompile(`^pets\[(\d+)\]`)

// maxRetryAfter bounds how long a Retry-After makes BatchUpsert wait.
const maxRetryAfter = time.Minute

// BatchUpsert sends pets in one request, retrying 429, 5xx and network
// errors with full-jitter backoff, and waiting at least what a
// Retry-After asks (pets answers 503 with Retry-After while its database
// is read-only or full; at most maxRetryAfter). Upserts are idempotent
// (pets keys them by source and source id), so a retry after an
// unanswered or refused request creates no duplicate.
func (c *PetsClient) BatchUpsert(ctx context.Context, pets []PetInput) (UpsertResult, error) {
	body, err := json.Marshal(map[string]any{"pets": pets})
	if err != nil {
		return UpsertResult{}, fmt.Errorf("encode batch: %w", err)
	}
	var lastErr error
	for attempt := 1; ; attempt++ {
		res, retry, retryAfter, err := c.once(ctx, body)
		if err == nil {
			return res, nil
		}
		if ctx.Err() != nil {
			return UpsertResult{}, fmt.Errorf("batch upsert: %w", ctx.Err())
		}
		lastErr = err
		if !retry {
			return UpsertResult{}, err
		}
		if attempt >= c.cfg.MaxAttempts {
			return UpsertResult{}, fmt.Errorf("batch upsert: giving up after %d attempts: %w", attempt, lastErr)
		}
		ceil := math.Min(float64(c.cfg.BaseBackoff)*math.Pow(2, float64(attempt-1)), float64(c.cfg.MaxBackoff))
		wait := time.Duration(c.cfg.Rand() * ceil)
		if retryAfter > wait {
			wait = min(retryAfter, maxRetryAfter)
		}
		if err := c.cfg.Clock.Sleep(ctx, wait); err != nil {
			return UpsertResult{}, fmt.Errorf("batch upsert: %w", err)
		}
	}
}

// once sends one attempt. It reports whether the error is worth a retry
// and the answer's Retry-After (0 without one).
func (c *PetsClient) once(ctx context.Context, body []byte) (UpsertResult, bool, time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, c.cfg.BaseURL+"/pets:batchUpsert", bytes.NewReader(body))
	if err != nil {
		return UpsertResult{}, false, 0, fmt.Errorf("build request: %w", err)
	}
	if c.cfg.Host != "" {
		req.Host = c.cfg.Host
	}
	req.Header.Set("Content-Type", "application/json")
	identity.SetHeaders(req.Header, identity.Identity{Subject: "sync", Roles: []string{identity.RoleSync}})
	if c.cfg.Tokens != nil {
		tok, err := c.cfg.Tokens.Token(actx)
		if err != nil {
			return UpsertResult{}, true, 0, fmt.Errorf("service token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return UpsertResult{}, true, 0, fmt.Errorf("batch upsert: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return UpsertResult{}, true, 0, fmt.Errorf("batch upsert: read response: %w", err)
	}
	if resp.StatusCode == http.StatusOK {
		var res UpsertResult
		if err := json.Unmarshal(b, &res); err != nil {
			return UpsertResult{}, false, 0, fmt.Errorf("batch upsert: decode response: %w", err)
		}
		return res, false, 0, nil
	}
	var e struct {
		Error struct{ Code, Message, Field string } `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	err = fmt.Errorf("batch upsert: status %d: %s %s", resp.StatusCode, e.Error.Field, e.Error.Message)
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return UpsertResult{}, true, parseRetryAfter(resp.Header.Get("Retry-After"), c.cfg.Clock.Now()), err
	case resp.StatusCode == http.StatusBadRequest:
		if m := itemField.FindStringSubmatch(e.Error.Field); m != nil {
			i, _ := strconv.Atoi(m[1])
			return UpsertResult{}, false, 0, &RejectedError{Index: i, Field: e.Error.Field, Message: e.Error.Message}
		}
		return UpsertResult{}, false, 0, err
	default:
		return UpsertResult{}, false, 0, errors.Join(err)
	}
}

// parseRetryAfter reads a Retry-After value: delay-seconds or an HTTP
// date (RFC 9110 10.2.3). Anything else, or a time in the past, is 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(min(n, 1<<20)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
