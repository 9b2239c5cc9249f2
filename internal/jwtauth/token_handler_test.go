package jwtauth

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// testHashes are computed once per test binary: bcrypt is deliberately
// slow, and much slower under the race detector.
var testHashes = sync.OnceValue(func() map[string]string {
	m := map[string]string{}
	for _, pw := range []string{"alice-pw", "sync-secret", "dummy"} {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), MinBcryptCost)
		if err != nil {
			panic(err)
		}
		m[pw] = string(h)
	}
	return m
})

// countingCompare stands in for bcrypt.CompareHashAndPassword: it records
// which hashes were compared and answers from the known test hashes.
type countingCompare struct {
	mu     sync.Mutex
	hashes [][]byte
}

func (c *countingCompare) compare(hash, pw []byte) error {
	c.mu.Lock()
	c.hashes = append(c.hashes, hash)
	c.mu.Unlock()
	if h, ok := testHashes()[string(pw)]; ok && h == string(hash) {
		return nil
	}
	return bcrypt.ErrMismatchedHashAndPassword
}

func (c *countingCompare) calls() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.hashes)
}

type tokenEnv struct {
	*testEnv
	h       *TokenHandler
	cmp     *countingCompare
	aliceH  string
	syncH   string
	handler http.Handler
}

func newTokenEnv(t *testing.T, limits func(*TokenHandlerConfig, *fakeClock)) *tokenEnv {
	t.Helper()
	env := newTestEnv(t, nil)
	aliceH, syncH := testHashes()["alice-pw"], testHashes()["sync-secret"]
	users, err := NewUsers([]User{{Username: "alice", PasswordHash: aliceH, Roles: []string{"viewer"}}})
	must(t, err)
	accts, err := NewServiceAccounts([]ServiceAccount{{ClientID: "sync", SecretHash: syncH, Roles: []string{"sync", "viewer"}}})
	must(t, err)
	cmp := &countingCompare{}
	cfg := TokenHandlerConfig{
		Issuer: env.issuer, Users: users, ServiceAccounts: accts, Compare: cmp.compare, Now: env.clock.Now,
		dummyHash: []byte(testHashes()["dummy"]),
	}
	if limits != nil {
		limits(&cfg, env.clock)
	}
	h, err := NewTokenHandler(cfg)
	must(t, err)
	return &tokenEnv{testEnv: env, h: h, cmp: cmp, aliceH: aliceH, syncH: syncH, handler: h}
}

func (e *tokenEnv) do(method, ctype, body string, mutate func(*http.Request)) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "/auth/token", strings.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if mutate != nil {
		mutate(req)
	}
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)
	return rec
}

const formCT = "application/x-www-form-urlencoded"

func TestTokenEndpoint(t *testing.T) {
	e := newTokenEnv(t, nil)
	basic := func(id, secret string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret)) }
	}
	tests := []struct {
		desc      string
		method    string
		ctype     string
		body      string
		mutate    func(*http.Request)
		want      int
		wantCode  string // JSON error code (httpx shape) or OAuth2 "error"
		wantSub   string
		wantRoles []string
	}{
		{desc: "user login", ctype: "application/json", body: `{"username":"alice","password":"alice-pw"}`, want: 200, wantSub: "alice", wantRoles: []string{"viewer"}},
		{desc: "user wrong password", ctype: "application/json", body: `{"username":"alice","password":"nope"}`, want: 401, wantCode: "unauthenticated"},
		{desc: "unknown user", ctype: "application/json", body: `{"username":"mallory","password":"nope"}`, want: 401, wantCode: "unauthenticated"},
		{desc: "service account as user", ctype: "application/json", body: `{"username":"sync","password":"sync-secret"}`, want: 401, wantCode: "unauthenticated"},
		{desc: "missing username", ctype: "application/json", body: `{"password":"x"}`, want: 400, wantCode: "invalid_argument"},
		{desc: "missing password", ctype: "application/json", body: `{"username":"alice"}`, want: 400, wantCode: "invalid_argument"},
		{desc: "unknown field", ctype: "application/json", body: `{"username":"alice","password":"x","admin":true}`, want: 400, wantCode: "invalid_argument"},
		{desc: "malformed JSON", ctype: "application/json", body: `{"username":`, want: 400, wantCode: "invalid_argument"},
		{desc: "password over 72 bytes", ctype: "application/json", body: `{"username":"alice","password":"` + strings.Repeat("x", 73) + `"}`, want: 400, wantCode: "invalid_argument"},
		{desc: "client credentials in form", ctype: formCT, body: "grant_type=client_credentials&client_id=sync&client_secret=sync-secret", want: 200, wantSub: "sync", wantRoles: []string{"sync", "viewer"}},
		{desc: "client credentials with basic", ctype: formCT, body: "grant_type=client_credentials", mutate: basic("sync", "sync-secret"), want: 200, wantSub: "sync", wantRoles: []string{"sync", "viewer"}},
		{desc: "wrong client secret", ctype: formCT, body: "grant_type=client_credentials&client_id=sync&client_secret=bad", want: 401, wantCode: "invalid_client"},
		{desc: "wrong basic secret", ctype: formCT, body: "grant_type=client_credentials", mutate: basic("sync", "bad"), want: 401, wantCode: "invalid_client"},
		{desc: "unknown client", ctype: formCT, body: "grant_type=client_credentials&client_id=ghost&client_secret=bad", want: 401, wantCode: "invalid_client"},
		{desc: "user as client", ctype: formCT, body: "grant_type=client_credentials&client_id=alice&client_secret=alice-pw", want: 401, wantCode: "invalid_client"},
		{desc: "no client credentials", ctype: formCT, body: "grant_type=client_credentials", want: 401, wantCode: "invalid_client"},
		{desc: "both client auth methods", ctype: formCT, body: "grant_type=client_credentials&client_id=sync&client_secret=sync-secret", mutate: basic("sync", "sync-secret"), want: 400, wantCode: "invalid_request"},
		{desc: "password grant unsupported", ctype: formCT, body: "grant_type=password&username=alice&password=alice-pw", want: 400, wantCode: "unsupported_grant_type"},
		{desc: "missing grant type", ctype: formCT, body: "client_id=sync&client_secret=sync-secret", want: 400, wantCode: "invalid_request"},
		{desc: "repeated grant type", ctype: formCT, body: "grant_type=client_credentials&grant_type=client_credentials&client_id=sync&client_secret=sync-secret", want: 400, wantCode: "invalid_request"},
		{desc: "secret in the query only", ctype: formCT, body: "grant_type=client_credentials", mutate: func(r *http.Request) { r.URL.RawQuery = "client_id=sync&client_secret=sync-secret" }, want: 401, wantCode: "invalid_client"},
		{desc: "other content type", ctype: "text/plain", body: "hi", want: 415, wantCode: "unsupported_media_type"},
		{desc: "GET", method: http.MethodGet, want: 405, wantCode: "method_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			rec := e.do(method, tt.ctype, tt.body, tt.mutate)
			if rec.Code != tt.want {
				t.Fatalf("status %d; want %d; body %s", rec.Code, tt.want, rec.Body)
			}
			if tt.want == 200 {
				var resp TokenResponse
				must(t, json.Unmarshal(rec.Body.Bytes(), &resp))
				if resp.TokenType != "Bearer" || resp.ExpiresIn != 900 || resp.AccessToken == "" {
					t.Fatalf("response %+v", resp)
				}
				if rec.Header().Get("Cache-Control") != "no-store" {
					t.Errorf("Cache-Control %q", rec.Header().Get("Cache-Control"))
				}
				c, err := e.verifier.Verify(context.Background(), resp.AccessToken)
				must(t, err)
				if c.Subject != tt.wantSub || !slices.Equal(c.Roles, tt.wantRoles) {
					t.Fatalf("claims %+v", c)
				}
				return
			}
			var body map[string]any
			must(t, json.Unmarshal(rec.Body.Bytes(), &body))
			code, _ := body["error"].(string)
			if m, ok := body["error"].(map[string]any); ok {
				code, _ = m["code"].(string)
			}
			if code != tt.wantCode {
				t.Fatalf("error code %q; want %q (%s)", code, tt.wantCode, rec.Body)
			}
			if strings.Contains(rec.Body.String(), "pw") || strings.Contains(rec.Body.String(), "secret\"") {
				t.Fatalf("error body echoes credentials: %s", rec.Body)
			}
		})
	}
}

// TestUnknownUserCostsOneBcrypt checks the constant-time failure path: an
// unknown name runs exactly one bcrypt comparison, against a dummy hash of
// the same cost as the real ones, and the answer is byte-identical to a
// wrong password's.
func TestUnknownUserCostsOneBcrypt(t *testing.T) {
	e := newTokenEnv(t, nil)
	wrong := e.do(http.MethodPost, "application/json", `{"username":"alice","password":"nope"}`, nil)
	unknown := e.do(http.MethodPost, "application/json", `{"username":"mallory","password":"nope"}`, nil)
	if wrong.Code != unknown.Code || wrong.Body.String() != unknown.Body.String() {
		t.Fatalf("wrong password %d %s vs unknown user %d %s", wrong.Code, wrong.Body, unknown.Code, unknown.Body)
	}
	wrongC := e.do(http.MethodPost, formCT, "grant_type=client_credentials&client_id=sync&client_secret=x", nil)
	unknownC := e.do(http.MethodPost, formCT, "grant_type=client_credentials&client_id=ghost&client_secret=x", nil)
	if wrongC.Code != unknownC.Code || wrongC.Body.String() != unknownC.Body.String() {
		t.Fatalf("wrong secret %s vs unknown client %s", wrongC.Body, unknownC.Body)
	}
	calls := e.cmp.calls()
	if len(calls) != 4 {
		t.Fatalf("%d bcrypt comparisons; want exactly one per attempt (4)", len(calls))
	}
	want := [][]byte{[]byte(e.aliceH), e.h.dummy, []byte(e.syncH), e.h.dummy}
	for i := range want {
		if !bytes.Equal(calls[i], want[i]) {
			t.Fatalf("comparison %d used hash %q; want %q", i, calls[i], want[i])
		}
	}
}

// TestDummyHashMatchesCost checks that the dummy hash gets the highest
// cost in use, so unknown names cost as much bcrypt work as known ones.
func TestDummyHashMatchesCost(t *testing.T) {
	h10 := testHashes()["alice-pw"]
	h12 := strings.Replace(h10, "$10$", "$12$", 1) // bcrypt.Cost reads the header only
	users, err := NewUsers([]User{{Username: "a", PasswordHash: h10}, {Username: "b", PasswordHash: h12}})
	must(t, err)
	accts, err := NewServiceAccounts([]ServiceAccount{{ClientID: "c", SecretHash: h10}})
	must(t, err)
	if got := dummyCost(users, accts); got != 12 {
		t.Fatalf("dummy cost %d; want the highest cost 12", got)
	}
	if got := dummyCost(nil, accts); got != MinBcryptCost {
		t.Fatalf("dummy cost %d; want %d", got, MinBcryptCost)
	}
}

func TestLoginRateLimit(t *testing.T) {
	ips := []string{"192.0.2.1"}
	var mu sync.Mutex
	e := newTokenEnv(t, func(c *TokenHandlerConfig, clock *fakeClock) {
		var err error
		c.UserLimit, err = NewRateLimiter(RateLimiterConfig{Burst: 3, Per: 10 * time.Second, MaxKeys: 100, Now: clock.Now})
		must(t, err)
		c.IPLimit, err = NewRateLimiter(RateLimiterConfig{Burst: 5, Per: 10 * time.Second, MaxKeys: 100, Now: clock.Now})
		must(t, err)
		c.ClientIP = func(*http.Request) string { mu.Lock(); defer mu.Unlock(); return ips[0] }
	})
	setIP := func(ip string) { mu.Lock(); ips[0] = ip; mu.Unlock() }
	login := func(user, pw string) *httptest.ResponseRecorder {
		return e.do(http.MethodPost, "application/json", `{"username":"`+user+`","password":"`+pw+`"}`, nil)
	}
	steps := []struct {
		desc    string
		ip      string
		user    string
		pw      string
		advance time.Duration
		want    int
	}{
		{desc: "1st wrong", ip: "192.0.2.1", user: "alice", pw: "x", want: 401},
		{desc: "2nd wrong", ip: "192.0.2.1", user: "alice", pw: "x", want: 401},
		{desc: "3rd wrong", ip: "192.0.2.1", user: "alice", pw: "x", want: 401},
		{desc: "user bucket empty, even with the right password", ip: "192.0.2.1", user: "alice", pw: "alice-pw", want: 429},
		{desc: "other IP, same user still limited", ip: "192.0.2.2", user: "alice", pw: "alice-pw", want: 429},
		{desc: "after one refill the right password works", ip: "192.0.2.2", user: "alice", pw: "alice-pw", advance: 10 * time.Second, want: 200},
		{desc: "unknown users are limited the same way (1)", ip: "192.0.2.3", user: "ghost", pw: "x", want: 401},
		{desc: "unknown users are limited the same way (2)", ip: "192.0.2.3", user: "ghost", pw: "x", want: 401},
		{desc: "unknown users are limited the same way (3)", ip: "192.0.2.3", user: "ghost", pw: "x", want: 401},
		{desc: "unknown users are limited the same way (4)", ip: "192.0.2.3", user: "ghost", pw: "x", want: 429},
		{desc: "IP spraying names: 1", ip: "192.0.2.9", user: "u1", pw: "x", want: 401},
		{desc: "IP spraying names: 2", ip: "192.0.2.9", user: "u2", pw: "x", want: 401},
		{desc: "IP spraying names: 3", ip: "192.0.2.9", user: "u3", pw: "x", want: 401},
		{desc: "IP spraying names: 4", ip: "192.0.2.9", user: "u4", pw: "x", want: 401},
		{desc: "IP spraying names: 5", ip: "192.0.2.9", user: "u5", pw: "x", want: 401},
		{desc: "IP bucket empty", ip: "192.0.2.9", user: "u6", pw: "x", want: 429},
	}
	for _, s := range steps {
		e.clock.Advance(s.advance)
		setIP(s.ip)
		before := len(e.cmp.calls())
		rec := login(s.user, s.pw)
		if rec.Code != s.want {
			t.Fatalf("%s: status %d; want %d (%s)", s.desc, rec.Code, s.want, rec.Body)
		}
		if s.want == 429 {
			if ra := rec.Header().Get("Retry-After"); ra == "" || ra == "0" {
				t.Fatalf("%s: Retry-After %q", s.desc, ra)
			}
			if len(e.cmp.calls()) != before {
				t.Fatalf("%s: a limited attempt still ran bcrypt", s.desc)
			}
		}
	}
}

func TestRateLimiter(t *testing.T) {
	clock := newFakeClock()
	l, err := NewRateLimiter(RateLimiterConfig{Burst: 2, Per: time.Second, MaxKeys: 3, Now: clock.Now})
	must(t, err)
	steps := []struct {
		desc      string
		key       string
		advance   time.Duration
		want      bool
		wantRetry time.Duration
	}{
		{desc: "a 1", key: "a", want: true},
		{desc: "a 2", key: "a", want: true},
		{desc: "a empty", key: "a", want: false, wantRetry: time.Second},
		{desc: "half refilled", key: "a", advance: 500 * time.Millisecond, want: false, wantRetry: 500 * time.Millisecond},
		{desc: "refilled", key: "a", advance: 500 * time.Millisecond, want: true},
		{desc: "b", key: "b", want: true},
		{desc: "c", key: "c", want: true},
		{desc: "d evicts the least recently used (a)", key: "d", want: true},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		ok, retry := l.Allow(s.key)
		if ok != s.want || retry != s.wantRetry {
			t.Fatalf("%s: Allow = %v, %s; want %v, %s", s.desc, ok, retry, s.want, s.wantRetry)
		}
	}
	if l.Len() != 3 {
		t.Fatalf("%d keys; want the bound 3", l.Len())
	}
	// a was evicted, so it starts with a full bucket again.
	if ok, _ := l.Allow("a"); !ok {
		t.Fatal("evicted key should start full")
	}
}

func TestHashPassword(t *testing.T) {
	tests := []struct {
		desc    string
		pw      string
		cost    int
		wantErr bool
	}{
		{"minimum cost", "s3cret", MinBcryptCost, false},
		{"below minimum", "s3cret", 9, true},
		{"empty", "", MinBcryptCost, true},
		{"too long for bcrypt", strings.Repeat("x", 73), MinBcryptCost, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			h, err := HashPassword(tt.pw, tt.cost)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil {
				must(t, bcrypt.CompareHashAndPassword([]byte(h), []byte(tt.pw)))
			}
		})
	}
}

func TestLoadAccounts(t *testing.T) {
	good := testHashes()["dummy"]
	weak, err := bcrypt.GenerateFromPassword([]byte("pw"), 4)
	must(t, err)
	tests := []struct {
		desc    string
		file    string
		content string
		service bool
		wantErr string
		wantN   int
	}{
		{desc: "users yaml", file: "users.yaml", content: "users:\n  - username: alice\n    password_hash: '" + good + "'\n    roles: [viewer, admin]\n", wantN: 1},
		{desc: "users json", file: "users.json", content: `{"users":[{"username":"alice","password_hash":"` + good + `","roles":["viewer"]},{"username":"bob","password_hash":"` + good + `"}]}`, wantN: 2},
		{desc: "service accounts yaml", file: "sa.yaml", service: true, content: "service_accounts:\n  - client_id: sync\n    secret_hash: '" + good + "'\n    roles: [sync]\n", wantN: 1},
		{desc: "empty file", file: "users.yaml", content: "", wantN: 0},
		{desc: "weak bcrypt cost", file: "users.yaml", content: "users:\n  - username: alice\n    password_hash: '" + string(weak) + "'\n", wantErr: "users[0].password_hash: bcrypt cost 4"},
		{desc: "plain text password", file: "users.yaml", content: "users:\n  - username: alice\n    password_hash: hunter2\n", wantErr: "users[0].password_hash: not a bcrypt hash"},
		{desc: "duplicate user", file: "users.yaml", content: "users:\n  - {username: a, password_hash: '" + good + "'}\n  - {username: a, password_hash: '" + good + "'}\n", wantErr: "users[1].username: duplicate"},
		{desc: "role with comma", file: "users.yaml", content: "users:\n  - {username: a, password_hash: '" + good + "', roles: ['a,b']}\n", wantErr: "users[0].roles[0]"},
		{desc: "name with space", file: "users.yaml", content: "users:\n  - {username: 'a b', password_hash: '" + good + "'}\n", wantErr: "users[0].username"},
		{desc: "unknown field yaml", file: "users.yaml", content: "users:\n  - {username: a, password: x, password_hash: '" + good + "'}\n", wantErr: "password"},
		{desc: "unknown field json", file: "users.json", content: `{"users":[{"username":"a","password":"x"}]}`, wantErr: "unknown field"},
		{desc: "empty client id", file: "sa.yaml", service: true, content: "service_accounts:\n  - {client_id: '', secret_hash: '" + good + "'}\n", wantErr: "service_accounts[0].client_id"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), tt.file)
			must(t, os.WriteFile(p, []byte(tt.content), 0o600))
			var c *Credentials
			var err error
			if tt.service {
				c, err = LoadServiceAccounts(p)
			} else {
				c, err = LoadUsers(p)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v; want %q", err, tt.wantErr)
				}
				return
			}
			must(t, err)
			if c.Len() != tt.wantN {
				t.Fatalf("%d principals; want %d", c.Len(), tt.wantN)
			}
		})
	}
}
