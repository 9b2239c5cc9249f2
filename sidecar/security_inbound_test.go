package sidecar_test

import (
	"net"
	"net/http"
	"testing"

	"github.com/petmesh/petmesh/controlplane/registry"
)

// nonLoopbackIP returns an IPv4 address of this machine that is not a
// loopback address: connecting to it from this machine makes the peer's
// address non-loopback too.
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("this machine has no non-loopback IPv4 address to connect from")
	return ""
}

// TestSecurityInboundHealthBypassOnlyFromLoopback: the sidecar's inbound
// listener, bound to every interface, lets the app's health check through
// without a token only for GET/HEAD from a loopback peer. The same request
// from another address, or claiming loopback in X-Forwarded-For or
// Forwarded, needs a valid token.
func TestSecurityInboundHealthBypassOnlyFromLoopback(t *testing.T) {
	ip := nonLoopbackIP(t)
	iss := newIssuer(t)
	cp := startControlPlane(t, iss)
	a, hits := countingApp(t)
	sc := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-health", app: a, cp: cp, args: []string{"-inbound-addr", "0.0.0.0:0"}})
	waitReady(t, sc)
	waitHealth(t, cp, "echo-health", registry.HealthPassing)
	_, port, err := net.SplitHostPort(sc.Addr("inbound"))
	if err != nil {
		t.Fatal(err)
	}
	loop := "http://127.0.0.1:" + port
	remote := "http://" + net.JoinHostPort(ip, port)
	valid := iss.token(t, "alice", "viewer")

	tests := []struct {
		desc, base, method, path string
		hdr                      map[string]string
		want                     int
	}{
		{"loopback GET health, no token", loop, "GET", "/health", nil, 200},
		{"loopback HEAD health, no token", loop, "HEAD", "/health", nil, 200},
		{"loopback POST health, no token", loop, "POST", "/health", nil, 401},
		{"loopback other path, no token", loop, "GET", "/echo/x", nil, 401},
		{"loopback health with a path suffix, no token", loop, "GET", "/health/../echo/x", nil, 401},
		{"remote GET health, no token", remote, "GET", "/health", nil, 401},
		{"remote GET health claiming loopback in X-Forwarded-For", remote, "GET", "/health", map[string]string{"X-Forwarded-For": "127.0.0.1"}, 401},
		{"remote GET health claiming loopback in Forwarded", remote, "GET", "/health", map[string]string{"Forwarded": "for=127.0.0.1"}, 401},
		{"remote GET health claiming loopback in X-Real-IP", remote, "GET", "/health", map[string]string{"X-Real-Ip": "127.0.0.1"}, 401},
		{"remote GET health with a valid token", remote, "GET", "/health", map[string]string{"Authorization": "Bearer " + valid}, 200},
		{"remote other path with a valid token", remote, "GET", "/echo/x", map[string]string{"Authorization": "Bearer " + valid}, 200},
		{"remote other path, spoofed identity, no token", remote, "GET", "/echo/x", map[string]string{"X-Petmesh-Subject": "root", "X-Petmesh-Roles": "admin"}, 401},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			before := hits.Load()
			code, body := call(t, tc.method, tc.base+tc.path, tc.hdr)
			if code != tc.want {
				t.Fatalf("status %d, want %d: %s", code, tc.want, body)
			}
			if code == http.StatusUnauthorized && hits.Load() != before {
				t.Fatal("a refused request reached the app")
			}
		})
	}
	t.Logf("non-loopback peer address: %s", ip)
}
