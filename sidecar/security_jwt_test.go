package sidecar_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/jwtauth/jwtattack"
)

// newIssuerInDir is newIssuer with a key directory the test can read
// (and plant keys in before the key store opens it).
func newIssuerInDir(t *testing.T, dir string) *issuer {
	t.Helper()
	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: testIssuer, Audience: []string{"petmesh"}, TTL: 15 * time.Minute, Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/.well-known/jwks.json", ks.JWKSHandler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &issuer{srv: srv, is: is}
}

// countingApp is a healthy app that counts its requests other than health
// checks (the sidecar's own /health checks, and the active /ready checks
// the proxies holding the echo cluster send) and echoes the identity it was
// given.
func countingApp(t *testing.T) (*app, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	a := &app{started: make(chan struct{}, 16), release: make(chan struct{})}
	a.healthy.Store(true)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" || r.URL.Path == "/ready" {
			_, _ = io.WriteString(w, `{"status":"ok"}`)
			return
		}
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echoed{
			Path: r.URL.Path, Host: r.Host,
			Subject: r.Header.Get("X-Petmesh-Subject"), Roles: r.Header.Get("X-Petmesh-Roles"),
			Auth: r.Header.Get("Authorization") != "",
		})
	}))
	t.Cleanup(a.srv.Close)
	return a, &hits
}

// TestSecurityInboundJWTAttacks sends the shared JWT attack table
// (internal/jwtauth/jwtattack) to a real sidecar's inbound listener over a
// real socket: the sidecar verifies tokens again (zero trust) with the
// issuer's JWKS, so every forged token gets 401 (431 when oversized) with a
// JSON error, never a 5xx, and never reaches the app; the controls pass;
// the attacker's server named in jku/x5u gets no request. The issuer's
// retired key was planted before its key store opened, retired past its
// grace period, so the JWKS the sidecar fetches no longer has it.
func TestSecurityInboundJWTAttacks(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	retired, retiredKID, err := jwtattack.PlantRetiredKey(keys, time.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	iss := newIssuerInDir(t, keys)
	key, kid, err := jwtattack.ActiveKey(keys)
	if err != nil {
		t.Fatal(err)
	}
	cp := startControlPlane(t, iss)
	a, hits := countingApp(t)
	sc := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-attacks", app: a, cp: cp})
	waitReady(t, sc)
	waitHealth(t, cp, "echo-attacks", registry.HealthPassing)

	var attackerHits atomic.Int64
	attacker := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { attackerHits.Add(1) }))
	defer attacker.Close()
	cases, err := jwtattack.Cases(jwtattack.Config{
		Key: key, KID: kid, Issuer: testIssuer, Audience: "petmesh", Now: time.Now(),
		Retired: retired, RetiredKID: retiredKID, AttackerURL: attacker.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	in := sc.URL("inbound")
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			req, err := tc.Request("GET", in+"/echo/attack")
			if err != nil {
				t.Fatal(err)
			}
			before := hits.Load()
			resp, err := httpClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				t.Fatalf("5xx for an attack: %d %s", resp.StatusCode, body)
			}
			if resp.StatusCode != tc.Status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.Status, body)
			}
			if tc.Status == http.StatusOK {
				var e echoed
				if err := json.Unmarshal(body, &e); err != nil || e.Subject != "alice" {
					t.Fatalf("app saw %s (%v), want subject alice from the token, not the client's header", body, err)
				}
				return
			}
			if n := hits.Load(); n != before {
				t.Fatalf("a refused request reached the app (%d → %d)", before, n)
			}
			var e struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
				t.Fatalf("not the JSON error shape: %s", body)
			}
			if tc.Status == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without a Bearer challenge: %q", resp.Header.Get("WWW-Authenticate"))
			}
			if strings.Contains(string(body), tc.Secret()) {
				t.Fatal("the response echoes the token")
			}
		})
	}
	if n := attackerHits.Load(); n != 0 {
		t.Fatalf("the attacker's server got %d requests", n)
	}
	out := sc.Output()
	for _, tc := range cases {
		if strings.Contains(out, tc.Secret()) {
			t.Fatalf("the sidecar's log holds the token of %q", tc.Name)
		}
	}
}
