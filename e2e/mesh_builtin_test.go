package e2e

import (
	"testing"
	"time"
)

// TestMeshBuiltin runs the make-run topology with the built-in registry
// and file route store, and the scenarios on it in order: the ones that
// leave the mesh as they found it first, the kill -9 last.
func TestMeshBuiltin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	m := startMesh(t, "builtin", "")
	for _, sc := range []struct {
		desc string
		run  func(*testing.T, *mesh)
	}{
		{"auth", testAuth},
		{"sync writes through egress, stats reports", testSyncAndStats},
		{"canary 90/10 through petctl", testCanary},
		{"control plane stopped and restarted", testControlPlaneRestart},
		{"rolling restart with SIGTERM", testRollingRestart},
		{"kill -9 of a pets instance", func(t *testing.T, m *mesh) { testKill(t, m, 2*time.Second+healthInterval) }},
	} {
		if !t.Run(sc.desc, func(t *testing.T) { sc.run(t, m) }) {
			t.Logf("scenario %q failed; the following ones may fail because of it", sc.desc)
		}
	}
}
