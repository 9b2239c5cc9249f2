package pets

import (
	"io"
	"testing"

	"github.com/petmesh/petmesh/internal/testutil"
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
	testutil.WantLoopback(t, map[string]string{"-addr": c.Addr, "-admin-addr": c.AdminAddr})
	if c.Addr != "127.0.0.1:7001" {
		t.Errorf("-addr defaults to %q, want 127.0.0.1:7001 (the documented port)", c.Addr)
	}
}
