package meshauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/testutil"
)

const (
	testIssuer   = "petmesh-edge"
	testAudience = "petmesh"
)

type fixture struct {
	keys   *jwtauth.KeyStore
	issuer *jwtauth.Issuer
	// other signs with a different key store under the same issuer name.
	other *jwtauth.Issuer
	// wrongAud, wrongIss, expired: variants of the real issuer.
	wrongAud, wrongIss, expired *jwtauth.Issuer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ks2, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(iss, aud string, keys *jwtauth.KeyStore, now func() time.Time) *jwtauth.Issuer {
		is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: iss, Audience: []string{aud}, Keys: keys, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	past := func() time.Time { return time.Now().Add(-2 * time.Hour) }
	return &fixture{
		keys:     ks,
		issuer:   mk(testIssuer, testAudience, ks, nil),
		other:    mk(testIssuer, testAudience, ks2, nil),
		wrongAud: mk(testIssuer, "elsewhere", ks, nil),
		wrongIss: mk("someone-else", testAudience, ks, nil),
		expired:  mk(testIssuer, testAudience, ks, past),
	}
}

func token(t *testing.T, is *jwtauth.Issuer, sub string, roles ...string) string {
	t.Helper()
	tok, err := is.Issue(sub, roles)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Raw
}

func testProvider(jwks *jwtv3.JwtProvider_RemoteJwks) *jwtv3.JwtProvider {
	p := &jwtv3.JwtProvider{
		Issuer:           testIssuer,
		Audiences:        []string{testAudience},
		Forward:          true,
		ClockSkewSeconds: 30,
		ClaimToHeaders: []*jwtv3.JwtClaimToHeader{
			{ClaimName: "sub", HeaderName: "x-petmesh-subject"},
			{ClaimName: "roles", HeaderName: "x-petmesh-roles"},
		},
		PayloadInMetadata: "jwt_payload",
	}
	if jwks != nil {
		p.JwksSourceSpecifier = jwks
	} else {
		p.JwksSourceSpecifier = remote("http://127.0.0.1:1/.well-known/jwks.json")
	}
	return p
}

func remote(uri string) *jwtv3.JwtProvider_RemoteJwks {
	return &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
		HttpUri:       &corev3.HttpUri{Uri: uri, HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: "jwks_petmesh"}, Timeout: durationpb.New(5 * time.Second)},
		CacheDuration: durationpb.New(5 * time.Minute),
		AsyncFetch:    &jwtv3.JwksAsyncFetch{},
	}}
}

func reqProvider(name string) *jwtv3.JwtRequirement {
	return &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}}
}

func reqAny(rs ...*jwtv3.JwtRequirement) *jwtv3.JwtRequirement {
	return &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: rs}}}
}

func reqAll(rs ...*jwtv3.JwtRequirement) *jwtv3.JwtRequirement {
	return &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAll{RequiresAll: &jwtv3.JwtRequirementAndList{Requirements: rs}}}
}

var (
	allowMissing         = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}}
	allowMissingOrFailed = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissingOrFailed{AllowMissingOrFailed: &emptypb.Empty{}}}
)

func config(p *jwtv3.JwtProvider) *jwtv3.JwtAuthentication {
	return &jwtv3.JwtAuthentication{
		Providers: map[string]*jwtv3.JwtProvider{"petmesh": p},
		RequirementMap: map[string]*jwtv3.JwtRequirement{
			"petmesh-required": reqProvider("petmesh"),
			"petmesh-optional": reqAny(reqProvider("petmesh"), allowMissing),
		},
	}
}

func TestAuthenticate(t *testing.T) {
	fx := newFixture(t)
	f, err := New(Options{Local: map[string]jwtauth.KeySource{testIssuer: fx.keys}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Auth(config(testProvider(nil)))
	if err != nil {
		t.Fatal(err)
	}
	good := token(t, fx.issuer, "alice", "viewer", "admin")
	sig := strings.Split(good, ".")
	stripped := sig[0] + "." + sig[1] + "."
	audience := func(aud ...string) *jwtv3.JwtRequirement {
		return &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderAndAudiences{
			ProviderAndAudiences: &jwtv3.ProviderWithAudiences{ProviderName: "petmesh", Audiences: aud}}}
	}

	tests := []struct {
		desc    string
		req     *jwtv3.JwtRequirement
		headers []string // Authorization values
		query   string
		status  int // 0: success
		subject string
	}{
		{desc: "valid token", req: reqProvider("petmesh"), headers: []string{"Bearer " + good}, subject: "alice"},
		{desc: "scheme case-insensitive", req: reqProvider("petmesh"), headers: []string{"bearer " + good}, subject: "alice"},
		{desc: "missing token", req: reqProvider("petmesh"), status: 401},
		{desc: "basic scheme", req: reqProvider("petmesh"), headers: []string{"Basic YWxpY2U6cHc="}, status: 401},
		{desc: "two headers", req: reqProvider("petmesh"), headers: []string{"Bearer " + good, "Bearer " + good}, status: 401},
		{desc: "query token refused", req: reqProvider("petmesh"), query: "access_token=" + good, status: 401},
		{desc: "signature stripped", req: reqProvider("petmesh"), headers: []string{"Bearer " + stripped}, status: 401},
		{desc: "other key", req: reqProvider("petmesh"), headers: []string{"Bearer " + token(t, fx.other, "mallory")}, status: 401},
		{desc: "wrong audience", req: reqProvider("petmesh"), headers: []string{"Bearer " + token(t, fx.wrongAud, "alice")}, status: 401},
		{desc: "wrong issuer", req: reqProvider("petmesh"), headers: []string{"Bearer " + token(t, fx.wrongIss, "alice")}, status: 401},
		{desc: "expired", req: reqProvider("petmesh"), headers: []string{"Bearer " + token(t, fx.expired, "alice")}, status: 401},
		{desc: "garbage", req: reqProvider("petmesh"), headers: []string{"Bearer a.b.c"}, status: 401},
		{desc: "oversized", req: reqProvider("petmesh"), headers: []string{"Bearer " + strings.Repeat("a", 9000)}, status: 431},
		{desc: "optional: missing passes anonymous", req: reqAny(reqProvider("petmesh"), allowMissing)},
		{desc: "optional: valid", req: reqAny(reqProvider("petmesh"), allowMissing), headers: []string{"Bearer " + good}, subject: "alice"},
		{desc: "optional: invalid still fails", req: reqAny(reqProvider("petmesh"), allowMissing), headers: []string{"Bearer " + stripped}, status: 401},
		{desc: "allow_missing alone: missing", req: allowMissing},
		{desc: "allow_missing alone: bad token fails", req: allowMissing, headers: []string{"Bearer " + stripped}, status: 401},
		{desc: "allow_missing alone: valid", req: allowMissing, headers: []string{"Bearer " + good}, subject: "alice"},
		{desc: "allow_missing_or_failed: bad token passes anonymous", req: allowMissingOrFailed, headers: []string{"Bearer " + stripped}},
		{desc: "allow_missing_or_failed: valid", req: allowMissingOrFailed, headers: []string{"Bearer " + good}, subject: "alice"},
		{desc: "requires_all", req: reqAll(reqProvider("petmesh"), audience(testAudience)), headers: []string{"Bearer " + good}, subject: "alice"},
		{desc: "provider_and_audiences match", req: audience("x", testAudience), headers: []string{"Bearer " + good}, subject: "alice"},
		{desc: "provider_and_audiences mismatch", req: audience("other"), headers: []string{"Bearer " + good}, status: 401},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/pets?"+tc.query, nil)
			for _, h := range tc.headers {
				r.Header.Add("Authorization", h)
			}
			id, err := a.Authenticate(r, &dataplane.AuthRequirement{Name: "x", Requirement: tc.req})
			if tc.status != 0 {
				var he *httpx.Error
				if !errors.As(err, &he) {
					t.Fatalf("err = %v, want *httpx.Error %d", err, tc.status)
				}
				if he.Status != tc.status || he.Field != "Authorization" {
					t.Fatalf("status %d field %q, want %d Authorization", he.Status, he.Field, tc.status)
				}
				if strings.Contains(he.Message, good) || (len(tc.headers) > 0 && len(tc.headers[0]) > 20 && strings.Contains(he.Message, tc.headers[0][7:])) {
					t.Fatal("error message echoes the token")
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if id.Subject != tc.subject {
				t.Fatalf("subject %q, want %q", id.Subject, tc.subject)
			}
			if tc.subject == "alice" && !id.Has("admin") {
				t.Fatalf("roles %v lack admin", id.Roles)
			}
		})
	}
}

func TestForwardFalseRemovesToken(t *testing.T) {
	fx := newFixture(t)
	f, err := New(Options{Local: map[string]jwtauth.KeySource{testIssuer: fx.keys}})
	if err != nil {
		t.Fatal(err)
	}
	p := testProvider(nil)
	p.Forward = false
	a, err := f.Auth(config(p))
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+token(t, fx.issuer, "bob"))
	if _, err := a.Authenticate(r, &dataplane.AuthRequirement{Requirement: reqProvider("petmesh")}); err != nil {
		t.Fatal(err)
	}
	if r.Header.Get("Authorization") != "" {
		t.Fatal("Authorization kept with forward: false")
	}
}

func TestConfigRejected(t *testing.T) {
	tests := []struct {
		desc string
		mod  func(c *jwtv3.JwtAuthentication)
		want string
	}{
		{desc: "no providers", mod: func(c *jwtv3.JwtAuthentication) { c.Providers = nil; c.RequirementMap = nil }, want: "providers: at least one"},
		{desc: "unsupported field", mod: func(c *jwtv3.JwtAuthentication) { c.Providers["petmesh"].FromCookies = []string{"jwt"} }, want: `providers["petmesh"].from_cookies: unsupported field`},
		{desc: "empty from_params name", mod: func(c *jwtv3.JwtAuthentication) { c.Providers["petmesh"].FromParams = []string{"token", ""} }, want: `providers["petmesh"].from_params[1]: ""`},
		{desc: "bad from_params charset", mod: func(c *jwtv3.JwtAuthentication) { c.Providers["petmesh"].FromParams = []string{"to ken"} }, want: `providers["petmesh"].from_params[0]: "to ken"`},
		{desc: "from_params with separator", mod: func(c *jwtv3.JwtAuthentication) { c.Providers["petmesh"].FromParams = []string{"a=b&c"} }, want: `providers["petmesh"].from_params[0]`},
		{desc: "from_params twice", mod: func(c *jwtv3.JwtAuthentication) { c.Providers["petmesh"].FromParams = []string{"token", "token"} }, want: `providers["petmesh"].from_params[1]: "token": listed twice`},
		{desc: "unsupported nested field", mod: func(c *jwtv3.JwtAuthentication) {
			c.Providers["petmesh"].GetRemoteJwks().RetryPolicy = &corev3.RetryPolicy{}
		}, want: `providers["petmesh"].remote_jwks.retry_policy: unsupported field`},
		{desc: "no audience", mod: func(c *jwtv3.JwtAuthentication) { c.Providers["petmesh"].Audiences = nil }, want: "audiences: at least one"},
		{desc: "no issuer", mod: func(c *jwtv3.JwtAuthentication) { c.Providers["petmesh"].Issuer = "" }, want: "issuer: required"},
		{desc: "bad jwks uri", mod: func(c *jwtv3.JwtAuthentication) {
			c.Providers["petmesh"].GetRemoteJwks().HttpUri.Uri = "file:///etc/passwd"
		}, want: "http_uri.uri"},
		{desc: "claim to other header", mod: func(c *jwtv3.JwtAuthentication) {
			c.Providers["petmesh"].ClaimToHeaders = []*jwtv3.JwtClaimToHeader{{ClaimName: "sub", HeaderName: "x-user"}}
		}, want: "claim_to_headers[0]"},
		{desc: "other token header", mod: func(c *jwtv3.JwtAuthentication) {
			c.Providers["petmesh"].FromHeaders = []*jwtv3.JwtHeader{{Name: "x-token"}}
		}, want: "from_headers[0]"},
		{desc: "unknown provider in requirement", mod: func(c *jwtv3.JwtAuthentication) {
			c.RequirementMap["petmesh-required"] = reqProvider("nope")
		}, want: `requirement_map["petmesh-required"]: provider_name: unknown provider "nope"`},
		{desc: "bad inline jwks", mod: func(c *jwtv3.JwtAuthentication) {
			c.Providers["petmesh"].Issuer = "inline"
			c.Providers["petmesh"].JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "{"}}}
		}, want: "local_jwks"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			f, err := New(Options{})
			if err != nil {
				t.Fatal(err)
			}
			c := config(testProvider(nil))
			tc.mod(c)
			_, err = f.Auth(c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestRemoteJWKS verifies tokens of an issuer that is not local: the keys
// come from its JWKS URL, refreshed by Run, shared by every configuration
// that names the same URL.
func TestRemoteJWKS(t *testing.T) {
	fx := newFixture(t)
	var fetches atomic.Int64
	jwks := fx.keys.JWKSHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		jwks.ServeHTTP(w, r)
	}))
	defer srv.Close()

	f, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	p := testProvider(remote(srv.URL + "/.well-known/jwks.json"))
	p.GetRemoteJwks().CacheDuration = durationpb.New(time.Second)
	a1, err := f.Auth(config(p))
	if err != nil {
		t.Fatal(err)
	}
	// Run refreshes in the background: readiness, then more fetches.
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := fetches.Load(); !f.Ready() || n < 2 {
			return fmt.Errorf("ready %v after %d fetches", f.Ready(), n)
		}
		return nil
	})

	a2, err := f.Auth(config(p)) // same config: same verifier and source
	if err != nil {
		t.Fatal(err)
	}
	tok := token(t, fx.issuer, "svc", "sync")
	for i, a := range []dataplane.Authenticator{a1, a2} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		id, err := a.Authenticate(r, &dataplane.AuthRequirement{Requirement: reqProvider("petmesh")})
		if err != nil || id.Subject != "svc" {
			t.Fatalf("authenticator %d: id %+v err %v", i, id, err)
		}
	}
	if s := f.Stats(); s.SignatureChecks != 1 || s.CacheHits != 1 {
		t.Fatalf("stats %+v: want one signature check and one cache hit (shared verifier)", s)
	}
	f.mu.Lock()
	nv, ns := len(f.verifiers), len(f.sources)
	f.mu.Unlock()
	if nv != 1 || ns != 1 {
		t.Fatalf("%d verifiers, %d sources; want 1 and 1", nv, ns)
	}
}

func TestInlineJWKS(t *testing.T) {
	fx := newFixture(t)
	rec := httptest.NewRecorder()
	fx.keys.JWKSHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/.well-known/jwks.json", nil))
	p := testProvider(nil)
	p.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: rec.Body.String()}}}
	f, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Auth(config(p))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc string
		tok  string
		ok   bool
	}{
		{desc: "issuer key", tok: token(t, fx.issuer, "carol"), ok: true},
		{desc: "unknown key", tok: token(t, fx.other, "mallory")},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("Authorization", "Bearer "+tc.tok)
			_, err := a.Authenticate(r, &dataplane.AuthRequirement{Requirement: reqProvider("petmesh")})
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func BenchmarkAuthenticateCached(b *testing.B) {
	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: testIssuer, Audience: []string{testAudience}, Keys: ks})
	if err != nil {
		b.Fatal(err)
	}
	f, err := New(Options{Local: map[string]jwtauth.KeySource{testIssuer: ks}})
	if err != nil {
		b.Fatal(err)
	}
	a, err := f.Auth(config(testProvider(nil)))
	if err != nil {
		b.Fatal(err)
	}
	tok, err := is.Issue("alice", []string{"viewer"})
	if err != nil {
		b.Fatal(err)
	}
	req := &dataplane.AuthRequirement{Requirement: reqProvider("petmesh")}
	r := httptest.NewRequest(http.MethodGet, "/pets", nil)
	r.Header.Set("Authorization", "Bearer "+tok.Raw)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(r, req); err != nil {
			b.Fatal(err)
		}
	}
}

// TestQueryToken: a token in the query string is taken only from a
// parameter a provider of the requirement lists in from_params, and that
// parameter never reaches the upstream.
func TestQueryToken(t *testing.T) {
	fx := newFixture(t)
	f, err := New(Options{Local: map[string]jwtauth.KeySource{testIssuer: fx.keys}})
	if err != nil {
		t.Fatal(err)
	}
	good := token(t, fx.issuer, "alice", "viewer")
	bob := token(t, fx.issuer, "bob")
	dflt, err := f.Auth(config(testProvider(nil)))
	if err != nil {
		t.Fatal(err)
	}
	p := testProvider(nil)
	p.FromParams = []string{"jwt"}
	// "other" accepts "tok"; only requirements naming it take it.
	other := testProvider(nil)
	other.FromParams = []string{"tok"}
	// "quiet" accepts "q" and does not forward the token.
	quiet := testProvider(nil)
	quiet.FromParams = []string{"q"}
	quiet.Forward = false
	c := config(p)
	c.Providers["other"] = other
	c.Providers["quiet"] = quiet
	withParam, err := f.Auth(c)
	if err != nil {
		t.Fatal(err)
	}

	var upstreamQuery, upstreamAuth atomic.Value
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamQuery.Store(r.URL.RawQuery)
		upstreamAuth.Store(r.Header.Get("Authorization"))
		w.WriteHeader(http.StatusNoContent)
	}))
	defer upstream.Close()

	tests := []struct {
		desc      string
		a         dataplane.Authenticator
		req       *jwtv3.JwtRequirement
		header    string
		query     string
		status    int
		message   string
		subject   string
		wantQuery string
		wantAuth  string // the Authorization header the upstream gets
	}{
		{desc: "default: access_token refused", a: dflt, req: reqProvider("petmesh"), query: "access_token=" + good, status: 401,
			message: "tokens in the query string are not accepted; use the Authorization header"},
		{desc: "default: jwt param is not a token", a: dflt, req: reqProvider("petmesh"), query: "jwt=" + good, status: 401, message: "bearer token required"},
		{desc: "configured: token in param", a: withParam, req: reqProvider("petmesh"), query: "a=1&jwt=" + good + "&b=x%20y", subject: "alice", wantQuery: "a=1&b=x%20y", wantAuth: "Bearer " + good},
		{desc: "configured: only param", a: withParam, req: reqProvider("petmesh"), query: "jwt=" + good, subject: "alice", wantQuery: "", wantAuth: "Bearer " + good},
		{desc: "configured: escaped name", a: withParam, req: reqProvider("petmesh"), query: "j%77t=" + good + "&a=1", subject: "alice", wantQuery: "a=1", wantAuth: "Bearer " + good},
		{desc: "configured: optional requirement", a: withParam, req: reqAny(reqProvider("petmesh"), allowMissing), query: "jwt=" + good, subject: "alice", wantQuery: "", wantAuth: "Bearer " + good},
		{desc: "configured: allow_missing alone", a: withParam, req: allowMissing, query: "tok=" + good, subject: "alice", wantQuery: "", wantAuth: "Bearer " + good},
		{desc: "configured: header wins, param stripped", a: withParam, req: reqProvider("petmesh"), header: "Bearer " + bob, query: "jwt=" + good + "&a=1", subject: "bob", wantQuery: "a=1", wantAuth: "Bearer " + bob},
		{desc: "configured: two values", a: withParam, req: reqProvider("petmesh"), query: "jwt=" + good + "&jwt=" + good, status: 401, message: "more than one token in the query string"},
		{desc: "configured: empty value", a: withParam, req: reqProvider("petmesh"), query: "jwt=", status: 401, message: "malformed token"},
		{desc: "configured: bad token", a: withParam, req: reqProvider("petmesh"), query: "jwt=a.b.c", status: 401},
		{desc: "configured: access_token still refused", a: withParam, req: reqProvider("petmesh"), query: "access_token=" + good, status: 401,
			message: "tokens in the query string are not accepted; use the Authorization header"},
		{desc: "configured: another provider's param refused", a: withParam, req: reqProvider("petmesh"), query: "tok=" + good, status: 401,
			message: "tokens in the query string are not accepted; use the Authorization header"},
		{desc: "configured: the other provider's requirement takes it", a: withParam, req: reqProvider("other"), query: "tok=" + good, subject: "alice", wantQuery: "", wantAuth: "Bearer " + good},
		{desc: "configured: a provider without forward drops it", a: withParam, req: reqProvider("quiet"), query: "q=" + good + "&a=1", subject: "alice", wantQuery: "a=1", wantAuth: ""},
		{desc: "configured: no token", a: withParam, req: reqProvider("petmesh"), query: "a=1", status: 401, message: "bearer token required"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/pets?"+tc.query, nil)
			if tc.header != "" {
				r.Header.Set("Authorization", tc.header)
			}
			id, err := tc.a.Authenticate(r, &dataplane.AuthRequirement{Name: "x", Requirement: tc.req})
			if tc.status != 0 {
				var he *httpx.Error
				if !errors.As(err, &he) || he.Status != tc.status {
					t.Fatalf("err = %v, want status %d", err, tc.status)
				}
				if tc.message != "" && he.Message != tc.message {
					t.Fatalf("message %q, want %q", he.Message, tc.message)
				}
				if strings.Contains(he.Message, good) {
					t.Fatal("error message echoes the token")
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if id.Subject != tc.subject {
				t.Fatalf("subject %q, want %q", id.Subject, tc.subject)
			}
			if strings.Contains(r.RequestURI, good) || strings.Contains(r.URL.String(), good) {
				t.Fatalf("token left in the request: %s", r.RequestURI)
			}
			// What the upstream sees: the request forwarded as is.
			out := r.Clone(context.Background())
			out.RequestURI = ""
			out.URL.Scheme, out.URL.Host, out.Host = "http", upstream.Listener.Addr().String(), ""
			resp, err := http.DefaultTransport.RoundTrip(out)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got, _ := upstreamQuery.Load().(string); got != tc.wantQuery {
				t.Fatalf("upstream query %q, want %q", got, tc.wantQuery)
			}
			if got, _ := upstreamAuth.Load().(string); got != tc.wantAuth {
				t.Fatalf("upstream Authorization %.20q…, want %.20q… (forwarded in the header, not the URL)", got, tc.wantAuth)
			}
		})
	}
}
