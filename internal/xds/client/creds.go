package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// tokenCreds sends "authorization: Bearer <token>" on every stream, the
// token read from a file and read again when the file changes (its size
// or modification time), so a rotated token is used from the next
// reconnect on without a restart.
type tokenCreds struct {
	file string

	mu    sync.Mutex
	token string
	stamp string
}

var _ credentials.PerRPCCredentials = (*tokenCreds)(nil)

func newTokenCreds(file string) (*tokenCreds, error) {
	c := &tokenCreds{file: file}
	if _, err := c.current(); err != nil {
		return nil, err
	}
	return c, nil
}

// current returns the token, reading the file again when it changed. A
// file that became unreadable or empty keeps the previous token.
func (c *tokenCreds) current() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fi, err := os.Stat(c.file)
	if err != nil {
		if c.token != "" {
			return c.token, nil
		}
		return "", fmt.Errorf("xds token file: %w", err)
	}
	stamp := fmt.Sprintf("%d/%d", fi.ModTime().UnixNano(), fi.Size())
	if stamp == c.stamp && c.token != "" {
		return c.token, nil
	}
	b, err := os.ReadFile(c.file)
	if err != nil {
		if c.token != "" {
			return c.token, nil
		}
		return "", fmt.Errorf("xds token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		if c.token != "" {
			return c.token, nil
		}
		return "", fmt.Errorf("xds token file %s: want one token on one line", c.file)
	}
	c.token, c.stamp = tok, stamp
	return tok, nil
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (c *tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok, err := c.current()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a
// token also goes over plaintext (a loopback control plane in
// development); set CAFile or TLS in production.
func (c *tokenCreds) RequireTransportSecurity() bool { return false }

// transportCredentials returns the transport credentials of cfg: TLS when
// CAFile is set or TLS is true (the system roots without a CA file),
// plaintext otherwise.
func transportCredentials(cfg Config) (credentials.TransportCredentials, error) {
	if cfg.CAFile == "" && !cfg.TLS {
		return insecure.NewCredentials(), nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.ServerName}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("xds ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("xds ca file %s: no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	return credentials.NewTLS(tc), nil
}

// securityDialOptions are the dial options of cfg's transport security and
// token.
func securityDialOptions(cfg Config) ([]grpc.DialOption, error) {
	tc, err := transportCredentials(cfg)
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(tc)}
	if cfg.TokenFile != "" {
		creds, err := newTokenCreds(cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithPerRPCCredentials(creds))
	}
	return opts, nil
}
