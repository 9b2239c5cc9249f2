package e2e

import (
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil/consultest"
)

// TestMeshConsul runs the key scenarios once more on the REGISTRY=consul
// topology: a real Consul agent (PETMESH_CONSUL_BIN; skipped without it
// unless PETMESH_REQUIRE_REAL=1) is the registry and the route store.
func TestMeshConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	agent := consultest.Start(t)
	m := startMesh(t, "consul", agent.HTTPAddr())
	for _, sc := range []struct {
		desc string
		run  func(*testing.T, *mesh)
	}{
		{"auth", testAuth},
		{"a second control plane on the same Consul", testSecondControlPlane},
		{"control plane stopped and restarted", testControlPlaneRestart},
		// The sidecar reports the dead app critical on its next check;
		// Consul's blocking query carries it to the control plane.
		{"kill -9 of a pets instance", func(t *testing.T, m *mesh) { testKill(t, m, 2*time.Second+healthInterval) }},
	} {
		if !t.Run(sc.desc, func(t *testing.T) { sc.run(t, m) }) {
			t.Logf("scenario %q failed; the following ones may fail because of it", sc.desc)
		}
	}
}
