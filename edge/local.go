package edge

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/jwtauth"
)

// Edge-local paths, served by the edge itself behind the edge_local cluster.
const (
	PathToken = "/auth/token"
	PathJWKS  = "/.well-known/jwks.json"
)

// newLocalHandler serves the edge-local endpoints: POST /auth/token and
// GET /.well-known/jwks.json. The data plane calls it in process for routes
// to the edge_local cluster (dataplane.Options.LocalClusters), after the
// route's filters (optional token, rate limit); it sees the client's
// address (as resolved by the front handler) as RemoteAddr.
func newLocalHandler(cfg *Config, issuer *jwtauth.Issuer, log *slog.Logger) (http.Handler, error) {
	mux := http.NewServeMux()
	var users, accounts *jwtauth.Credentials
	var err error
	if cfg.UsersFile != "" {
		if users, err = jwtauth.LoadUsers(cfg.UsersFile); err != nil {
			return nil, fmt.Errorf("-users-file: %w", err)
		}
	}
	if cfg.ServiceAccountsFile != "" {
		if accounts, err = jwtauth.LoadServiceAccounts(cfg.ServiceAccountsFile); err != nil {
			return nil, fmt.Errorf("-service-accounts-file: %w", err)
		}
	}
	if users != nil || accounts != nil {
		th, err := jwtauth.NewTokenHandler(jwtauth.TokenHandlerConfig{
			Issuer: issuer, Users: users, ServiceAccounts: accounts,
			Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("token endpoint: %w", err)
		}
		mux.Handle(PathToken, httpx.MaxBody(64<<10)(th))
	} else {
		mux.Handle(PathToken, httpx.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			return &httpx.Error{Status: http.StatusNotFound, Code: httpx.CodeNotFound, Message: "no users or service accounts configured"}
		}))
	}
	mux.Handle(PathJWKS, issuer.Keys().JWKSHandler())
	mux.Handle("/", httpx.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error {
		return httpx.NotFound("no edge-local handler for %s", r.URL.Path)
	}))
	return httpx.Chain(mux, httpx.Recover(log)), nil
}

// serviceToken is the edge's own token (subject "edge"), minted in-process
// and renewed when less than a third of its lifetime is left.
type serviceToken struct {
	issuer *jwtauth.Issuer
	mu     sync.Mutex
	tok    jwtauth.Token
	now    func() time.Time
}

// Get returns a valid service token.
func (s *serviceToken) Get() (string, error) {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok.Raw != "" && now().Add(s.issuer.TTL()/3).Before(s.tok.ExpiresAt) {
		return s.tok.Raw, nil
	}
	t, err := s.issuer.Issue(ServiceSubject, ServiceRoles)
	if err != nil {
		return "", fmt.Errorf("service token: %w", err)
	}
	s.tok = t
	return t.Raw, nil
}

// HashPasswordCommand implements "edge hash-password [-cost N]": it reads
// one password line from stdin and prints its bcrypt hash for a users or
// service accounts file.
func HashPasswordCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edge hash-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cost := fs.Int("cost", jwtauth.DefaultBcryptCost, fmt.Sprintf("bcrypt cost (at least %d)", jwtauth.MinBcryptCost))
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: edge hash-password [-cost N] < password-file   (reads one line from stdin)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read password: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return errors.New("read password: empty password on stdin")
	}
	h, err := jwtauth.HashPassword(pw, *cost)
	if err != nil {
		return fmt.Errorf("-cost: %w", err)
	}
	_, err = fmt.Fprintln(stdout, h)
	return err
}
