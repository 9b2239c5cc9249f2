// Package jwttest is a real token issuer for tests: a key store in a
// temporary directory and an ES256 issuer for audience "petmesh".
package jwttest

import (
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/jwtauth"
)

// Issuer issues tokens of issuer iss with keys from Keys.
type Issuer struct {
	Keys *jwtauth.KeyStore
	is   *jwtauth.Issuer
	t    testing.TB
}

// New opens a key store in a temporary directory of t and an issuer iss
// of 15-minute tokens for audience "petmesh".
func New(t testing.TB, iss string) *Issuer {
	t.Helper()
	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: iss, Audience: []string{"petmesh"}, TTL: 15 * time.Minute, Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	return &Issuer{Keys: ks, is: is, t: t}
}

// Token returns a signed token of sub with roles.
func (i *Issuer) Token(sub string, roles ...string) string {
	i.t.Helper()
	tok, err := i.is.Issue(sub, roles)
	if err != nil {
		i.t.Fatal(err)
	}
	return tok.Raw
}
