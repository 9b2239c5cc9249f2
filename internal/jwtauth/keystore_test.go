package jwtauth

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestThumbprintRFC7638Example(t *testing.T) {
	// RFC 7638 §3.1 example key and its thumbprint.
	n, err := b64.DecodeString("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
	if err != nil {
		t.Fatal(err)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: 65537}
	got, err := Thumbprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	if want := "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"; got != want {
		t.Fatalf("thumbprint = %s, want %s", got, want)
	}
}

func keyStates(ks *KeyStore) map[KeyState][]string {
	m := map[KeyState][]string{}
	for _, k := range ks.Keys() {
		m[k.State] = append(m[k.State], k.KID)
	}
	return m
}

func TestKeyStoreFirstStartAndRestart(t *testing.T) {
	clock := newFakeClock()
	dir := filepath.Join(t.TempDir(), "keys")
	cfg := KeyStoreConfig{Dir: dir, Now: clock.Now}
	ks, err := OpenKeyStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st := keyStates(ks)
	if len(st[KeyActive]) != 1 || len(st[KeyNext]) != 1 || len(st[KeyRetired]) != 0 {
		t.Fatalf("first start: states %v; want one active and one next", st)
	}
	dirInfo, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := dirInfo.Mode().Perm(); perm != 0o700 {
		t.Errorf("key dir mode %04o; want 0700", perm)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("%d files in key dir; want 2 (no temp files left)", len(entries))
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if perm := info.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s: mode %04o; want 0600", e.Name(), perm)
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "BEGIN PRIVATE KEY") {
			t.Errorf("%s: no PKCS#8 private key", e.Name())
		}
	}

	clock.Advance(time.Hour)
	ks2, err := OpenKeyStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st2 := keyStates(ks2)
	if st2[KeyActive][0] != st[KeyActive][0] || st2[KeyNext][0] != st[KeyNext][0] {
		t.Fatalf("restart changed keys: before %v after %v", st, st2)
	}
}

func TestKeyStoreRotationAndGrace(t *testing.T) {
	env := newTestEnv(t, nil)
	first := env.activeKey(t)
	next := keyStates(env.keys)[KeyNext][0]
	tok, err := env.issuer.Issue("alice", []string{"viewer"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.KID != first.KID {
		t.Fatalf("token kid %s; want active %s", tok.KID, first.KID)
	}

	steps := []struct {
		desc       string
		advance    time.Duration
		wantActive string // "" = unchanged from the previous step
		wantFirst  KeyState
		wantErr    error // verifying a forged long-lived token by the first key
	}{
		{desc: "before the interval nothing rotates", advance: 23 * time.Hour, wantActive: first.KID, wantFirst: KeyActive},
		{desc: "at the interval the pre-published next key takes over", advance: time.Hour, wantActive: next, wantFirst: KeyRetired},
		{desc: "retired key still verifies within max lifetime + leeway", advance: time.Hour + 29*time.Second, wantFirst: KeyRetired},
		{desc: "retired key removed after its grace period", advance: time.Second, wantFirst: "", wantErr: ErrUnknownKey},
	}
	for _, s := range steps {
		env.clock.Advance(s.advance)
		if err := env.keys.Maintain(); err != nil {
			t.Fatalf("%s: maintain: %v", s.desc, err)
		}
		if s.wantActive != "" {
			if got := env.activeKey(t).KID; got != s.wantActive {
				t.Fatalf("%s: active %s; want %s", s.desc, got, s.wantActive)
			}
		}
		var state KeyState
		for _, k := range env.keys.Keys() {
			if k.KID == first.KID {
				state = k.State
			}
		}
		if state != s.wantFirst {
			t.Fatalf("%s: first key state %q; want %q", s.desc, state, s.wantFirst)
		}
		_, statErr := os.Stat(filepath.Join(env.dir, first.KID+".json"))
		if (s.wantFirst == "") != errors.Is(statErr, os.ErrNotExist) {
			t.Fatalf("%s: key file presence wrong: %v", s.desc, statErr)
		}
		// A token the first key signed with an exp far ahead: accepted while
		// the key is kept, refused once it is gone.
		claims := env.validClaims()
		forged := sign(t, first.priv, map[string]any{"kid": first.KID}, claims)
		_, err := env.verifier.Verify(context.Background(), forged)
		if !errors.Is(err, s.wantErr) || (s.wantErr == nil && err != nil) {
			t.Fatalf("%s: verify = %v; want %v", s.desc, err, s.wantErr)
		}
	}
	// Three keys were ever created; the first is gone; a new next exists.
	st := keyStates(env.keys)
	if len(st[KeyActive]) != 1 || len(st[KeyNext]) != 1 || len(st[KeyRetired]) != 0 {
		t.Fatalf("final states %v", st)
	}
}

func TestKeyStoreForcedRotationAndCrashRecovery(t *testing.T) {
	env := newTestEnv(t, nil)
	a := env.activeKey(t)
	env.clock.Advance(time.Second)
	if err := env.keys.Rotate(); err != nil {
		t.Fatal(err)
	}
	b := env.activeKey(t)
	if a.KID == b.KID {
		t.Fatal("Rotate did not change the active key")
	}
	// Simulate a crash between activating and retiring: the old key's file
	// says active again.
	a.RetiredAt = time.Time{}
	if err := writeKey(env.dir, a); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(time.Minute)
	ks, err := OpenKeyStore(KeyStoreConfig{Dir: env.dir, Now: env.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	st := keyStates(ks)
	if len(st[KeyActive]) != 1 || st[KeyActive][0] != b.KID {
		t.Fatalf("after crash recovery active = %v; want only %s", st[KeyActive], b.KID)
	}
}

func TestKeyStoreRefusesBadFiles(t *testing.T) {
	tests := []struct {
		desc    string
		corrupt func(t *testing.T, dir, kid string)
		wantErr string
	}{
		{
			desc:    "group readable key file",
			corrupt: func(t *testing.T, dir, kid string) { must(t, os.Chmod(filepath.Join(dir, kid+".json"), 0o640)) },
			wantErr: "too open",
		},
		{
			desc: "kid does not match key",
			corrupt: func(t *testing.T, dir, kid string) {
				p := filepath.Join(dir, kid+".json")
				data, err := os.ReadFile(p)
				must(t, err)
				var kf map[string]any
				must(t, json.Unmarshal(data, &kf))
				kf["kid"] = "other"
				must(t, os.Remove(p))
				out, _ := json.Marshal(kf)
				must(t, os.WriteFile(filepath.Join(dir, "other.json"), out, 0o600))
			},
			wantErr: "does not match",
		},
		{
			desc: "garbage",
			corrupt: func(t *testing.T, dir, kid string) {
				must(t, os.WriteFile(filepath.Join(dir, kid+".json"), []byte("{"), 0o600))
			},
			wantErr: "decode",
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			env := newTestEnv(t, nil)
			tt.corrupt(t, env.dir, env.activeKey(t).KID)
			_, err := OpenKeyStore(KeyStoreConfig{Dir: env.dir, Now: env.clock.Now})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("OpenKeyStore = %v; want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestKeyStoreConfigValidation(t *testing.T) {
	tests := []struct {
		desc string
		cfg  KeyStoreConfig
	}{
		{"no dir", KeyStoreConfig{}},
		{"jwks max age not below rotation", KeyStoreConfig{Dir: "x", RotationInterval: time.Minute, JWKSMaxAge: time.Minute}},
		{"tiny lifetime", KeyStoreConfig{Dir: "x", MaxTokenLifetime: time.Millisecond}},
		{"negative leeway", KeyStoreConfig{Dir: "x", Leeway: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if _, err := OpenKeyStore(tt.cfg); err == nil {
				t.Fatal("want a config error")
			}
		})
	}
}

func TestJWKSHandler(t *testing.T) {
	env := newTestEnv(t, nil)
	srv := httptest.NewServer(env.keys.JWKSHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	must(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=300" {
		t.Errorf("Cache-Control %q", cc)
	}
	var raw map[string][]map[string]any
	must(t, json.NewDecoder(resp.Body).Decode(&raw))
	if len(raw["keys"]) != 2 {
		t.Fatalf("%d keys published; want active and next", len(raw["keys"]))
	}
	for _, k := range raw["keys"] {
		for _, private := range []string{"d", "p", "q", "dp", "dq", "qi"} {
			if _, ok := k[private]; ok {
				t.Fatalf("JWKS leaks private member %q", private)
			}
		}
		if k["kty"] != "EC" || k["crv"] != "P-256" || k["alg"] != "ES256" || k["use"] != "sig" {
			t.Errorf("key %v", k)
		}
	}
	// It parses back and the kids are thumbprints of the keys.
	body, _ := json.Marshal(raw)
	keys, err := ParseJWKS(body)
	must(t, err)
	for kid, k := range keys {
		tp, err := Thumbprint(k.Key)
		must(t, err)
		if tp != kid {
			t.Errorf("kid %s is not the thumbprint %s", kid, tp)
		}
	}

	tests := []struct {
		desc   string
		method string
		inm    string
		want   int
	}{
		{"etag match", http.MethodGet, resp.Header.Get("ETag"), http.StatusNotModified},
		{"head", http.MethodHead, "", http.StatusOK},
		{"post refused", http.MethodPost, "", http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL, nil)
			if tt.inm != "" {
				req.Header.Set("If-None-Match", tt.inm)
			}
			resp, err := http.DefaultTransport.RoundTrip(req)
			must(t, err)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d; want %d", resp.StatusCode, tt.want)
			}
		})
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
