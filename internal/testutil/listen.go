package testutil

import (
	"net"
	"testing"
)

// WantLoopback fails the test (without stopping it) for every listen
// address in addrs, keyed by the flag that sets it, whose host is not a
// loopback IP. A service that trusts the identity headers its sidecar sets
// must by default be reachable by that sidecar only.
func WantLoopback(t testing.TB, addrs map[string]string) {
	t.Helper()
	for flag, addr := range addrs {
		host, _, err := net.SplitHostPort(addr)
		if err != nil || !net.ParseIP(host).IsLoopback() {
			t.Errorf("%s defaults to %q, want a loopback address", flag, addr)
		}
	}
}
