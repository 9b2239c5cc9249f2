// Package svctoken is a service's own identity on egress: it fetches an
// access token for the service account with the OAuth2 client-credentials
// grant at the edge's token endpoint (POST /auth/token), caches it, refreshes
// it in the background before it expires (retrying failures with exponential
// backoff while the cached token is still valid) and attaches it as
// "Authorization: Bearer" to outgoing requests that carry none.
//
// The sidecar uses a Source on its outbound listener; a service can use one
// directly (Source.Token satisfies a `Token(ctx) (string, error)` interface,
// Source.Transport wraps an http.RoundTripper).
package svctoken

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Config.
const (
	DefaultRefreshBefore = time.Minute
	DefaultMinBackoff    = 250 * time.Millisecond
	DefaultMaxBackoff    = 30 * time.Second
	DefaultTimeout       = 5 * time.Second
	// maxBody bounds the token endpoint's answer.
	maxBody = 64 << 10
)

// ErrNoToken is returned (wrapped) by Token when no valid token could be
// obtained.
var ErrNoToken = errors.New("svctoken: no valid token")

// Config configures a Source.
type Config struct {
	// TokenURL is the token endpoint, e.g. http://127.0.0.1:8080/auth/token.
	TokenURL string
	// ClientID is the service account's client_id.
	ClientID string
	// ClientSecret is the service account's secret. With ClientSecretFile
	// set instead, the file is read on every fetch (trailing white space
	// trimmed), so a rotated secret needs no restart.
	ClientSecret     string
	ClientSecretFile string
	// RefreshBefore: a token is refreshed when this much of its lifetime
	// is left, but never later than half-way through it. Default 1m.
	RefreshBefore time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failed fetch
	// (doubling, with jitter in [d/2, d)). Defaults 250ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Client makes the token requests; by default a dedicated client with
	// a 5s timeout that does not follow redirects.
	Client *http.Client
	// Now is the clock that decides expiry; time.Now when nil.
	Now func() time.Time
	// Logger receives fetch failures (never the token or the secret).
	Logger *slog.Logger
	// Registerer receives the petmesh_svctoken_* metrics; none when nil.
	Registerer prometheus.Registerer
}

// Source fetches and caches the service account's token. It is safe for
// concurrent use. Run keeps the token fresh; without Run, Token fetches on
// demand.
type Source struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	tok      string
	exp      time.Time // expiry by the token endpoint's expires_in
	lifetime time.Duration
	inflight chan struct{} // closed when the fetch in progress ends
	lastErr  error

	fetches *prometheus.CounterVec
	expiry  prometheus.Gauge
}

// New validates cfg and returns a Source. It does not fetch.
func New(cfg Config) (*Source, error) {
	u, err := url.Parse(cfg.TokenURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("svctoken: token url %q: want an absolute http(s) url", cfg.TokenURL)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("svctoken: client id is required")
	}
	if (cfg.ClientSecret == "") == (cfg.ClientSecretFile == "") {
		return nil, errors.New("svctoken: set exactly one of client secret and client secret file")
	}
	if cfg.RefreshBefore <= 0 {
		cfg.RefreshBefore = DefaultRefreshBefore
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout: DefaultTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Source{cfg: cfg, log: log}
	s.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "petmesh_svctoken_fetches_total",
		Help: "Token fetches at the token endpoint by result (ok, error).",
	}, []string{"result"})
	s.expiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "petmesh_svctoken_expiry_timestamp_seconds",
		Help: "Expiry (Unix seconds) of the cached service token; 0 without one.",
	})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.fetches, s.expiry} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("svctoken: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Token returns a valid token: the cached one, or a freshly fetched one
// when there is none or it has expired (concurrent callers share one
// fetch). The error wraps ErrNoToken and the fetch failure.
func (s *Source) Token(ctx context.Context) (string, error) {
	for {
		s.mu.Lock()
		if s.tok != "" && s.cfg.Now().Before(s.exp) {
			tok := s.tok
			s.mu.Unlock()
			return tok, nil
		}
		wait := s.inflight
		if wait == nil {
			s.mu.Unlock()
			if err := s.fetch(ctx); err != nil {
				return "", fmt.Errorf("%w: %w", ErrNoToken, err)
			}
			continue
		}
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", ErrNoToken, ctx.Err())
		}
		s.mu.Lock()
		ok := s.tok != "" && s.cfg.Now().Before(s.exp)
		err := s.lastErr
		s.mu.Unlock()
		if !ok && err != nil {
			return "", fmt.Errorf("%w: %w", ErrNoToken, err)
		}
	}
}

// Ready reports whether a valid token is cached.
func (s *Source) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tok != "" && s.cfg.Now().Before(s.exp)
}

// Run fetches a token now and refreshes it before it expires until ctx is
// done; failed fetches are retried with exponential backoff while the
// cached token (if any) keeps being served. It returns nil when ctx ends.
func (s *Source) Run(ctx context.Context) error {
	backoff := s.cfg.MinBackoff
	for {
		var wait time.Duration
		if err := s.fetch(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, s.cfg.MaxBackoff)
			s.log.Warn("service token fetch failed; retrying", "client_id", s.cfg.ClientID, "error", err, "retry_in", wait)
		} else {
			backoff = s.cfg.MinBackoff
			wait = s.refreshIn()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// refreshIn is how long until the cached token should be refreshed.
func (s *Source) refreshIn() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	before := min(s.cfg.RefreshBefore, s.lifetime/2)
	return max(s.exp.Sub(s.cfg.Now())-before, 0)
}

// fetch gets a new token from the endpoint, or waits for a fetch already in
// progress. Either way it returns that fetch's error.
func (s *Source) fetch(ctx context.Context) error {
	s.mu.Lock()
	if wait := s.inflight; wait != nil {
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.lastErr
	}
	done := make(chan struct{})
	s.inflight = done
	s.mu.Unlock()

	// The fetch is shared: it must not be cut short by one caller's ctx
	// being canceled, only bounded by the client's timeout.
	tok, lifetime, err := s.request(context.WithoutCancel(ctx))
	now := s.cfg.Now()

	s.mu.Lock()
	s.inflight = nil
	s.lastErr = err
	if err == nil {
		s.tok, s.lifetime, s.exp = tok, lifetime, now.Add(lifetime)
		s.fetches.WithLabelValues("ok").Inc()
		s.expiry.Set(float64(s.exp.Unix()))
	} else {
		s.fetches.WithLabelValues("error").Inc()
	}
	close(done)
	s.mu.Unlock()
	return err
}

// tokenError is the OAuth2 error body.
type tokenError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
}

// request performs one client-credentials exchange.
func (s *Source) request(ctx context.Context) (string, time.Duration, error) {
	secret := s.cfg.ClientSecret
	if s.cfg.ClientSecretFile != "" {
		b, err := os.ReadFile(s.cfg.ClientSecretFile)
		if err != nil {
			return "", 0, fmt.Errorf("read client secret: %w", err)
		}
		secret = strings.TrimSpace(string(b))
		if secret == "" {
			return "", 0, fmt.Errorf("client secret file %s is empty", s.cfg.ClientSecretFile)
		}
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {s.cfg.ClientID}, "client_secret": {secret}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, fmt.Errorf("token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("token request: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return "", 0, fmt.Errorf("token response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var te tokenError
		if json.Unmarshal(body, &te) == nil && te.Error != "" {
			return "", 0, fmt.Errorf("token endpoint: %s: %s: %s", resp.Status, te.Error, te.Description)
		}
		return "", 0, fmt.Errorf("token endpoint: %s", resp.Status)
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return "", 0, fmt.Errorf("token response: %w", err)
	}
	if tr.AccessToken == "" {
		return "", 0, errors.New("token response: no access_token")
	}
	if !strings.EqualFold(tr.TokenType, "bearer") {
		return "", 0, fmt.Errorf("token response: token_type %q, want Bearer", tr.TokenType)
	}
	if tr.ExpiresIn <= 0 {
		return "", 0, fmt.Errorf("token response: expires_in %d, want a positive number of seconds", tr.ExpiresIn)
	}
	return tr.AccessToken, time.Duration(tr.ExpiresIn) * time.Second, nil
}

// Transport returns a RoundTripper that sets "Authorization: Bearer
// <token>" on requests without an Authorization header, then calls base
// (http.DefaultTransport when nil). A request that cannot get a token fails
// with the error (wrapping ErrNoToken).
func (s *Source) Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return roundTripper{s: s, base: base}
}

type roundTripper struct {
	s    *Source
	base http.RoundTripper
}

func (t roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Authorization") != "" {
		return t.base.RoundTrip(r)
	}
	tok, err := t.s.Token(r.Context())
	if err != nil {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, err
	}
	r2 := r.Clone(r.Context())
	r2.Header.Set("Authorization", "Bearer "+tok)
	return t.base.RoundTrip(r2)
}
