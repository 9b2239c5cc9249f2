package jwtauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/petmesh/petmesh/internal/periodic"
)

// RemoteJWKS defaults.
const (
	DefaultJWKSRefresh       = 5 * time.Minute
	DefaultJWKSRefetchCool   = 15 * time.Second
	DefaultJWKSMaxBytes      = 1 << 20
	DefaultJWKSFetchTimeout  = 10 * time.Second
	defaultJWKSRetryMinDelay = time.Second
	// After a failed fetch an unknown kid may refetch sooner than the
	// cooldown (Envoy's async_fetch.failed_refetch_duration is 1 s), and
	// sooner still while no key set has ever been fetched: a verifier
	// started before its issuer would otherwise refuse every valid token
	// for a whole cooldown.
	jwksFailedRefetchCool   = time.Second
	jwksNotReadyRefetchCool = 100 * time.Millisecond
)

// RemoteJWKSConfig configures a RemoteJWKS.
type RemoteJWKSConfig struct {
	// URL of the JWKS document (http or https). This is the only place keys
	// are ever fetched from: jku/x5u headers in tokens are never followed.
	URL string
	// RefreshInterval is the background refresh period (Run).
	RefreshInterval time.Duration
	// RefetchCooldown is the minimum time between two fetches; a token
	// with an unknown kid triggers a fetch only when it has passed, so a
	// flood of random kids costs at most one fetch per cooldown.
	RefetchCooldown time.Duration
	// MaxBytes bounds the response body.
	MaxBytes int64
	// Timeout bounds one fetch (dial, TLS, headers and body).
	Timeout time.Duration
	// Client overrides the HTTP client (tests, custom TLS roots); by default
	// a dedicated client with timeouts that does not follow redirects.
	Client *http.Client
	Now    func() time.Time
	Logger *slog.Logger
}

// RemoteJWKS is a KeySource backed by a remote JWKS URL: refreshed in the
// background by Run, refetched on an unknown kid (with a cooldown), and the
// last good key set kept when a fetch fails. Safe for concurrent use.
type RemoteJWKS struct {
	cfg    RemoteJWKSConfig
	client *http.Client
	keys   atomic.Pointer[map[string]*PublicKey]
	sem    chan struct{} // one fetch at a time; guards the fields below

	lastAttempt time.Time
	lastFailed  bool
	etag        string

	fetches, failures atomic.Uint64
}

var _ KeySource = (*RemoteJWKS)(nil)

// NewRemoteJWKS validates cfg. It does not fetch: call Run (or let the first
// unknown kid trigger a fetch).
func NewRemoteJWKS(cfg RemoteJWKSConfig) (*RemoteJWKS, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("remote jwks: url %q: want an absolute http or https URL", cfg.URL)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.RefreshInterval, DefaultJWKSRefresh)
	def(&cfg.RefetchCooldown, DefaultJWKSRefetchCool)
	def(&cfg.Timeout, DefaultJWKSFetchTimeout)
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultJWKSMaxBytes
	}
	switch {
	case cfg.RefreshInterval < time.Second:
		return nil, fmt.Errorf("remote jwks: refresh interval %s: want at least 1s", cfg.RefreshInterval)
	case cfg.RefetchCooldown < 0:
		return nil, fmt.Errorf("remote jwks: refetch cooldown %s: must not be negative", cfg.RefetchCooldown)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("remote jwks: timeout %s: must not be negative", cfg.Timeout)
	case cfg.MaxBytes < 1:
		return nil, fmt.Errorf("remote jwks: max bytes %d: must be positive", cfg.MaxBytes)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{
			Timeout: cfg.Timeout,
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				TLSHandshakeTimeout:   5 * time.Second,
				ResponseHeaderTimeout: cfg.Timeout,
				MaxIdleConnsPerHost:   1,
				IdleConnTimeout:       90 * time.Second,
				ForceAttemptHTTP2:     true,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	r := &RemoteJWKS{cfg: cfg, client: client, sem: make(chan struct{}, 1)}
	empty := map[string]*PublicKey{}
	r.keys.Store(&empty)
	return r, nil
}

// URL returns the JWKS URL.
func (r *RemoteJWKS) URL() string { return r.cfg.URL }

// Ready reports whether a key set has been fetched.
func (r *RemoteJWKS) Ready() bool { return len(*r.keys.Load()) > 0 }

// Fetches returns how many fetches were attempted and how many failed.
func (r *RemoteJWKS) Fetches() (attempts, failures uint64) {
	return r.fetches.Load(), r.failures.Load()
}

// PublicKey implements KeySource. An unknown kid triggers one fetch unless
// one happened within RefetchCooldown (1 s after a failed fetch, 100 ms
// while no key set is held); concurrent misses share that fetch.
func (r *RemoteJWKS) PublicKey(ctx context.Context, kid string) (*PublicKey, error) {
	if k, ok := (*r.keys.Load())[kid]; ok {
		return k, nil
	}
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrUnknownKey, ctx.Err())
	}
	defer func() { <-r.sem }()
	if k, ok := (*r.keys.Load())[kid]; ok { // fetched while we waited
		return k, nil
	}
	if !r.lastAttempt.IsZero() && r.cfg.Now().Sub(r.lastAttempt) < r.refetchCooldownLocked() {
		return nil, ErrUnknownKey
	}
	if err := r.fetchLocked(ctx); err != nil {
		r.cfg.Logger.WarnContext(ctx, "jwks refetch for unknown kid failed; keeping cached keys", "url", r.cfg.URL, "error", err)
	}
	if k, ok := (*r.keys.Load())[kid]; ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// refetchCooldownLocked is the least time between two fetches for unknown
// kids, given how the last fetch went; the caller holds sem.
func (r *RemoteJWKS) refetchCooldownLocked() time.Duration {
	cool := r.cfg.RefetchCooldown
	if r.lastFailed {
		cool = min(cool, jwksFailedRefetchCool)
	}
	if !r.Ready() {
		cool = min(cool, jwksNotReadyRefetchCool)
	}
	return cool
}

// Refresh fetches the key set now, waiting for a fetch in progress.
func (r *RemoteJWKS) Refresh(ctx context.Context) error {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.sem }()
	return r.fetchLocked(ctx)
}

// fetchLocked fetches and installs the key set; the caller holds sem. On
// any failure the current keys stay in place.
func (r *RemoteJWKS) fetchLocked(ctx context.Context) (err error) {
	r.lastAttempt = r.cfg.Now()
	r.fetches.Add(1)
	defer func() {
		r.lastFailed = err != nil
		if err != nil {
			r.failures.Add(1)
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.cfg.URL, nil)
	if err != nil {
		return fmt.Errorf("fetch jwks: %w", err)
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	if r.etag != "" {
		req.Header.Set("If-None-Match", r.etag)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch jwks: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotModified:
		if r.etag != "" {
			return nil
		}
		fallthrough
	default:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("fetch jwks: status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.MaxBytes+1))
	if err != nil {
		return fmt.Errorf("fetch jwks: read body: %w", err)
	}
	if int64(len(body)) > r.cfg.MaxBytes {
		return fmt.Errorf("fetch jwks: body larger than %d bytes", r.cfg.MaxBytes)
	}
	keys, err := ParseJWKS(body)
	if err != nil {
		return fmt.Errorf("fetch jwks: %w", err)
	}
	if len(keys) == 0 {
		return errors.New("fetch jwks: no usable signing keys")
	}
	r.keys.Store(&keys)
	r.etag = resp.Header.Get("ETag")
	return nil
}

// Run fetches the key set now and then every RefreshInterval until ctx is
// done; after a failure it retries sooner (1s doubling up to the interval)
// while the cached keys keep serving.
func (r *RemoteJWKS) Run(ctx context.Context) error {
	delay := defaultJWKSRetryMinDelay
	for {
		wait := r.cfg.RefreshInterval
		if err := r.Refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.cfg.Logger.WarnContext(ctx, "jwks refresh failed; keeping cached keys", "url", r.cfg.URL, "error", err)
			wait = min(delay, r.cfg.RefreshInterval)
			delay *= 2
		} else {
			delay = defaultJWKSRetryMinDelay
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

// FileJWKS is a KeySource backed by a JWKS file, for issuers whose keys are
// distributed out of band. Run reloads it when it changes; a bad new
// version is logged and the previous keys are kept.
type FileJWKS struct {
	path     string
	interval time.Duration
	logger   *slog.Logger
	keys     atomic.Pointer[map[string]*PublicKey]
	mu       sync.Mutex
	modTime  time.Time
	size     int64
}

var _ KeySource = (*FileJWKS)(nil)

// NewFileJWKS loads path now (an error if it is unreadable or has no
// usable key); interval is the reload check period of Run (default 30s).
func NewFileJWKS(path string, interval time.Duration, logger *slog.Logger) (*FileJWKS, error) {
	if interval == 0 {
		interval = 30 * time.Second
	}
	if interval < 0 {
		return nil, fmt.Errorf("file jwks: interval %s: must be positive", interval)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &FileJWKS{path: path, interval: interval, logger: logger}
	if _, err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload rereads the file if its size or modification time changed and
// reports whether it did.
func (f *FileJWKS) Reload() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := os.Stat(f.path)
	if err != nil {
		return false, fmt.Errorf("file jwks: %w", err)
	}
	if st.ModTime().Equal(f.modTime) && st.Size() == f.size && f.keys.Load() != nil {
		return false, nil
	}
	if st.Size() > DefaultJWKSMaxBytes {
		return false, fmt.Errorf("file jwks: %s is larger than %d bytes", f.path, DefaultJWKSMaxBytes)
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return false, fmt.Errorf("file jwks: %w", err)
	}
	keys, err := ParseJWKS(data)
	if err != nil {
		return false, fmt.Errorf("file jwks: %s: %w", f.path, err)
	}
	if len(keys) == 0 {
		return false, fmt.Errorf("file jwks: %s: no usable signing keys", f.path)
	}
	f.keys.Store(&keys)
	f.modTime, f.size = st.ModTime(), st.Size()
	return true, nil
}

// PublicKey implements KeySource.
func (f *FileJWKS) PublicKey(_ context.Context, kid string) (*PublicKey, error) {
	if k, ok := (*f.keys.Load())[kid]; ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// Run checks the file every interval until ctx is done.
func (f *FileJWKS) Run(ctx context.Context) error {
	periodic.Every(ctx, f.interval, func() {
		if changed, err := f.Reload(); err != nil {
			f.logger.WarnContext(ctx, "jwks file reload failed; keeping previous keys", "path", f.path, "error", err)
		} else if changed {
			f.logger.InfoContext(ctx, "jwks file reloaded", "path", f.path)
		}
	})
	return nil
}
