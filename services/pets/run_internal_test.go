package pets

import (
	"io"
	"net"
	"testing"
)

// TestListenDefaults: with no flag and no variable set, both listeners
// bind to loopback. The API trusts the identity headers its sidecar sets,
// so only the sidecar beside it may reach it; deployments that need a
// wider address set it explicitly.
func TestListenDefaults(t *testing.T) {
	c, err := parseConfig(nil, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for flag, addr := range map[string]string{"-addr": c.Addr, "-admin-addr": c.AdminAddr} {
		host, _, err := net.SplitHostPort(addr)
		if err != nil || !net.ParseIP(host).IsLoopback() {
			t.Errorf("%s defaults to %q, want a loopback address", flag, addr)
		}
	}
	if c.Addr != "127.0.0.1:7001" {
		t.Errorf("-addr defaults to %q, want 127.0.0.1:7001 (the documented port)", c.Addr)
	}
}
