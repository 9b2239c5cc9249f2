package edge

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	tu "github.com/petmesh/petmesh/internal/testutil"
)

// spoofed are the headers a client sends to claim an identity, an address,
// a scheme or a host it does not have.
var spoofed = map[string]string{
	"X-Petmesh-Subject": "root", "X-Petmesh-Roles": "admin", "X-Petmesh-Anything": "x",
	"Forwarded": "for=6.6.6.6;proto=https;host=evil.example", "X-Forwarded-For": "6.6.6.6",
	"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Port": "1",
	"X-Forwarded-Prefix": "/evil", "X-Real-Ip": "6.6.6.6",
}

// upstreamCORS is served by every upstream: the edge must never let it
// through on its own.
var upstreamCORS = http.Header{"Access-Control-Allow-Origin": {"*"}, "Access-Control-Allow-Credentials": {"true"}}

// checkUpstreamHeaders compares what the upstream received.
func checkUpstreamHeaders(t *testing.T, got http.Header, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if g := strings.Join(got.Values(k), ","); g != v {
			t.Errorf("upstream got %s: %q, want %q", k, g, v)
		}
	}
}

// waitAccessLine waits for an access-log line of the edge holding every part.
func waitAccessLine(t *testing.T, m *secMesh, parts ...string) {
	t.Helper()
	tu.Eventually(t, 5*time.Second, func() error {
		if !logHas(m.edge.Output(), append([]string{`"msg":"access"`}, parts...)...) {
			return errors.New("no access-log line with " + strings.Join(parts, " "))
		}
		return nil
	})
}

// TestSecurityEdgeTrustDefaults: a real edge with the defaults (no trusted
// proxies, CORS closed).
func TestSecurityEdgeTrustDefaults(t *testing.T) {
	m := startSecMesh(t, secOpts{respHeader: upstreamCORS})
	tok := m.login("alice", "alice-pw")

	t.Run("client identity and forwarding headers are stripped or overwritten", func(t *testing.T) {
		code, b, err := m.do("GET", "/pets/trust-default", tok, spoofed, nil)
		if err != nil || code != 200 {
			t.Fatalf("%d %s %v", code, b, err)
		}
		checkUpstreamHeaders(t, m.pets.header(), map[string]string{
			"X-Petmesh-Subject": "alice", "X-Petmesh-Roles": "viewer", "X-Petmesh-Anything": "",
			"Forwarded": "", "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Host": m.addr, "X-Forwarded-Proto": "http",
			"X-Forwarded-Port": "", "X-Forwarded-Prefix": "", "X-Real-Ip": "",
		})
		waitAccessLine(t, m, `"path":"/pets/trust-default"`, `"client_ip":"127.0.0.1"`, `"subject":"alice"`)
	})
	t.Run("public route: no identity reaches the upstream", func(t *testing.T) {
		code, b, err := m.do("GET", "/public/trust", "", spoofed, nil)
		if err != nil || code != 200 {
			t.Fatalf("%d %s %v", code, b, err)
		}
		got := m.pets.header()
		for k := range got {
			if strings.HasPrefix(k, "X-Petmesh-") {
				t.Errorf("upstream got %s: %q", k, got.Get(k))
			}
		}
		checkUpstreamHeaders(t, got, map[string]string{"X-Forwarded-For": "127.0.0.1", "Forwarded": "", "X-Real-Ip": ""})
	})
	t.Run("spoofed admin headers do not pass an admin route", func(t *testing.T) {
		hits := m.pets.hits.Load()
		code, b, err := m.do("GET", "/pets/admin/x", tok, spoofed, nil)
		if err != nil || code != http.StatusForbidden {
			t.Fatalf("%d %s %v, want 403", code, b, err)
		}
		if m.pets.hits.Load() != hits {
			t.Fatal("the admin route's upstream was reached")
		}
	})

	t.Run("CORS closed: preflight refused", func(t *testing.T) {
		hits := m.pets.hits.Load()
		resp, err := m.doResp("OPTIONS", "/pets/x", "", map[string]string{"Origin": "https://app.test", "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("preflight: %d ACAO %q %s, want 403 without CORS headers", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), body)
		}
		if f := jsonErrorField(t, body); f != "Origin" {
			t.Fatalf("error field %q, want Origin", f)
		}
		if m.pets.hits.Load() != hits {
			t.Fatal("the preflight reached the upstream")
		}
	})
	t.Run("CORS closed: the upstream's CORS headers are removed", func(t *testing.T) {
		resp, err := m.doResp("GET", "/pets/x", tok, map[string]string{"Origin": "https://app.test"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		for k := range resp.Header {
			if strings.HasPrefix(k, "Access-Control-") {
				t.Errorf("response has %s: %q", k, resp.Header.Get(k))
			}
		}
		// Without an Origin (not a browser's CORS request) the response is
		// the upstream's, untouched.
		resp, err = m.doResp("GET", "/pets/x", tok, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Fatalf("a non-CORS response was changed: %v", resp.Header)
		}
	})
}

// TestSecurityEdgeTrustedProxyAndCORS: a real edge behind a trusted proxy
// (loopback) with one allowed CORS origin.
func TestSecurityEdgeTrustedProxyAndCORS(t *testing.T) {
	m := startSecMesh(t, secOpts{respHeader: upstreamCORS, edgeArgs: []string{
		"-trusted-proxies", "127.0.0.0/8,10.0.0.0/8", "-cors-allowed-origins", "https://app.test", "-cors-max-age", "1m",
	}})
	tok := m.login("alice", "alice-pw")

	t.Run("client address from X-Forwarded-For: the rightmost untrusted hop", func(t *testing.T) {
		hdr := map[string]string{}
		for k, v := range spoofed {
			hdr[k] = v
		}
		hdr["X-Forwarded-For"] = "1.1.1.1, 6.6.6.6, 10.1.2.3"
		code, b, err := m.do("GET", "/pets/trust-proxy", tok, hdr, nil)
		if err != nil || code != 200 {
			t.Fatalf("%d %s %v", code, b, err)
		}
		checkUpstreamHeaders(t, m.pets.header(), map[string]string{
			"X-Petmesh-Subject": "alice", "X-Petmesh-Roles": "viewer", "X-Petmesh-Anything": "",
			// The data plane sets X-Forwarded-Proto/-Host from the edge's
			// own hop, even behind a trusted proxy.
			"Forwarded": "", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "http", "X-Forwarded-Host": m.addr, "X-Real-Ip": "",
		})
		waitAccessLine(t, m, `"path":"/pets/trust-proxy"`, `"client_ip":"6.6.6.6"`)
	})

	preflight := func(t *testing.T, origin, method, headers string) (*http.Response, []byte) {
		t.Helper()
		resp, err := m.doResp("OPTIONS", "/pets/x", "", map[string]string{"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, body
	}
	t.Run("CORS: allowed origin's preflight", func(t *testing.T) {
		resp, body := preflight(t, "https://app.test", "POST", "authorization, content-type")
		h := resp.Header
		if resp.StatusCode != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != "https://app.test" ||
			!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") || !strings.Contains(h.Get("Access-Control-Allow-Headers"), "Authorization") ||
			h.Get("Access-Control-Max-Age") != "60" || h.Get("Access-Control-Allow-Credentials") != "" {
			t.Fatalf("preflight: %d %v %s", resp.StatusCode, h, body)
		}
	})
	t.Run("CORS: refused preflights", func(t *testing.T) {
		tests := []struct{ origin, method, headers, field string }{
			{"https://evil.test", "GET", "", "Origin"},
			{"https://app.test.evil.test", "GET", "", "Origin"},
			{"http://app.test", "GET", "", "Origin"},
			{"https://app.test", "TRACE", "", "Access-Control-Request-Method"},
			{"https://app.test", "GET", "authorization, x-petmesh-subject", "Access-Control-Request-Headers"},
		}
		for _, tc := range tests {
			resp, body := preflight(t, tc.origin, tc.method, tc.headers)
			if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("%+v: %d ACAO %q, want 403 without it", tc, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
				continue
			}
			if f := jsonErrorField(t, body); f != tc.field {
				t.Errorf("%+v: error field %q", tc, f)
			}
		}
	})
	t.Run("CORS: actual requests", func(t *testing.T) {
		for _, tc := range []struct{ origin, acao string }{{"https://app.test", "https://app.test"}, {"https://evil.test", ""}} {
			resp, err := m.doResp("GET", "/pets/x", tok, map[string]string{"Origin": tc.origin}, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			h := resp.Header
			if resp.StatusCode != 200 || h.Get("Access-Control-Allow-Origin") != tc.acao || h.Get("Access-Control-Allow-Credentials") != "" ||
				!strings.Contains(strings.Join(h.Values("Vary"), ","), "Origin") {
				t.Errorf("origin %s: %d %v, want ACAO %q, no credentials, Vary: Origin", tc.origin, resp.StatusCode, h, tc.acao)
			}
			if tc.acao != "" && !strings.Contains(h.Get("Access-Control-Expose-Headers"), "X-Request-Id") {
				t.Errorf("origin %s: Expose-Headers %q", tc.origin, h.Get("Access-Control-Expose-Headers"))
			}
		}
	})
	if v := m.metric(`petmesh_edge_refused_requests_total{reason="cors"}`); v < 5 {
		t.Fatalf("refused preflights counted %v, want 5", v)
	}
}

func jsonErrorField(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error struct{ Code, Message, Field string }
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
		t.Fatalf("not the JSON error shape: %s", body)
	}
	return e.Error.Field
}
