package jwtauth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/petmesh/petmesh/internal/httpx"
)

// Login rate-limit defaults: every attempt costs a token.
const (
	DefaultUserBurst = 5
	DefaultUserPer   = 12 * time.Second // 5 per minute
	DefaultIPBurst   = 20
	DefaultIPPer     = 3 * time.Second // 20 per minute
	DefaultLimitKeys = 10000
	maxTokenBody     = 8 << 10
)

// TokenHandlerConfig configures the POST /auth/token endpoint.
type TokenHandlerConfig struct {
	Issuer *Issuer
	// Users may log in with JSON {"username","password"}; nil disables.
	Users *Credentials
	// ServiceAccounts may use grant_type=client_credentials; nil disables.
	ServiceAccounts *Credentials
	// Compare checks a password against a bcrypt hash;
	// bcrypt.CompareHashAndPassword when nil. Tests inject a counter.
	Compare func(hash, password []byte) error
	// UserLimit limits attempts per username or client_id, IPLimit per
	// client IP. Defaults: 5/min burst 5 per name, 20/min burst 20 per IP.
	UserLimit *RateLimiter
	IPLimit   *RateLimiter
	// ClientIP returns the client address used for the per-IP limit; the
	// host of r.RemoteAddr when nil. An edge behind trusted proxies passes
	// its X-Forwarded-For resolver here.
	ClientIP func(*http.Request) string
	// Now is the clock of the default rate limiters; time.Now when nil.
	Now    func() time.Time
	Logger *slog.Logger

	// dummyHash replaces the generated dummy hash (tests: bcrypt under the
	// race detector is slow).
	dummyHash []byte
}

// TokenHandler serves POST /auth/token. It is safe for concurrent use.
type TokenHandler struct {
	cfg   TokenHandlerConfig
	dummy []byte // bcrypt hash compared when the principal is unknown
}

var _ http.Handler = (*TokenHandler)(nil)

// NewTokenHandler validates cfg and returns the handler. It computes a
// dummy bcrypt hash at the highest cost in use, so that an unknown user
// costs the same bcrypt work as a wrong password.
func NewTokenHandler(cfg TokenHandlerConfig) (*TokenHandler, error) {
	if cfg.Issuer == nil {
		return nil, errors.New("token handler: issuer is required")
	}
	if cfg.Users == nil && cfg.ServiceAccounts == nil {
		return nil, errors.New("token handler: users or service accounts are required")
	}
	if cfg.Compare == nil {
		cfg.Compare = bcrypt.CompareHashAndPassword
	}
	var err error
	if cfg.UserLimit == nil {
		if cfg.UserLimit, err = NewRateLimiter(RateLimiterConfig{Burst: DefaultUserBurst, Per: DefaultUserPer, MaxKeys: DefaultLimitKeys, Now: cfg.Now}); err != nil {
			return nil, err
		}
	}
	if cfg.IPLimit == nil {
		if cfg.IPLimit, err = NewRateLimiter(RateLimiterConfig{Burst: DefaultIPBurst, Per: DefaultIPPer, MaxKeys: DefaultLimitKeys, Now: cfg.Now}); err != nil {
			return nil, err
		}
	}
	if cfg.ClientIP == nil {
		cfg.ClientIP = remoteIP
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	dummy := cfg.dummyHash
	if dummy == nil {
		cost := dummyCost(cfg.Users, cfg.ServiceAccounts)
		var pw [18]byte
		_, _ = rand.Read(pw[:])
		if dummy, err = bcrypt.GenerateFromPassword([]byte(base64.RawStdEncoding.EncodeToString(pw[:])), cost); err != nil {
			return nil, fmt.Errorf("token handler: dummy hash: %w", err)
		}
	}
	return &TokenHandler{cfg: cfg, dummy: dummy}, nil
}

// dummyCost is the highest bcrypt cost among the principals.
func dummyCost(creds ...*Credentials) int {
	cost := MinBcryptCost
	for _, c := range creds {
		if c != nil {
			cost = max(cost, c.maxCost)
		}
	}
	return cost
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// TokenResponse is the success body of POST /auth/token (RFC 6749 §5.1).
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
}

// oauthError is the RFC 6749 §5.2 error body used for the form grant.
type oauthError struct {
	Status      int    `json:"-"`
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
	basic       bool
}

func (e *oauthError) Error() string { return e.Code + ": " + e.Description }

type loginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

func (h *TokenHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeMethodNotAllowed(w, r.Method)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		h.serveLogin(w, r)
	case "application/x-www-form-urlencoded":
		h.serveClientCredentials(w, r)
	default:
		httpx.WriteError(w, &httpx.Error{
			Status: http.StatusUnsupportedMediaType, Code: httpx.CodeUnsupportedMedia, Field: "Content-Type",
			Message: "want application/json (user login) or application/x-www-form-urlencoded (client_credentials grant)",
		})
	}
}

func (h *TokenHandler) serveLogin(w http.ResponseWriter, r *http.Request) {
	var req loginRequest
	if err := httpx.DecodeJSON(w, r, &req, maxTokenBody); err != nil {
		httpx.WriteError(w, err)
		return
	}
	switch {
	case req.Username == "":
		httpx.WriteError(w, httpx.BadRequest("username", "username is required"))
		return
	case len(req.Username) > 128:
		httpx.WriteError(w, httpx.BadRequest("username", "username is longer than 128 bytes"))
		return
	case req.Password == "":
		httpx.WriteError(w, httpx.BadRequest("password", "password is required"))
		return
	case len(req.Password) > maxPasswordBytes:
		httpx.WriteError(w, httpx.BadRequest("password", "password is longer than %d bytes", maxPasswordBytes))
		return
	}
	if !h.allow(w, r, "user:"+req.Username) {
		return
	}
	p, err := h.authenticate(h.cfg.Users, req.Username, req.Password)
	if err != nil {
		h.cfg.Logger.InfoContext(r.Context(), "login failed", "grant", "password", "client_ip", h.cfg.ClientIP(r))
		httpx.WriteError(w, httpx.Unauthenticated("invalid username or password"))
		return
	}
	h.issue(w, r, req.Username, p.roles)
}

func (h *TokenHandler) serveClientCredentials(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxTokenBody)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeOAuth(w, &oauthError{Status: http.StatusRequestEntityTooLarge, Code: "invalid_request", Description: fmt.Sprintf("body is larger than %d bytes", maxTokenBody)})
			return
		}
		writeOAuth(w, &oauthError{Status: http.StatusBadRequest, Code: "invalid_request", Description: "malformed form body"})
		return
	}
	form := r.PostForm
	for _, k := range []string{"grant_type", "client_id", "client_secret"} {
		if len(form[k]) > 1 {
			writeOAuth(w, &oauthError{Status: http.StatusBadRequest, Code: "invalid_request", Description: k + " repeated"})
			return
		}
	}
	switch gt := form.Get("grant_type"); gt {
	case "client_credentials":
	case "":
		writeOAuth(w, &oauthError{Status: http.StatusBadRequest, Code: "invalid_request", Description: "grant_type is required"})
		return
	default:
		writeOAuth(w, &oauthError{Status: http.StatusBadRequest, Code: "unsupported_grant_type", Description: "only client_credentials is supported on the form endpoint; users log in with JSON"})
		return
	}
	id, secret := form.Get("client_id"), form.Get("client_secret")
	bu, bp, basic := r.BasicAuth()
	if basic {
		if id != "" || secret != "" {
			writeOAuth(w, &oauthError{Status: http.StatusBadRequest, Code: "invalid_request", Description: "use one client authentication method, not both"})
			return
		}
		// RFC 6749 §2.3.1: both parts are form-urlencoded before Basic.
		var err1, err2 error
		id, err1 = url.QueryUnescape(bu)
		secret, err2 = url.QueryUnescape(bp)
		if err1 != nil || err2 != nil {
			writeOAuth(w, &oauthError{Status: http.StatusUnauthorized, Code: "invalid_client", Description: "malformed basic credentials", basic: true})
			return
		}
	}
	if id == "" || secret == "" || len(id) > 128 || len(secret) > maxPasswordBytes {
		writeOAuth(w, &oauthError{Status: http.StatusUnauthorized, Code: "invalid_client", Description: "client authentication failed", basic: basic})
		return
	}
	if !h.allow(w, r, "client:"+id) {
		return
	}
	p, err := h.authenticate(h.cfg.ServiceAccounts, id, secret)
	if err != nil {
		h.cfg.Logger.InfoContext(r.Context(), "login failed", "grant", "client_credentials", "client_ip", h.cfg.ClientIP(r))
		writeOAuth(w, &oauthError{Status: http.StatusUnauthorized, Code: "invalid_client", Description: "client authentication failed", basic: basic})
		return
	}
	h.issue(w, r, id, p.roles)
}

// authenticate runs exactly one bcrypt comparison whether or not name
// exists, so response time does not reveal which names exist.
func (h *TokenHandler) authenticate(c *Credentials, name, password string) (principal, error) {
	p, ok := c.lookup(name)
	hash := p.hash
	if !ok {
		hash = h.dummy
	}
	err := h.cfg.Compare(hash, []byte(password))
	if !ok || err != nil {
		return principal{}, ErrInvalidCredentials
	}
	return p, nil
}

// allow charges one attempt to the client IP and then to the name; on
// refusal it writes 429 with Retry-After.
func (h *TokenHandler) allow(w http.ResponseWriter, r *http.Request, name string) bool {
	ok, wait := h.cfg.IPLimit.Allow(h.cfg.ClientIP(r))
	if ok {
		ok, wait = h.cfg.UserLimit.Allow(name)
	}
	if ok {
		return true
	}
	secs := int64(math.Ceil(wait.Seconds()))
	w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	httpx.WriteError(w, &httpx.Error{Status: http.StatusTooManyRequests, Code: httpx.CodeRateLimited, Message: "too many login attempts; retry later"})
	return false
}

func (h *TokenHandler) issue(w http.ResponseWriter, r *http.Request, subject string, roles []string) {
	tok, err := h.cfg.Issuer.Issue(subject, roles)
	if err != nil {
		h.cfg.Logger.ErrorContext(r.Context(), "issue token", "error", err)
		httpx.WriteError(w, httpx.Unavailable("cannot issue tokens right now"))
		return
	}
	h.cfg.Logger.InfoContext(r.Context(), "token issued", "subject", subject, "kid", tok.KID, "jti", tok.ID)
	httpx.WriteJSON(w, http.StatusOK, TokenResponse{
		AccessToken: tok.Raw,
		TokenType:   "Bearer",
		ExpiresIn:   int64(h.cfg.Issuer.TTL() / time.Second),
	})
}

func writeOAuth(w http.ResponseWriter, e *oauthError) {
	if e.basic && e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="petmesh", charset="UTF-8"`)
	}
	httpx.WriteJSON(w, e.Status, e)
}
