package syncsvc

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
	// The one setting without a default: Petfinder's client secret.
	getenv := func(k string) string {
		if k == "SYNC_PETFINDER_CLIENT_SECRET" {
			return "secret"
		}
		return ""
	}
	c, err := parseConfig(nil, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WantLoopback(t, map[string]string{"-addr": c.Addr, "-admin-addr": c.AdminAddr})
	if c.Addr != "127.0.0.1:7002" {
		t.Errorf("-addr defaults to %q, want 127.0.0.1:7002 (the documented port)", c.Addr)
	}
}
