package xds

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/petmesh/petmesh/internal/periodic"
)

// Authentication of the xDS port.
//
// The proxies present a static bearer token ("authorization: Bearer <t>"
// gRPC metadata) taken from a file of accepted tokens. Why not a JWT of the
// edge's issuer, as the REST API takes: the edge is that issuer and gets
// its own listeners over xDS, and every sidecar would need the edge up to
// get a token before it could get its configuration; a token file has no
// such cycle and is what Envoy's and Istio's bootstrap-secret setups do.

// MinTokenLength is the shortest accepted xDS token.
const MinTokenLength = 16

// TokenAuthOptions configure NewTokenAuth.
type TokenAuthOptions struct {
	// File holds the accepted tokens, one per line; blank lines and lines
	// starting with '#' are ignored. A token may be followed, after
	// spaces, by node id patterns (path.Match syntax, e.g. "edge~*" or
	// "sidecar~pets~*"): a stream with that token may then only bind a
	// node whose id matches one of them (else PermissionDenied); a token
	// alone serves any node. It is read again when its size or
	// modification time changes (checked at most once a second, when a
	// stream opens, and every second while Run runs), so tokens rotate
	// without a restart: add the new token, roll the proxies, remove the
	// old one. Removing a token also ends the open streams that presented
	// it (Unauthenticated, "xds token revoked"). A file that becomes
	// unreadable or invalid keeps the previous tokens (logged).
	File string
	// Logger logs refusals and reloads; default discards.
	Logger *slog.Logger
	// Registerer receives petmesh_xds_auth_failures_total; none when nil.
	Registerer prometheus.Registerer
	// Now is the clock of the reload check; default time.Now.
	Now func() time.Time
}

// TokenAuth checks the bearer token of every xDS stream and unary call
// against the accepted tokens. It is safe for concurrent use.
type TokenAuth struct {
	file     string
	log      *slog.Logger
	now      func() time.Time
	failures *prometheus.CounterVec

	mu        sync.Mutex
	tokens    []accepted // the file's tokens
	modTime   time.Time
	size      int64
	checkedAt time.Time
	// open are the cancel functions of the open streams, by the grant
	// (accepted.key) each was authorized under.
	open map[string]map[*context.CancelCauseFunc]struct{}
}

// accepted is one token of the file: its digest and the node id patterns
// it may bind (nil: any).
type accepted struct {
	digest [sha256.Size]byte
	nodes  []string
}

// key identifies the grant: the digest and the patterns. A stream is
// ended when its grant is no longer in the file, i.e. when its token is
// removed or bound to other nodes.
func (t accepted) key() string {
	return string(t.digest[:]) + "\x00" + strings.Join(t.nodes, " ")
}

// errRevoked ends a stream whose token was removed from the file.
var errRevoked = errors.New("xds token revoked")

// NewTokenAuth loads the token file; an unreadable file, a file without a
// token or a token shorter than MinTokenLength is an error.
func NewTokenAuth(opts TokenAuthOptions) (*TokenAuth, error) {
	if opts.File == "" {
		return nil, errors.New("xds auth: a token file is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &TokenAuth{
		file: opts.File, log: opts.Logger, now: opts.Now,
		open: map[string]map[*context.CancelCauseFunc]struct{}{},
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_xds_auth_failures_total",
			Help: "xDS streams and calls refused for authentication, by reason (missing, invalid), and open streams ended because their token was removed (revoked).",
		}, []string{"reason"}),
	}
	if err := a.load(); err != nil {
		return nil, err
	}
	a.checkedAt = a.now()
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(a.failures); err != nil {
			return nil, fmt.Errorf("xds auth: register metrics: %w", err)
		}
	}
	return a, nil
}

// Token is one line of a token file: the token and the node id patterns
// (path.Match syntax) it may bind; no patterns means any node.
type Token struct {
	Value string
	Nodes []string
}

// ParseTokens parses a token file: one token per line, optionally followed
// by node id patterns separated by spaces; blank lines and '#' comments
// ignored; each token at least MinTokenLength characters of printable
// ASCII, each pattern a valid path.Match pattern.
func ParseTokens(b []byte) ([]Token, error) {
	var out []Token
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, r := range line {
			if (r < ' ' || r > '~') && r != '\t' {
				return nil, fmt.Errorf("line %d: token must be printable ASCII", n)
			}
		}
		fields := strings.Fields(line)
		if len(fields[0]) < MinTokenLength {
			return nil, fmt.Errorf("line %d: token shorter than %d characters", n, MinTokenLength)
		}
		for _, p := range fields[1:] {
			if _, err := path.Match(p, ""); err != nil {
				return nil, fmt.Errorf("line %d: node pattern %q: %w", n, p, err)
			}
		}
		out = append(out, Token{Value: fields[0], Nodes: fields[1:]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no token")
	}
	return out, nil
}

// load reads the file and replaces the tokens. a.mu must be held, or a
// not yet shared.
func (a *TokenAuth) load() error {
	fi, err := os.Stat(a.file)
	if err != nil {
		return fmt.Errorf("xds auth: token file: %w", err)
	}
	b, err := os.ReadFile(a.file)
	if err != nil {
		return fmt.Errorf("xds auth: token file: %w", err)
	}
	toks, err := ParseTokens(b)
	if err != nil {
		return fmt.Errorf("xds auth: token file %s: %w", a.file, err)
	}
	acc := make([]accepted, len(toks))
	for i, t := range toks {
		acc[i] = accepted{digest: sha256.Sum256([]byte(t.Value))}
		if len(t.Nodes) > 0 {
			acc[i].nodes = t.Nodes
		}
	}
	a.tokens, a.modTime, a.size = acc, fi.ModTime(), fi.Size()
	return nil
}

// current returns the accepted tokens, reloading the file when it
// changed (checked at most once a second).
func (a *TokenAuth) current() []accepted {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if now.Sub(a.checkedAt) < time.Second {
		return a.tokens
	}
	a.checkedAt = now
	fi, err := os.Stat(a.file)
	if err != nil {
		a.log.Error("xds auth: token file unreadable; keeping the previous tokens", "file", a.file, "error", err)
		return a.tokens
	}
	if fi.ModTime().Equal(a.modTime) && fi.Size() == a.size {
		return a.tokens
	}
	if err := a.load(); err != nil {
		a.log.Error("xds auth: token file invalid; keeping the previous tokens", "error", err)
		return a.tokens
	}
	a.log.Info("xds auth: token file reloaded", "file", a.file, "tokens", len(a.tokens))
	a.revokeLocked()
	return a.tokens
}

// revokeLocked ends the open streams whose grant is no longer in the
// file: their token was removed, or bound to other node patterns (a
// stream's node is checked against its grant's patterns once, when it
// binds). a.mu is held.
func (a *TokenAuth) revokeLocked() {
	for k, streams := range a.open {
		if slices.ContainsFunc(a.tokens, func(t accepted) bool { return t.key() == k }) {
			continue
		}
		for cancel := range streams {
			(*cancel)(errRevoked)
		}
		a.failures.WithLabelValues("revoked").Add(float64(len(streams)))
		a.log.Warn("xds auth: token removed or rebound; ending its open streams", "streams", len(streams))
		delete(a.open, k)
	}
}

// Run checks the token file every second until ctx is done, so that a
// removed token ends its open streams even when no stream opens.
func (a *TokenAuth) Run(ctx context.Context) error {
	periodic.Every(ctx, time.Second, func() { a.current() })
	return nil
}

// track registers an open stream's cancel function under its grant; the
// returned func unregisters it.
func (a *TokenAuth) track(g accepted, cancel *context.CancelCauseFunc) func() {
	k := g.key()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.open[k] == nil {
		a.open[k] = map[*context.CancelCauseFunc]struct{}{}
	}
	a.open[k][cancel] = struct{}{}
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		delete(a.open[k], cancel)
		if len(a.open[k]) == 0 {
			delete(a.open, k)
		}
	}
}

// Authorize checks ctx's incoming metadata: nil when it carries
// "authorization: Bearer <an accepted token>", else a codes.Unauthenticated
// error. Every accepted token is compared, in constant time, whatever
// matches first.
func (a *TokenAuth) Authorize(ctx context.Context) error {
	_, err := a.authorize(ctx)
	return err
}

// authorize is Authorize, also returning the accepted token's grant.
func (a *TokenAuth) authorize(ctx context.Context) (accepted, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		a.failures.WithLabelValues("missing").Inc()
		return accepted{}, status.Error(codes.Unauthenticated, "petmesh control plane: xds requires authorization: Bearer <token> (-xds-token-file)")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || tok == "" {
		a.failures.WithLabelValues("missing").Inc()
		return accepted{}, status.Error(codes.Unauthenticated, "petmesh control plane: xds requires authorization: Bearer <token> (-xds-token-file)")
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	match, which := 0, 0
	toks := a.current()
	for i, want := range toks {
		eq := subtle.ConstantTimeCompare(got[:], want.digest[:])
		match |= eq
		which = subtle.ConstantTimeSelect(eq, i, which)
	}
	if match != 1 {
		a.failures.WithLabelValues("invalid").Inc()
		return accepted{}, status.Error(codes.Unauthenticated, "petmesh control plane: invalid xds token")
	}
	return toks[which], nil
}

// StreamInterceptor refuses streams that Authorize rejects, and ends an
// accepted stream with Unauthenticated once its token is removed from the
// file.
func (a *TokenAuth) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		g, err := a.authorize(ss.Context())
		if err != nil {
			a.log.Warn("xds stream refused", "method", info.FullMethod, "peer", peerAddr(ss.Context()), "error", status.Convert(err).Message())
			return err
		}
		ctx, cancel := context.WithCancelCause(withNodePatterns(ss.Context(), g.nodes))
		defer cancel(nil)
		defer a.track(g, &cancel)()
		err = handler(srv, &revocableStream{ServerStream: ss, ctx: ctx})
		if errors.Is(context.Cause(ctx), errRevoked) {
			a.log.Warn("xds stream ended: its token was removed or rebound", "method", info.FullMethod, "peer", peerAddr(ss.Context()))
			return status.Error(codes.Unauthenticated, "petmesh control plane: xds token revoked")
		}
		return err
	}
}

// nodePatternsKey carries the node id patterns of a stream's token.
type nodePatternsKey struct{}

func withNodePatterns(ctx context.Context, p []string) context.Context {
	if p == nil {
		return ctx
	}
	return context.WithValue(ctx, nodePatternsKey{}, p)
}

// nodeAllowed reports whether the token of the stream with ctx may bind
// node id: always without patterns (no token file, or a token alone).
func nodeAllowed(ctx context.Context, id string) bool {
	p, _ := ctx.Value(nodePatternsKey{}).([]string)
	if p == nil {
		return true
	}
	for _, pat := range p {
		if ok, _ := path.Match(pat, id); ok {
			return true
		}
	}
	return false
}

// revocableStream is a server stream whose context the interceptor can
// cancel.
type revocableStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *revocableStream) Context() context.Context { return s.ctx }

// UnaryInterceptor refuses unary calls that Authorize rejects (ADS has
// none today; this keeps any later one behind the same check).
func (a *TokenAuth) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := a.Authorize(ctx); err != nil {
			a.log.Warn("xds call refused", "method", info.FullMethod, "peer", peerAddr(ctx), "error", status.Convert(err).Message())
			return nil, err
		}
		return handler(ctx, req)
	}
}

// ServerOptions are the gRPC server options that install both
// interceptors; pass them to Server.Serve.
func (a *TokenAuth) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainStreamInterceptor(a.StreamInterceptor()),
		grpc.ChainUnaryInterceptor(a.UnaryInterceptor()),
	}
}

// ServerTLS returns the gRPC server option serving TLS (1.2 or later)
// with the certificate and key files. The pair is read again when either
// file changes (checked at most once a second, on a handshake), so a
// renewed certificate needs no restart; a pair that fails to load keeps
// the previous one.
func ServerTLS(certFile, keyFile string, log *slog.Logger) (grpc.ServerOption, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.load(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.get,
		NextProtos:     []string{"h2"},
	}
	return grpc.Creds(credentials.NewTLS(cfg)), nil
}

type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string
	checkedAt time.Time
}

func (r *certReloader) fileStamp() (string, error) {
	var sb strings.Builder
	for _, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&sb, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return sb.String(), nil
}

// load reads the pair; r.mu must be held or r not yet shared.
func (r *certReloader) load() error {
	stamp, err := r.fileStamp()
	if err != nil {
		return fmt.Errorf("xds tls: %w", err)
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("xds tls: %w", err)
	}
	r.cert, r.stamp, r.checkedAt = &c, stamp, time.Now()
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checkedAt) >= time.Second {
		r.checkedAt = time.Now()
		if stamp, err := r.fileStamp(); err == nil && stamp != r.stamp {
			if err := r.load(); err != nil {
				r.log.Error("xds tls: certificate reload failed; keeping the previous one", "error", err)
			} else {
				r.log.Info("xds tls: certificate reloaded", "cert_file", r.certFile)
			}
		}
	}
	return r.cert, nil
}

// peerAddr is the remote address of ctx's gRPC peer, for logs.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
