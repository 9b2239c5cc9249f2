package sidecar_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/jwtauth/jwtattack"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/otlptest"
)

// tokenTap is a reverse proxy in front of the issuer's token endpoint that
// keeps the access tokens it hands out: the service token the client
// sidecar fetches with its client secret is a secret the test must know.
func tokenTap(t *testing.T, iss *issuer) (tokenURL string, tokens func() []string) {
	t.Helper()
	u, err := url.Parse(iss.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		var tr struct {
			AccessToken string `json:"access_token"`
		}
		if json.Unmarshal(b, &tr) == nil && tr.AccessToken != "" {
			mu.Lock()
			got = append(got, tr.AccessToken)
			mu.Unlock()
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return srv.URL + "/auth/token", func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// TestSecuritySidecarSecretsNotInSpans runs two real sidecars (echo, and a
// client that calls echo through its outbound with a service token it
// fetches with a client secret) at debug log level, each exporting every
// span (sampling ratio 1) over OTLP/HTTP to a test receiver. Through the
// echo sidecar's inbound it sends a valid bearer token, forged and
// otherwise invalid tokens, a token in the query string and Basic
// credentials, and through the client's outbound a call with the caller's
// token and one with the fetched service token. Once the spans of those
// requests arrived (at least one per request, so a broken export fails the
// test), no exported byte, raw protobuf or decoded protojson (span names,
// attributes, events, status messages, resource), no log line of either
// sidecar and no response body holds a token, a token's payload or
// signature part, the client secret, the Basic credentials, or "Bearer ".
func TestSecuritySidecarSecretsNotInSpans(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	iss := newIssuerIn(t, keys)
	key, kid, err := jwtattack.ActiveKey(keys)
	if err != nil {
		t.Fatal(err)
	}
	cases, err := jwtattack.Cases(jwtattack.Config{Key: key, KID: kid, Issuer: testIssuer, Audience: "petmesh", Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{}
	for _, c := range cases {
		switch c.Name {
		case "signature of another token", "wrong iss", "expired", "signature truncated":
			bad[c.Name] = c.Token
		}
	}
	if len(bad) != 4 {
		t.Fatalf("jwtattack cases renamed: found %v", bad)
	}

	sink := otlptest.NewReceiver(t)
	cp := startControlPlane(t, iss)
	echoApp, _ := countingApp(t)
	clientApp := newApp(t, true)
	env := sink.Env()
	echo := startSidecar(t, sidecarOpts{
		service: "echo", instance: "echo-secrets", app: echoApp, cp: cp,
		args: []string{"-log-level", "debug", "-access-log-flush-interval", "10ms"}, env: env,
	})
	tapURL, served := tokenTap(t, iss)
	client := startSidecar(t, sidecarOpts{
		service: "client", instance: "client-secrets", app: clientApp, cp: cp,
		args: []string{"-log-level", "debug", "-access-log-flush-interval", "10ms", "-token-url", tapURL, "-client-id", "client"},
		env:  append([]string{"SIDECAR_CLIENT_SECRET=" + clientSecret}, env...),
	})
	waitReady(t, echo)
	waitReady(t, client)
	waitHealth(t, cp, "echo-secrets", registry.HealthPassing)

	tok := iss.token(t, "alice", "viewer")
	const basic = "YWxpY2U6YWxpY2UtcHc=" // alice:alice-pw
	const garbage = "not-a-jwt-but-a-secret-0123456789"
	in := echo.URL("inbound")
	type req struct {
		desc, base, path string
		hdr              map[string]string
		want             int
	}
	bearer := func(s string) map[string]string { return map[string]string{"Authorization": "Bearer " + s} }
	reqs := []req{
		{"valid token", in, "/echo/secrets-valid", bearer(tok), 200},
		{"forged payload", in, "/echo/secrets-forged", bearer(bad["signature of another token"]), 401},
		{"truncated signature", in, "/echo/secrets-truncated", bearer(bad["signature truncated"]), 401},
		{"wrong issuer", in, "/echo/secrets-wrongiss", bearer(bad["wrong iss"]), 401},
		{"expired", in, "/echo/secrets-expired", bearer(bad["expired"]), 401},
		{"not a JWT", in, "/echo/secrets-garbage", bearer(garbage), 401},
		{"token in the query", in, "/echo/secrets-query?access_token=" + tok, nil, 401},
		{"token in the query and header", in, "/echo/secrets-query2?token=" + tok + "&x=1", bearer(tok), 200},
		{"Basic credentials", in, "/echo/secrets-basic", map[string]string{"Authorization": "Basic " + basic}, 401},
	}
	out := client.URL("outbound")
	egress := []req{
		{"egress with the service token", out, "/echo/secrets-egress", map[string]string{"Host": "echo"}, 200},
		{"egress with the caller's token", out, "/echo/secrets-egress-user", map[string]string{"Host": "echo", "Authorization": "Bearer " + tok}, 200},
	}

	var bodies [][]byte
	for _, r := range reqs {
		code, body := call(t, "GET", r.base+r.path, r.hdr)
		if code != r.want {
			t.Fatalf("%s: status %d, want %d: %s", r.desc, code, r.want, body)
		}
		bodies = append(bodies, body)
	}
	for _, r := range egress {
		// The client's routes arrive over xDS: retry until routed.
		tu.Eventually(t, 15*time.Second, func() error {
			code, body := call(t, "GET", r.base+r.path, r.hdr)
			bodies = append(bodies, body) // error bodies of the retries too
			if code != r.want {
				return fmt.Errorf("%s: status %d, want %d: %s", r.desc, code, r.want, body)
			}
			return nil
		})
	}
	serviceTokens := served()
	if len(serviceTokens) == 0 {
		t.Fatal("the client sidecar fetched no service token through the tap")
	}

	secrets := map[string]string{"client secret": clientSecret, "Basic credentials": basic, "garbage token": garbage}
	addToken := func(name, s string) {
		p := strings.Split(s, ".")
		secrets[name] = s
		if len(p) == 3 {
			secrets[name+" payload"] = p[1]
			if len(p[2]) >= 16 {
				secrets[name+" signature"] = p[2]
			}
		}
	}
	addToken("valid token", tok)
	for n, s := range bad {
		addToken(n, s)
	}
	for i, s := range serviceTokens {
		addToken(fmt.Sprintf("service token %d", i), s)
	}
	// "signature of another token" keeps the valid token's signature and
	// header: the header part is no secret (it is the same in every token).
	leaks := []string{"Bearer ", "Basic " + basic, "access_token=ey"}

	// Wait for the spans of every request: each path must appear in the
	// export, from the echo sidecar's server span at least.
	all := append(append([]req(nil), reqs...), egress...)
	var raw []byte
	var text string
	var spans int
	var names map[string]int
	tu.Eventually(t, 20*time.Second, func() error {
		raw, text, spans, names = sink.Snapshot()
		for _, r := range all {
			p := strings.SplitN(r.path, "?", 2)[0]
			if !strings.Contains(text, p) {
				return fmt.Errorf("no exported span for %s yet (%d spans)", p, spans)
			}
		}
		// One server span on echo per request, plus the client sidecar's
		// server and client spans for each egress call.
		if want := len(reqs) + 3*len(egress); spans < want {
			return fmt.Errorf("%d spans exported, want at least %d", spans, want)
		}
		return nil
	})
	t.Logf("%d spans exported in %d bytes; names: %v", spans, len(raw), names)

	// Every request's access line is written (they are flushed every 10ms).
	var logs map[string]string
	tu.Eventually(t, 5*time.Second, func() error {
		logs = map[string]string{"echo": echo.Output(), "client": client.Output()}
		if n := strings.Count(logs["echo"], `"msg":"access"`); n < len(all) {
			return fmt.Errorf("%d access lines in the echo sidecar's log, want at least %d", n, len(all))
		}
		if !strings.Contains(logs["client"], `"msg":"access"`) {
			return errors.New("no access line in the client sidecar's log")
		}
		return nil
	})
	if !strings.Contains(logs["echo"], "/echo/secrets-forged") {
		t.Errorf("the echo sidecar's log lacks the refused request (access log off?)")
	}
	for _, name := range slices.Sorted(maps.Keys(secrets)) {
		s := secrets[name]
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("an exported span (raw OTLP) holds the %s (%.12s…)", name, s)
		}
		if strings.Contains(text, s) {
			t.Errorf("an exported span (decoded) holds the %s (%.12s…)", name, s)
		}
		for who, l := range logs {
			if strings.Contains(l, s) {
				t.Errorf("the %s sidecar's log holds the %s (%.12s…)", who, name, s)
			}
		}
		for i, b := range bodies {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("response body %d holds the %s: %s", i, name, b)
			}
		}
	}
	for _, l := range leaks {
		if bytes.Contains(raw, []byte(l)) || strings.Contains(text, l) {
			t.Errorf("an exported span holds %q", l)
		}
		for who, lg := range logs {
			if strings.Contains(lg, l) {
				t.Errorf("the %s sidecar's log holds %q", who, l)
			}
		}
		for i, b := range bodies {
			if bytes.Contains(b, []byte(l)) {
				t.Errorf("response body %d holds %q: %s", i, l, b)
			}
		}
	}
	if t.Failed() {
		for _, line := range strings.Split(text, "\n") {
			for _, s := range secrets {
				if i := strings.Index(line, s); i >= 0 {
					lo, hi := max(0, i-300), min(len(line), i+len(s)+50)
					t.Logf("leaking span export around the secret: …%s…", line[lo:hi])
					break
				}
			}
		}
	}
}
