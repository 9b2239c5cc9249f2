package jwtauth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/jwtauth/jwtattack"
)

// reasonErr maps each reason of the shared attack table to the sentinel
// Verify must return.
var reasonErr = map[jwtattack.Reason]error{
	jwtattack.Pass:         nil,
	jwtattack.Algorithm:    ErrAlgorithm,
	jwtattack.BadSignature: ErrBadSignature,
	jwtattack.Expired:      ErrExpired,
	jwtattack.NotYetValid:  ErrNotYetValid,
	jwtattack.BadIssuer:    ErrBadIssuer,
	jwtattack.BadAudience:  ErrBadAudience,
	jwtattack.MissingClaim: ErrMissingClaim,
	jwtattack.Malformed:    ErrMalformed,
	jwtattack.UnknownKey:   ErrUnknownKey,
	jwtattack.Critical:     ErrCritical,
	jwtattack.TooLarge:     ErrTooLarge,
	jwtattack.QueryToken:   ErrQueryToken,
}

// TestAttacks runs the JWT attack table of the security issue
// (internal/jwtauth/jwtattack, shared with the edge and sidecar tests):
// each token must be refused by Verify with the named sentinel and by the
// middleware with 401 (431 when oversized), the protected handler never
// reached and no request ever made to the attacker's server.
func TestAttacks(t *testing.T) {
	env := newTestEnv(t, nil)

	// A key that was rotated out and whose grace period has passed.
	retired := env.activeKey(t)
	must(t, env.keys.Rotate())
	env.clock.Advance(time.Hour + 30*time.Second)
	must(t, env.keys.Maintain())
	active := env.activeKey(t)

	var attackerHits atomic.Int64
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attackerHits.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	defer attacker.Close()

	cases, err := jwtattack.Cases(jwtattack.Config{
		Key: active.priv, KID: active.KID, Issuer: testIssuer, Audience: testAudience,
		Now: env.clock.Now(), Leeway: DefaultLeeway, MaxTokenSize: DefaultMaxTokenSize,
		Retired: retired.priv, RetiredKID: retired.KID, AttackerURL: attacker.URL,
	})
	must(t, err)
	if len(cases) < 40 {
		t.Fatalf("attack table has %d cases", len(cases))
	}

	var reached atomic.Int64
	protected := Middleware(env.verifier, MiddlewareOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	for _, tt := range cases {
		t.Run(tt.Name, func(t *testing.T) {
			wantErr, ok := reasonErr[tt.Reason]
			if !ok {
				t.Fatalf("reason %q has no sentinel in reasonErr", tt.Reason)
			}
			if !tt.InQuery {
				before := env.verifier.Stats().SignatureChecks
				_, err := env.verifier.Verify(context.Background(), tt.Token)
				if wantErr == nil && err != nil {
					t.Fatalf("Verify = %v; want success", err)
				}
				if wantErr != nil && !errors.Is(err, wantErr) {
					t.Fatalf("Verify = %v; want %v", err, wantErr)
				}
				if tt.Reason == jwtattack.TooLarge && env.verifier.Stats().SignatureChecks != before {
					t.Fatal("oversized token reached signature verification")
				}
			}
			req, err := tt.Request(http.MethodGet, "http://edge.test/pets")
			must(t, err)
			rec := httptest.NewRecorder()
			n := reached.Load()
			protected.ServeHTTP(rec, req)
			if rec.Code != tt.Status {
				t.Fatalf("middleware status %d; want %d; body %s", rec.Code, tt.Status, rec.Body)
			}
			if tt.Status == http.StatusOK {
				if reached.Load() != n+1 {
					t.Fatal("handler not reached for a valid token")
				}
				return
			}
			if reached.Load() != n {
				t.Fatal("handler reached with a rejected token")
			}
			if !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer ") {
				t.Errorf("WWW-Authenticate %q", rec.Header().Get("WWW-Authenticate"))
			}
			var body struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error.Code == "" {
				t.Fatalf("body %q is not the JSON error shape: %v", rec.Body, err)
			}
			if strings.Contains(rec.Body.String(), tt.Secret()) || strings.Contains(rec.Header().Get("WWW-Authenticate"), tt.Secret()) {
				t.Fatal("response echoes the token")
			}
		})
	}
	for r := range reasonErr {
		if !slices.ContainsFunc(cases, func(c jwtattack.Case) bool { return c.Reason == r }) {
			t.Errorf("no attack case with reason %q", r)
		}
	}
	if n := attackerHits.Load(); n != 0 {
		t.Fatalf("attacker server received %d requests; want 0", n)
	}
}

// TestOversizedTokenIsCheap checks that a 9 KB token is refused by length
// alone: it costs no signature work and far less time than one verify.
func TestOversizedTokenIsCheap(t *testing.T) {
	env := newTestEnv(t, func(c *VerifierConfig) { c.CacheSize = -1 })
	k := env.activeKey(t)
	c := env.validClaims()
	c["pad"] = strings.Repeat("A", 9<<10)
	big := sign(t, k.priv, map[string]any{"kid": k.KID}, c)
	res := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			if _, err := env.verifier.Verify(context.Background(), big); !errors.Is(err, ErrTooLarge) {
				b.Fatal(err)
			}
		}
	})
	if env.verifier.Stats().SignatureChecks != 0 {
		t.Fatal("oversized token reached signature verification")
	}
	// Reported, not asserted against wall clock: the counter above is the check.
	t.Logf("oversized token rejected in %d ns/op", res.NsPerOp())
}
