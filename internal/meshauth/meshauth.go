// Package meshauth turns Envoy's jwt_authn configuration (the
// JwtAuthentication filter the control plane sends to the edge and the
// sidecars) into petmesh token verifiers: it is the dataplane.AuthFactory of
// every petmesh proxy.
//
// Each provider becomes a jwtauth.Verifier with the provider's issuer and
// audiences and one key source: the proxy's own in-process issuer when the
// provider's issuer is one of Options.Local (the edge verifies its own tokens
// without fetching its own JWKS), a remote JWKS URL (refreshed in the
// background every cache_duration by Factory.Run, refetched on an unknown kid
// with a cooldown, cached keys kept when a fetch fails), an inline JWKS, or a
// JWKS file (reloaded when it changes). Verifiers and key sources are reused
// across configurations, so a route change keeps the verification cache and
// the fetched keys.
//
// Requirements (provider_name, provider_and_audiences, requires_any,
// requires_all, allow_missing, allow_missing_or_failed) are evaluated as
// Envoy does. A set field the adapter does not honour is rejected by name,
// so the configuration is NACKed rather than half-applied.
package meshauth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/proto"

	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/jwtauth"
)

// Defaults.
const (
	DefaultMaxSources = 64
	DefaultLeeway     = jwtauth.DefaultLeeway
)

// Options configure a Factory. The zero value works: no local issuer,
// default verifier limits, a dedicated HTTP client per remote JWKS.
type Options struct {
	// Local maps an issuer name to the in-process key source of that issuer
	// (the edge's KeyStore). A provider with this issuer verifies with these
	// keys and never fetches its remote_jwks.
	Local map[string]jwtauth.KeySource
	// HTTPClient fetches remote JWKS documents; each RemoteJWKS builds its
	// own client with timeouts when nil.
	HTTPClient *http.Client
	// Leeway is the clock skew used when a provider leaves
	// clock_skew_seconds unset (default 30s).
	Leeway time.Duration
	// MaxTokenSize, CacheSize and CacheTTL are passed to every verifier
	// (jwtauth defaults when zero).
	MaxTokenSize int
	CacheSize    int
	CacheTTL     time.Duration
	// MaxSources bounds the number of distinct verifiers and key sources
	// kept (default 64); a configuration needing more is rejected.
	MaxSources int
	// RefetchCooldown of remote JWKS (jwtauth default when zero).
	RefetchCooldown time.Duration
	// Now is the clock of verifiers and key sources; time.Now when nil.
	Now    func() time.Time
	Logger *slog.Logger
}

// runner is a key source with a background loop (RemoteJWKS, FileJWKS).
type runner interface {
	Run(ctx context.Context) error
}

// Factory builds Authenticators from jwt_authn configurations and owns the
// key sources they share. It is safe for concurrent use. Background key
// refresh happens only while Run is running; without it remote keys are
// still fetched on demand (first use, unknown kid).
type Factory struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	verifiers map[string]*jwtauth.Verifier // by provider fingerprint
	sources   map[string]jwtauth.KeySource // by source fingerprint
	remotes   []*jwtauth.RemoteJWKS
	pending   []runner      // sources created but not started by Run yet
	wake      chan struct{} // cap 1: pending grew
}

// New validates opts and returns a Factory.
func New(opts Options) (*Factory, error) {
	if opts.MaxSources == 0 {
		opts.MaxSources = DefaultMaxSources
	}
	if opts.MaxSources < 0 {
		return nil, fmt.Errorf("meshauth: max sources %d: must be positive", opts.MaxSources)
	}
	if opts.Leeway == 0 {
		opts.Leeway = DefaultLeeway
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	for iss, ks := range opts.Local {
		if iss == "" || ks == nil {
			return nil, errors.New("meshauth: local issuers need a name and a key source")
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Factory{
		opts:      opts,
		log:       log,
		verifiers: make(map[string]*jwtauth.Verifier),
		sources:   make(map[string]jwtauth.KeySource),
		wake:      make(chan struct{}, 1),
	}, nil
}

// AuthFactory returns f.Auth as a dataplane.AuthFactory.
func (f *Factory) AuthFactory() dataplane.AuthFactory { return f.Auth }

// Run starts the background loop of every key source that has one (remote
// JWKS refresh, JWKS file reload), including sources created later by Auth,
// and blocks until ctx is done and every loop has returned.
func (f *Factory) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		f.mu.Lock()
		todo := f.pending
		f.pending = nil
		f.mu.Unlock()
		for _, r := range todo {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					if p := recover(); p != nil {
						f.log.Error("meshauth: key source loop panicked", "panic", p, "stack", string(debug.Stack()))
					}
				}()
				if err := r.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
					f.log.Warn("meshauth: key source loop stopped", "err", err)
				}
			}()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-f.wake:
		}
	}
}

// Ready reports whether every remote JWKS created so far has fetched a key
// set once (sources of local issuers are always ready).
func (f *Factory) Ready() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.remotes {
		if !r.Ready() {
			return false
		}
	}
	return true
}

// Stats sums the verification counters of every verifier.
func (f *Factory) Stats() jwtauth.VerifierStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s jwtauth.VerifierStats
	for _, v := range f.verifiers {
		vs := v.Stats()
		s.CacheHits += vs.CacheHits
		s.SignatureChecks += vs.SignatureChecks
		s.Verified += vs.Verified
		s.Failed += vs.Failed
	}
	return s
}

// Auth implements dataplane.AuthFactory: it validates cfg and returns an
// Authenticator for it, reusing verifiers of unchanged providers.
func (f *Factory) Auth(cfg *jwtv3.JwtAuthentication) (dataplane.Authenticator, error) {
	if err := checkConfig(cfg); err != nil {
		return nil, err
	}
	a := &authenticator{providers: make(map[string]*provider, len(cfg.GetProviders()))}
	names := make([]string, 0, len(cfg.GetProviders()))
	for n := range cfg.GetProviders() {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p, err := f.provider(n, cfg.GetProviders()[n])
		if err != nil {
			return nil, fmt.Errorf("providers[%q]: %w", n, err)
		}
		a.providers[n] = p
		for _, q := range p.params {
			if !slices.Contains(a.params, q) {
				a.params = append(a.params, q)
			}
		}
	}
	// Every requirement must name known providers: check them now so a
	// typo is a NACK, not a 401 for every request.
	for n, rq := range cfg.GetRequirementMap() {
		if err := a.checkRequirement(rq); err != nil {
			return nil, fmt.Errorf("requirement_map[%q]: %w", n, err)
		}
	}
	for i, r := range cfg.GetRules() {
		if rq := r.GetRequires(); rq != nil {
			if err := a.checkRequirement(rq); err != nil {
				return nil, fmt.Errorf("rules[%d].requires: %w", i, err)
			}
		}
	}
	return a, nil
}

// provider builds (or reuses) the verifier of one JwtProvider.
func (f *Factory) provider(name string, p *jwtv3.JwtProvider) (*provider, error) {
	leeway := f.opts.Leeway
	if s := p.GetClockSkewSeconds(); s > 0 {
		leeway = time.Duration(s) * time.Second
	}
	forward := p.GetForward()
	params := slices.Clone(p.GetFromParams())
	f.mu.Lock()
	defer f.mu.Unlock()
	src, srcKey, err := f.keySource(p)
	if err != nil {
		return nil, err
	}
	vkey := fingerprint(p.GetIssuer(), strings.Join(p.GetAudiences(), "\x00"), srcKey, leeway.String())
	v, ok := f.verifiers[vkey]
	if !ok {
		if len(f.verifiers) >= f.opts.MaxSources {
			return nil, fmt.Errorf("more than %d distinct providers configured", f.opts.MaxSources)
		}
		v, err = jwtauth.NewVerifier(jwtauth.VerifierConfig{
			Issuers:      []jwtauth.TrustedIssuer{{Issuer: p.GetIssuer(), Audiences: p.GetAudiences(), Keys: src}},
			Leeway:       leeway,
			MaxTokenSize: f.opts.MaxTokenSize,
			CacheSize:    f.opts.CacheSize,
			CacheTTL:     f.opts.CacheTTL,
			Now:          f.opts.Now,
		})
		if err != nil {
			return nil, err
		}
		f.verifiers[vkey] = v
	}
	return &provider{name: name, verifier: v, forward: forward, params: params}, nil
}

// keySource returns the key source of p and its fingerprint. f.mu is held.
func (f *Factory) keySource(p *jwtv3.JwtProvider) (jwtauth.KeySource, string, error) {
	if ks, ok := f.opts.Local[p.GetIssuer()]; ok {
		return ks, "local\x00" + p.GetIssuer(), nil
	}
	var key string
	switch {
	case p.GetRemoteJwks() != nil:
		rj := p.GetRemoteJwks()
		key = fingerprint("remote", rj.GetHttpUri().GetUri(), rj.GetCacheDuration().AsDuration().String(), rj.GetHttpUri().GetTimeout().AsDuration().String())
	case p.GetLocalJwks().GetFilename() != "":
		key = fingerprint("file", p.GetLocalJwks().GetFilename())
	case p.GetLocalJwks() != nil:
		key = fingerprint("inline", p.GetLocalJwks().GetInlineString(), string(p.GetLocalJwks().GetInlineBytes()))
	default:
		return nil, "", errors.New("remote_jwks or local_jwks: one is required")
	}
	if ks, ok := f.sources[key]; ok {
		return ks, key, nil
	}
	if len(f.sources) >= f.opts.MaxSources {
		return nil, "", fmt.Errorf("more than %d distinct JWKS sources configured", f.opts.MaxSources)
	}
	var ks jwtauth.KeySource
	switch {
	case p.GetRemoteJwks() != nil:
		rj := p.GetRemoteJwks()
		r, err := jwtauth.NewRemoteJWKS(jwtauth.RemoteJWKSConfig{
			URL:             rj.GetHttpUri().GetUri(),
			RefreshInterval: rj.GetCacheDuration().AsDuration(),
			RefetchCooldown: f.opts.RefetchCooldown,
			Timeout:         rj.GetHttpUri().GetTimeout().AsDuration(),
			Client:          f.opts.HTTPClient,
			Now:             f.opts.Now,
			Logger:          f.log,
		})
		if err != nil {
			return nil, "", fmt.Errorf("remote_jwks: %w", err)
		}
		f.remotes = append(f.remotes, r)
		f.addPending(r)
		ks = r
	case p.GetLocalJwks().GetFilename() != "":
		fj, err := jwtauth.NewFileJWKS(p.GetLocalJwks().GetFilename(), 0, f.log)
		if err != nil {
			return nil, "", fmt.Errorf("local_jwks.filename: %w", err)
		}
		f.addPending(fj)
		ks = fj
	default:
		doc := p.GetLocalJwks().GetInlineString()
		if doc == "" {
			doc = string(p.GetLocalJwks().GetInlineBytes())
		}
		keys, err := jwtauth.ParseJWKS([]byte(doc))
		if err != nil {
			return nil, "", fmt.Errorf("local_jwks: %w", err)
		}
		if len(keys) == 0 {
			return nil, "", errors.New("local_jwks: no usable key")
		}
		ks = staticKeys(keys)
	}
	f.sources[key] = ks
	return ks, key, nil
}

func (f *Factory) addPending(r runner) {
	f.pending = append(f.pending, r)
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func fingerprint(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// staticKeys is an inline JWKS.
type staticKeys map[string]*jwtauth.PublicKey

func (s staticKeys) PublicKey(_ context.Context, kid string) (*jwtauth.PublicKey, error) {
	if k, ok := s[kid]; ok {
		return k, nil
	}
	return nil, jwtauth.ErrUnknownKey
}

type provider struct {
	name     string
	verifier *jwtauth.Verifier
	forward  bool
	params   []string // from_params: query parameters the token may come in
}

// authenticator evaluates requirements against the providers of one
// jwt_authn configuration. Immutable.
type authenticator struct {
	providers map[string]*provider
	// params is the union of the providers' from_params (empty: no
	// provider accepts a token in the query string).
	params []string
}

var _ dataplane.Authenticator = (*authenticator)(nil)

func (a *authenticator) checkRequirement(rq *jwtv3.JwtRequirement) error {
	switch t := rq.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_ProviderName:
		if _, ok := a.providers[t.ProviderName]; !ok {
			return fmt.Errorf("provider_name: unknown provider %q", t.ProviderName)
		}
	case *jwtv3.JwtRequirement_ProviderAndAudiences:
		if _, ok := a.providers[t.ProviderAndAudiences.GetProviderName()]; !ok {
			return fmt.Errorf("provider_and_audiences.provider_name: unknown provider %q", t.ProviderAndAudiences.GetProviderName())
		}
	case *jwtv3.JwtRequirement_RequiresAny:
		for i, r := range t.RequiresAny.GetRequirements() {
			if err := a.checkRequirement(r); err != nil {
				return fmt.Errorf("requires_any.requirements[%d].%w", i, err)
			}
		}
	case *jwtv3.JwtRequirement_RequiresAll:
		for i, r := range t.RequiresAll.GetRequirements() {
			if err := a.checkRequirement(r); err != nil {
				return fmt.Errorf("requires_all.requirements[%d].%w", i, err)
			}
		}
	case *jwtv3.JwtRequirement_AllowMissing, *jwtv3.JwtRequirement_AllowMissingOrFailed:
	case nil:
		return errors.New("requires_type: empty requirement")
	default:
		return fmt.Errorf("requires_type: unsupported %T", t)
	}
	return nil
}

// outcome of evaluating a requirement.
type outcome struct {
	claims *jwtauth.Claims
	prov   *provider
	err    error
}

// Authenticate implements dataplane.Authenticator.
func (a *authenticator) Authenticate(r *http.Request, req *dataplane.AuthRequirement) (identity.Identity, error) {
	tok, terr := a.token(r, req.Requirement)
	if terr != nil && !errors.Is(terr, jwtauth.ErrMissingToken) {
		return identity.Identity{}, authError(terr)
	}
	e := eval{ctx: r.Context(), token: tok, a: a}
	o := e.requirement(req.Requirement)
	if o.err != nil {
		return identity.Identity{}, authError(o.err)
	}
	if o.claims == nil {
		return identity.Identity{}, nil
	}
	switch {
	case o.prov != nil && !o.prov.forward:
		r.Header.Del("Authorization")
	case len(r.Header["Authorization"]) == 0 && tok != "":
		// The token came in the query string, which token removed from
		// the URL. A forwarding provider hands it on in the Authorization
		// header, so the next hop (a sidecar verifying again) gets it
		// without it ever reaching an upstream URL, cache key or log.
		// (Envoy would forward it where it came, in the query string.)
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	return o.claims.Identity(), nil
}

// eval evaluates one request's requirement tree; the token is verified at
// most once per provider.
type eval struct {
	ctx   context.Context
	token string
	a     *authenticator
	seen  [2]struct {
		p *provider
		o outcome
	}
	n int
}

func (e *eval) verify(p *provider) outcome {
	for i := 0; i < e.n; i++ {
		if e.seen[i].p == p {
			return e.seen[i].o
		}
	}
	var o outcome
	if e.token == "" {
		o = outcome{err: jwtauth.ErrMissingToken}
	} else {
		c, err := p.verifier.Verify(e.ctx, e.token)
		o = outcome{claims: c, prov: p, err: err}
	}
	if e.n < len(e.seen) {
		e.seen[e.n].p, e.seen[e.n].o = p, o
		e.n++
	}
	return o
}

func (e *eval) requirement(rq *jwtv3.JwtRequirement) outcome {
	switch t := rq.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_ProviderName:
		return e.verify(e.a.providers[t.ProviderName])
	case *jwtv3.JwtRequirement_ProviderAndAudiences:
		o := e.verify(e.a.providers[t.ProviderAndAudiences.GetProviderName()])
		if o.err == nil && len(t.ProviderAndAudiences.GetAudiences()) > 0 {
			if !slices.ContainsFunc(o.claims.Audience, func(s string) bool {
				return slices.Contains(t.ProviderAndAudiences.GetAudiences(), s)
			}) {
				return outcome{err: jwtauth.ErrBadAudience}
			}
		}
		return o
	case *jwtv3.JwtRequirement_RequiresAny:
		// First success wins. allow_missing accepts an absent token (never a
		// bad one); allow_missing_or_failed accepts anything.
		var first error
		allowMissing, allowFailed := false, false
		for _, sub := range t.RequiresAny.GetRequirements() {
			switch sub.GetRequiresType().(type) {
			case *jwtv3.JwtRequirement_AllowMissing:
				allowMissing = true
				continue
			case *jwtv3.JwtRequirement_AllowMissingOrFailed:
				allowFailed = true
				continue
			}
			o := e.requirement(sub)
			if o.err == nil {
				return o
			}
			if first == nil || errors.Is(first, jwtauth.ErrMissingToken) {
				first = o.err
			}
		}
		switch {
		case allowFailed:
			return outcome{}
		case allowMissing && e.token == "":
			return outcome{}
		case first == nil:
			return outcome{err: jwtauth.ErrMissingToken}
		}
		return outcome{err: first}
	case *jwtv3.JwtRequirement_RequiresAll:
		var last outcome
		for _, sub := range t.RequiresAll.GetRequirements() {
			o := e.requirement(sub)
			if o.err != nil {
				return o
			}
			if last.claims == nil {
				last = o
			}
		}
		return last
	case *jwtv3.JwtRequirement_AllowMissing:
		if e.token == "" {
			return outcome{}
		}
		// A token was sent: Envoy verifies it against every provider
		// and fails on a bad one. Try each; any success passes.
		return e.anyProvider()
	case *jwtv3.JwtRequirement_AllowMissingOrFailed:
		if e.token == "" {
			return outcome{}
		}
		if o := e.anyProvider(); o.err == nil {
			return o
		}
		return outcome{}
	}
	return outcome{err: jwtauth.ErrMissingToken}
}

func (e *eval) anyProvider() outcome {
	var first outcome
	for _, p := range e.a.sortedProviders() {
		o := e.verify(p)
		if o.err == nil {
			return o
		}
		if first.err == nil {
			first = o
		}
	}
	if first.err == nil {
		first.err = jwtauth.ErrUnknownKey
	}
	return first
}

func (a *authenticator) sortedProviders() []*provider {
	out := make([]*provider, 0, len(a.providers))
	for _, p := range a.providers {
		out = append(out, p)
	}
	slices.SortFunc(out, func(x, y *provider) int { return strings.Compare(x.name, y.name) })
	return out
}

// token extracts the request's token for requirement rq. The one
// Authorization header wins when present; otherwise the token may come in a
// query parameter that a provider rq can use lists in from_params. Every
// such parameter is removed from the request URL, header or not, so the
// token never reaches the upstream, the cache key or a log. Without a
// token, a token parameter no provider of rq accepts (access_token, or
// another provider's from_params) is refused with ErrQueryToken.
func (a *authenticator) token(r *http.Request, rq *jwtv3.JwtRequirement) (string, error) {
	if len(a.params) == 0 || r.URL.RawQuery == "" {
		return bearerToken(r)
	}
	tok, found, refused := a.queryToken(r, rq)
	switch {
	case len(r.Header["Authorization"]) > 0:
		return bearerToken(r)
	case found > 1:
		return "", errQueryTokens
	case found == 1 && (tok == "" || strings.ContainsAny(tok, " \t")):
		return "", jwtauth.ErrMalformed
	case found == 1:
		return tok, nil
	case refused:
		return "", jwtauth.ErrQueryToken
	}
	return bearerToken(r)
}

// errQueryTokens: an accepted token parameter appears more than once (or
// two accepted parameters are both present).
var errQueryTokens = fmt.Errorf("%w: more than one token in the query string", jwtauth.ErrInvalidRequest)

// queryToken removes from r's query the pairs whose (unescaped) name rq
// accepts, and returns the value of the last one and their number. refused
// reports a pair named access_token or another from_params name that rq
// does not accept (left in place).
func (a *authenticator) queryToken(r *http.Request, rq *jwtv3.JwtRequirement) (tok string, found int, refused bool) {
	pairs := strings.Split(r.URL.RawQuery, "&")
	kept := pairs[:0]
	for _, pair := range pairs {
		name, val, _ := strings.Cut(pair, "=")
		n, err := url.QueryUnescape(name)
		switch {
		case err != nil || (n != "access_token" && !slices.Contains(a.params, n)):
			kept = append(kept, pair)
		case a.accepts(rq, n):
			found++
			tok, err = url.QueryUnescape(val)
			if err != nil {
				tok = ""
			}
		default:
			refused = true
			kept = append(kept, pair)
		}
	}
	if found > 0 {
		r.URL.RawQuery = strings.Join(kept, "&")
		r.URL.ForceQuery = false
		if r.RequestURI != "" {
			r.RequestURI = r.URL.RequestURI()
		}
	}
	return tok, found, refused
}

// accepts reports whether a provider requirement rq can use lists param in
// its from_params. allow_missing and allow_missing_or_failed verify a
// present token with every provider, so they accept every provider's.
func (a *authenticator) accepts(rq *jwtv3.JwtRequirement, param string) bool {
	switch t := rq.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_ProviderName:
		return slices.Contains(a.providers[t.ProviderName].params, param)
	case *jwtv3.JwtRequirement_ProviderAndAudiences:
		return slices.Contains(a.providers[t.ProviderAndAudiences.GetProviderName()].params, param)
	case *jwtv3.JwtRequirement_RequiresAny:
		return slices.ContainsFunc(t.RequiresAny.GetRequirements(), func(s *jwtv3.JwtRequirement) bool { return a.accepts(s, param) })
	case *jwtv3.JwtRequirement_RequiresAll:
		return slices.ContainsFunc(t.RequiresAll.GetRequirements(), func(s *jwtv3.JwtRequirement) bool { return a.accepts(s, param) })
	case *jwtv3.JwtRequirement_AllowMissing, *jwtv3.JwtRequirement_AllowMissingOrFailed:
		return slices.Contains(a.params, param)
	}
	return false
}

// bearerToken extracts the token of the one Authorization header; a missing
// header is ErrMissingToken. A token in the query string (access_token) is
// refused: Authenticator.token takes the accepted parameters out first.
func bearerToken(r *http.Request) (string, error) {
	vals := r.Header["Authorization"]
	switch {
	case len(vals) > 1:
		return "", fmt.Errorf("%w: more than one Authorization header", jwtauth.ErrInvalidRequest)
	case len(vals) == 0:
		if r.URL.RawQuery != "" && strings.Contains(r.URL.RawQuery, "access_token=") && r.URL.Query().Has("access_token") {
			return "", jwtauth.ErrQueryToken
		}
		return "", jwtauth.ErrMissingToken
	}
	h := vals[0]
	const prefix = "bearer "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", fmt.Errorf("%w: authorization scheme is not Bearer", jwtauth.ErrInvalidRequest)
	}
	tok := strings.TrimLeft(h[len(prefix):], " ")
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", jwtauth.ErrMalformed
	}
	return tok, nil
}

// authDescriptions are fixed client-facing texts: no claim value or token
// text ever reaches a response.
var authDescriptions = []struct {
	err  error
	desc string
}{
	{jwtauth.ErrMissingToken, "bearer token required"},
	{errQueryTokens, "more than one token in the query string"},
	{jwtauth.ErrInvalidRequest, "malformed Authorization header"},
	{jwtauth.ErrQueryToken, "tokens in the query string are not accepted; use the Authorization header"},
	{jwtauth.ErrTooLarge, "token too large"},
	{jwtauth.ErrMalformed, "malformed token"},
	{jwtauth.ErrAlgorithm, "token algorithm not allowed"},
	{jwtauth.ErrCritical, "token has unsupported critical header parameters"},
	{jwtauth.ErrUnknownKey, "token signed by an unknown key"},
	{jwtauth.ErrBadSignature, "token signature invalid"},
	{jwtauth.ErrExpired, "token expired"},
	{jwtauth.ErrNotYetValid, "token not valid yet"},
	{jwtauth.ErrMissingClaim, "token missing a required claim"},
	{jwtauth.ErrBadIssuer, "token issuer not accepted"},
	{jwtauth.ErrBadAudience, "token audience not accepted"},
}

// authError maps a verification error to the HTTP error the data plane
// writes: 431 for an oversized token, otherwise 401 (never a 5xx).
func authError(err error) *httpx.Error {
	msg := "invalid token"
	for _, d := range authDescriptions {
		if errors.Is(err, d.err) {
			msg = d.desc
			break
		}
	}
	if errors.Is(err, jwtauth.ErrTooLarge) {
		return &httpx.Error{Status: http.StatusRequestHeaderFieldsTooLarge, Code: "token_too_large", Message: msg, Field: "Authorization"}
	}
	return &httpx.Error{Status: http.StatusUnauthorized, Code: "unauthenticated", Message: msg, Field: "Authorization"}
}

// clone is used by the adapter to copy before editing shared messages.
func clone[T proto.Message](m T) T { return proto.Clone(m).(T) }
