package jwtattack_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/jwtauth/jwtattack"
)

// TestKeyHelpersMatchJWTAuth checks the helpers against the real jwtauth:
// the thumbprint and JWK are jwtauth's, ActiveKey finds the key a KeyStore
// signs with, and a planted retired key is accepted by OpenKeyStore as a
// valid key file and removed once its grace period has passed.
func TestKeyHelpersMatchJWTAuth(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	retired, retiredKID, err := jwtattack.PlantRetiredKey(dir, time.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want, err := jwtauth.Thumbprint(&retired.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if retiredKID != want {
		t.Fatalf("Thumbprint %s, jwtauth says %s", retiredKID, want)
	}
	doc, _ := json.Marshal(map[string]any{"keys": []jwtattack.JWK{jwtattack.PublicJWK(retiredKID, &retired.PublicKey)}})
	keys, err := jwtauth.ParseJWKS(doc)
	if err != nil || keys[retiredKID] == nil {
		t.Fatalf("PublicJWK not accepted by jwtauth.ParseJWKS: %v", err)
	}

	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: dir})
	if err != nil {
		t.Fatalf("OpenKeyStore refused the planted key file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, retiredKID+".json")); !os.IsNotExist(err) {
		t.Fatalf("planted retired key not removed after its grace: %v", err)
	}
	priv, kid, err := jwtattack.ActiveKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: "iss", Audience: []string{"aud"}, TTL: time.Minute, Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := is.Issue("alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.PublicKey.Equal(mustKey(t, ks, kid)) {
		t.Fatal("ActiveKey is not the key the KeyStore publishes under that kid")
	}
	v, err := jwtauth.NewVerifier(jwtauth.VerifierConfig{Issuers: []jwtauth.TrustedIssuer{{Issuer: "iss", Audiences: []string{"aud"}, Keys: ks}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), tok.Raw); err != nil {
		t.Fatalf("issued token: %v", err)
	}
	cases, err := jwtattack.Cases(jwtattack.Config{Key: priv, KID: kid, Issuer: "iss", Audience: "aud", Retired: retired, RetiredKID: retiredKID})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if c.InQuery {
			continue
		}
		_, err := v.Verify(context.Background(), c.Token)
		if (c.Reason == jwtattack.Pass) != (err == nil) {
			t.Errorf("%s: Verify = %v", c.Name, err)
		}
	}
}

func mustKey(t *testing.T, ks *jwtauth.KeyStore, kid string) *ecdsa.PublicKey {
	t.Helper()
	pk, err := ks.PublicKey(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := pk.Key.(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("key %T", pk.Key)
	}
	return k
}
