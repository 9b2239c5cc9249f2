package edge

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/jwtauth/jwtattack"
)

// TestSecurityEdgeJWTAttacks sends the shared JWT attack table
// (internal/jwtauth/jwtattack) to a real edge process over a real socket,
// on a route that requires a token: every forged token gets 401 (431 when
// oversized) with the JSON error and a Bearer challenge, never a 5xx, never
// reaches the backend, never echoes the token; the controls pass; the
// attacker's server named in jku/x5u is never contacted; the oversized
// token costs no signature check (the edge's own counter). The retired key
// was planted in the key directory before the edge started, retired past
// its grace period: the edge removed it at start.
func TestSecurityEdgeJWTAttacks(t *testing.T) {
	keysDir := t.TempDir() + "/keys"
	retired, retiredKID, err := jwtattack.PlantRetiredKey(keysDir, time.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	m := startSecMesh(t, secOpts{keysDir: keysDir})
	if !logHas(m.edge.Output(), `"msg":"removed retired signing key"`, retiredKID) {
		t.Fatalf("the edge did not remove the planted retired key %s:\n%s", retiredKID, m.edge.Output())
	}
	key, kid, err := jwtattack.ActiveKey(keysDir)
	if err != nil {
		t.Fatal(err)
	}

	var attackerHits atomic.Int64
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attackerHits.Add(1)
	}))
	defer attacker.Close()

	cases, err := jwtattack.Cases(jwtattack.Config{
		Key: key, KID: kid, Issuer: m.issuer, Audience: "petmesh", Now: time.Now(),
		Retired: retired, RetiredKID: retiredKID, AttackerURL: attacker.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			req, err := tc.Request("GET", m.url+"/pets/attack")
			if err != nil {
				t.Fatal(err)
			}
			hits := m.pets.hits.Load()
			checks := m.metric("petmesh_edge_jwt_signature_checks_total")
			resp, err := m.hc.Do(req)
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
				if m.pets.hits.Load() != hits+1 {
					t.Fatal("a valid token did not reach the backend")
				}
				if got := m.pets.header().Get("X-Petmesh-Subject"); got != "alice" {
					t.Fatalf("backend saw subject %q, want the token's (alice), not the client's header", got)
				}
				return
			}
			if n := m.pets.hits.Load(); n != hits {
				t.Fatalf("a refused request reached the backend (%d → %d)", hits, n)
			}
			if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") && tc.Status == http.StatusUnauthorized {
				t.Errorf("401 without a Bearer challenge: %q", resp.Header.Get("WWW-Authenticate"))
			}
			var e struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
				t.Fatalf("not the JSON error shape: %s", body)
			}
			if strings.Contains(string(body), tc.Secret()) || strings.Contains(resp.Header.Get("WWW-Authenticate"), tc.Secret()) {
				t.Fatal("the response echoes the token")
			}
			if tc.Reason == jwtattack.TooLarge {
				if after := m.metric("petmesh_edge_jwt_signature_checks_total"); after != checks {
					t.Fatalf("the oversized token cost %v signature checks", after-checks)
				}
			}
		})
	}
	if n := attackerHits.Load(); n != 0 {
		t.Fatalf("the attacker's server got %d requests", n)
	}
	for _, tc := range cases {
		if strings.Contains(m.edge.Output(), tc.Secret()) {
			t.Fatalf("the edge's log holds the token of %q", tc.Name)
		}
	}
}

// logHas reports whether one line of a JSON log holds every part.
func logHas(log string, parts ...string) bool {
	for line := range strings.Lines(log) {
		all := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}
