// Package petfinder is a client of the Petfinder API v2: OAuth2 client
// credentials, GET /v2/animals with pagination, and a retry policy that
// honours 429 Retry-After and backs off with full jitter on 5xx and
// network errors.
//
// Petfinder has no "updated since" filter: its after/before parameters
// filter on published_at. Query.After is that parameter; callers that want
// incremental runs pass the newest published_at they have seen.
package petfinder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// MaxLimit is the largest page size Petfinder serves.
const MaxLimit = 100

// Error kinds reported to Config.OnError (and used as metric labels).
const (
	KindRateLimited  = "rate_limited"
	KindServer       = "server"
	KindNetwork      = "network"
	KindTimeout      = "timeout"
	KindUnauthorized = "unauthorized"
	KindClient       = "client"
	KindDecode       = "decode"
	KindToken        = "token"
)

// Clock is the time source of the retry loop; tests inject one that does
// not sleep.
type Clock interface {
	Now() time.Time
	// Sleep waits d or until ctx is done, returning ctx.Err() then.
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// BaseURL is the API root without /v2, e.g. the stand-in's URL.
	BaseURL      string
	ClientID     string
	ClientSecret string
	// RequestTimeout bounds one HTTP attempt, body included. Default 30s.
	RequestTimeout time.Duration
	// MaxAttempts bounds the attempts per request (429s included).
	// Default 6.
	MaxAttempts int
	// BaseBackoff and MaxBackoff shape the full-jitter exponential
	// backoff: attempt n waits rand[0, min(MaxBackoff, BaseBackoff*2^(n-1))).
	// Defaults 500ms and 30s.
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	// MaxRetryAfter caps the wait a 429 Retry-After can ask for.
	// Default 2m.
	MaxRetryAfter time.Duration
	// Transport is the base transport; a tuned one when nil. It is
	// wrapped in an otelhttp transport either way.
	Transport      http.RoundTripper
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
	// Clock defaults to the wall clock; Rand (in [0,1)) to math/rand/v2.
	Clock Clock
	Rand  func() float64
	// OnError, when set, is called for each failed attempt with its kind.
	// It must not block.
	OnError func(kind string)
}

func (c *Config) validate() error {
	u, err := url.Parse(c.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("petfinder base url: want http(s)://host[:port], got %q", c.BaseURL)
	}
	c.BaseURL = strings.TrimSuffix(c.BaseURL, "/")
	if c.ClientID == "" || c.ClientSecret == "" {
		return errors.New("petfinder client id and secret are required")
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 6
	}
	if c.BaseBackoff <= 0 {
		c.BaseBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxRetryAfter <= 0 {
		c.MaxRetryAfter = 2 * time.Minute
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.OnError == nil {
		c.OnError = func(string) {}
	}
	return nil
}

// NewTransport returns a transport tuned for one API host: bounded dial
// and TLS handshakes, kept-alive connections, and a response-header
// timeout.
func NewTransport(responseHeaderTimeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: responseHeaderTimeout,
	}
}

// Client is a Petfinder API client. It is safe for concurrent use.
type Client struct {
	cfg  Config
	http *http.Client
	cc   clientcredentials.Config

	mu  sync.Mutex
	tok *oauth2.Token
}

// New returns a client; it does not contact the API.
func New(cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	base := cfg.Transport
	if base == nil {
		base = NewTransport(cfg.RequestTimeout)
	}
	var opts []otelhttp.Option
	if cfg.TracerProvider != nil {
		opts = append(opts, otelhttp.WithTracerProvider(cfg.TracerProvider))
	}
	if cfg.MeterProvider != nil {
		opts = append(opts, otelhttp.WithMeterProvider(cfg.MeterProvider))
	}
	if cfg.Propagator != nil {
		opts = append(opts, otelhttp.WithPropagators(cfg.Propagator))
	}
	opts = append(opts, otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
		return "petfinder " + r.Method + " " + r.URL.Path
	}))
	return &Client{
		cfg:  cfg,
		http: &http.Client{Transport: otelhttp.NewTransport(base, opts...)},
		cc: clientcredentials.Config{
			ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret,
			TokenURL:  cfg.BaseURL + "/v2/oauth2/token",
			AuthStyle: oauth2.AuthStyleInParams,
		},
	}, nil
}

// Query selects animals. Zero fields are left to Petfinder's defaults
// except Limit (MaxLimit) and Sort (-recent, oldest first, so that pages
// stay stable while animals are published during a run).
type Query struct {
	// After asks for animals published after this time.
	After time.Time
	// Statuses; Petfinder's default is adoptable only.
	Statuses []string
	Types    []string
	// Sort is recent (newest first) or -recent.
	Sort  string
	Limit int
	Page  int
}

func (q Query) values() url.Values {
	v := url.Values{}
	if !q.After.IsZero() {
		v.Set("after", q.After.UTC().Format("2006-01-02T15:04:05-07:00"))
	}
	if len(q.Statuses) > 0 {
		v.Set("status", strings.Join(q.Statuses, ","))
	}
	if len(q.Types) > 0 {
		v.Set("type", strings.Join(q.Types, ","))
	}
	sort := q.Sort
	if sort == "" {
		sort = "-recent"
	}
	v.Set("sort", sort)
	limit := q.Limit
	if limit <= 0 || limit > MaxLimit {
		limit = MaxLimit
	}
	v.Set("limit", strconv.Itoa(limit))
	page := q.Page
	if page <= 0 {
		page = 1
	}
	v.Set("page", strconv.Itoa(page))
	return v
}

// APIError is a non-2xx answer from Petfinder.
type APIError struct {
	Status     int
	Problem    Problem
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	msg := e.Problem.Detail
	if msg == "" {
		msg = e.Problem.Title
	}
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	for _, p := range e.Problem.InvalidParams {
		msg += fmt.Sprintf("; %s: %s", p.Path, p.Message)
	}
	return fmt.Sprintf("petfinder: status %d: %s", e.Status, msg)
}

// ErrAuth reports rejected client credentials or a token the API keeps
// refusing; retrying does not help.
var ErrAuth = errors.New("petfinder: authentication failed")

// Animals fetches one page.
func (c *Client) Animals(ctx context.Context, q Query) (*Page, error) {
	var page Page
	if err := c.get(ctx, "/v2/animals", q.values(), &page); err != nil {
		return nil, err
	}
	return &page, nil
}

// Each fetches q's pages in order, from q.Page (default 1) to
// pagination.total_pages, calling fn with each. It stops at the first
// error from the API or from fn.
func (c *Client) Each(ctx context.Context, q Query, fn func(ctx context.Context, p *Page) error) error {
	if q.Page <= 0 {
		q.Page = 1
	}
	for {
		p, err := c.Animals(ctx, q)
		if err != nil {
			return err
		}
		if err := fn(ctx, p); err != nil {
			return err
		}
		if q.Page >= p.Pagination.TotalPages || len(p.Animals) == 0 {
			return nil
		}
		q.Page++
	}
}

// token returns a cached access token, fetching one when there is none
// or it expires within a minute.
func (c *Client) token(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tok != nil && c.tok.AccessToken != "" && (c.tok.Expiry.IsZero() || c.cfg.Clock.Now().Add(time.Minute).Before(c.tok.Expiry)) {
		return c.tok.AccessToken, nil
	}
	tok, err := c.cc.Token(context.WithValue(ctx, oauth2.HTTPClient, c.http))
	if err != nil {
		return "", err
	}
	c.tok = tok
	return tok.AccessToken, nil
}

// dropToken forgets tok if it is still the cached one.
func (c *Client) dropToken(tok string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tok != nil && c.tok.AccessToken == tok {
		c.tok = nil
	}
}

// attemptError is the outcome of one failed attempt.
type attemptError struct {
	err   error
	kind  string
	retry bool
	wait  time.Duration // a server-requested wait (Retry-After); 0 = backoff
}

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	var last *attemptError
	refreshed := false
	for attempt := 1; ; attempt++ {
		ae := c.attempt(ctx, path, q, out)
		if ae == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("petfinder %s: %w", path, ctx.Err())
		}
		c.cfg.OnError(ae.kind)
		last = ae
		if ae.kind == KindUnauthorized && !refreshed {
			// One fresh token per request: the cached one may have been
			// revoked or have expired early.
			refreshed = true
			ae.retry = true
			ae.wait = -1
		}
		if !ae.retry {
			return fmt.Errorf("petfinder %s: %w", path, ae.err)
		}
		if attempt >= c.cfg.MaxAttempts {
			return fmt.Errorf("petfinder %s: giving up after %d attempts: %w", path, attempt, last.err)
		}
		wait := ae.wait
		switch {
		case wait < 0:
			wait = 0
		case wait == 0:
			wait = c.backoff(attempt)
		}
		if err := c.cfg.Clock.Sleep(ctx, wait); err != nil {
			return fmt.Errorf("petfinder %s: %w", path, err)
		}
	}
}

// backoff is full jitter: rand[0, min(max, base*2^(attempt-1))).
func (c *Client) backoff(attempt int) time.Duration {
	ceil := float64(c.cfg.BaseBackoff) * math.Pow(2, float64(attempt-1))
	ceil = math.Min(ceil, float64(c.cfg.MaxBackoff))
	return time.Duration(c.cfg.Rand() * ceil)
}

func (c *Client) attempt(ctx context.Context, path string, q url.Values, out any) *attemptError {
	actx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	tok, err := c.token(actx)
	if err != nil {
		return c.tokenError(err)
	}
	u := c.cfg.BaseURL + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(actx, http.MethodGet, u, nil)
	if err != nil {
		return &attemptError{err: fmt.Errorf("build request: %w", err), kind: KindClient}
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return networkError(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return networkError(err)
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, out); err != nil {
			return &attemptError{err: fmt.Errorf("decode response: %w", err), kind: KindDecode, retry: true}
		}
		return nil
	}
	apiErr := &APIError{Status: resp.StatusCode}
	_ = json.Unmarshal(body, &apiErr.Problem)
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		wait, ok := retryAfter(resp.Header.Get("Retry-After"), c.cfg.Clock.Now())
		if ok {
			wait = min(max(wait, time.Millisecond), c.cfg.MaxRetryAfter)
			apiErr.RetryAfter = wait
		}
		return &attemptError{err: apiErr, kind: KindRateLimited, retry: true, wait: wait}
	case resp.StatusCode >= 500:
		return &attemptError{err: apiErr, kind: KindServer, retry: true}
	case resp.StatusCode == http.StatusUnauthorized:
		c.dropToken(tok)
		return &attemptError{err: fmt.Errorf("%w: %w", ErrAuth, apiErr), kind: KindUnauthorized}
	default:
		return &attemptError{err: apiErr, kind: KindClient}
	}
}

func (c *Client) tokenError(err error) *attemptError {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		st := re.Response.StatusCode
		if st == http.StatusTooManyRequests || st >= 500 {
			return &attemptError{err: fmt.Errorf("token: %w", err), kind: KindToken, retry: true}
		}
		return &attemptError{err: fmt.Errorf("%w: token endpoint answered %d", ErrAuth, st), kind: KindToken}
	}
	ae := networkError(err)
	ae.err = fmt.Errorf("token: %w", ae.err)
	return ae
}

func networkError(err error) *attemptError {
	if errors.Is(err, context.DeadlineExceeded) {
		return &attemptError{err: err, kind: KindTimeout, retry: true}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &attemptError{err: err, kind: KindTimeout, retry: true}
	}
	return &attemptError{err: err, kind: KindNetwork, retry: true}
}

// retryAfter parses a Retry-After value: delay-seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return time.Duration(min(n, int64(math.MaxInt64/int64(time.Second)))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
