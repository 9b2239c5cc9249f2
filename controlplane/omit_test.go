package controlplane_test

import (
	"errors"
	"testing"
	"time"

	tu "github.com/petmesh/petmesh/internal/testutil"
)

// TestControlPlaneOmitResilienceFields runs the real control plane with
// and without -omit-resilience-fields and reads the pets cluster an edge
// receives: healthy_panic_threshold is sent by default and left out with
// the flag.
func TestControlPlaneOmitResilienceFields(t *testing.T) {
	a := newAuth(t)
	for _, tc := range []struct {
		desc      string
		args      []string
		wantPanic bool
	}{
		{desc: "default", wantPanic: true},
		{desc: "omitted", args: []string{"-omit-resilience-fields"}, wantPanic: false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			cp := startCP(t, "127.0.0.1:0", append(append(a.args(), "-store", "file", "-store-dir", t.TempDir()), tc.args...)...)
			e := startClient(t, cp.Addr("xds"), edge("e1"))
			tu.Eventually(t, 10*time.Second, func() error {
				if _, ok := e.c.Current().Clusters["pets"]; !ok {
					return errors.New("no pets cluster at the edge yet")
				}
				return nil
			})
			cl := e.c.Current().Clusters["pets"]
			if got := cl.GetCommonLbConfig().GetHealthyPanicThreshold() != nil; got != tc.wantPanic {
				t.Fatalf("pets cluster has healthy_panic_threshold: %v, want %v (common_lb_config %v)", got, tc.wantPanic, cl.GetCommonLbConfig())
			}
		})
	}
}
