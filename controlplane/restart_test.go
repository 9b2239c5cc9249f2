package controlplane_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/client"
)

// endpointLog records how many endpoints of one cluster each applied
// configuration held (absent assignments are not recorded).
type endpointLog struct {
	cluster string
	mu      sync.Mutex
	counts  []int
}

func (l *endpointLog) observe(s *client.Snapshot) {
	cla, ok := s.Endpoints[l.cluster]
	if !ok {
		return
	}
	n := 0
	for _, loc := range cla.GetEndpoints() {
		n += len(loc.GetLbEndpoints())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.counts) == 0 || l.counts[len(l.counts)-1] != n {
		l.counts = append(l.counts, n)
	}
}

func (l *endpointLog) get() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.counts)
}

func (l *endpointLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts = l.counts[len(l.counts)-1:]
}

func (l *endpointLog) waitFor(t *testing.T, n int) {
	t.Helper()
	tu.Eventually(t, 15*time.Second, func() error {
		if c := l.get(); len(c) == 0 || c[len(c)-1] != n {
			return fmt.Errorf("%s endpoints seen: %v, want %d last", l.cluster, c, n)
		}
		return nil
	})
}

// TestBuiltinRegistryWarmRestart: a control plane killed (kill -9) and
// restarted with the built-in registry serves the instances it had from
// its state file: the proxies are never sent an empty load assignment,
// and the sidecars' heartbeats keep working without re-registering.
// Without the state file (-registry-state-file none) the same restart
// sends 0 endpoints until the instances register again: the failure
// this guards against, and proof that the recorder sees it.
func TestBuiltinRegistryWarmRestart(t *testing.T) {
	a := newAuth(t)
	storeDir := t.TempDir()
	args := append(a.args(), "-store", "file", "-store-dir", storeDir)
	cp := startCP(t, "127.0.0.1:0", args...)
	xdsAddr := cp.Addr("xds")
	ctx := tu.Context(t)

	regs := []registry.Registration{
		{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 15001, Version: "v1", TTL: time.Hour},
		{Service: "pets", ID: "pets-2", Address: "127.0.0.1", Port: 15011, Version: "v1", TTL: time.Hour},
	}
	rc, err := registry.NewHTTPClient(cp.URL("api"), regToken)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regs {
		if err := rc.Register(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	log := &endpointLog{cluster: "pets"}
	e := startClient(t, xdsAddr, edge("e1"))
	e.mu.Lock()
	e.observe = log.observe
	e.mu.Unlock()
	log.waitFor(t, 2)

	// The state file holds both instances (written after each change).
	statePath := filepath.Join(storeDir, "registry-state.json")
	tu.Eventually(t, 10*time.Second, func() error {
		raw, err := os.ReadFile(statePath)
		if err != nil {
			return err
		}
		var sf struct {
			Instances []struct{ ID string } `json:"instances"`
		}
		if err := json.Unmarshal(raw, &sf); err != nil {
			return err
		}
		if len(sf.Instances) != 2 {
			return fmt.Errorf("state file: %s", raw)
		}
		return nil
	})

	restart := func(t *testing.T, extra ...string) string {
		t.Helper()
		cp.Kill()
		cp = startCP(t, xdsAddr, append(slices.Clone(args), extra...)...)
		api := cp.URL("api")
		tu.Eventually(t, 15*time.Second, func() error {
			p, ok := proxies(t, api, a.viewer)[e.id]
			if !ok || !p.Connected || !p.Synced {
				return fmt.Errorf("edge not resynced: %+v", p)
			}
			return nil
		})
		return api
	}

	t.Run("with the state file: never 0 endpoints, heartbeats succeed", func(t *testing.T) {
		log.reset()
		api := restart(t)
		rc2, err := registry.NewHTTPClient(api, regToken)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range regs {
			if err := rc2.Heartbeat(ctx, r.ID); err != nil {
				t.Fatalf("heartbeat of %s after restart: %v (want success: restored)", r.ID, err)
			}
		}
		log.waitFor(t, 2)
		if got := log.get(); slices.Contains(got, 0) || !slices.Equal(got, []int{2}) {
			t.Fatalf("pets endpoints seen across the restart: %v, want only 2", got)
		}
		// A clean stop (SIGTERM) keeps the state too.
		if err := cp.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := cp.Wait(20 * time.Second); err != nil {
			t.Fatalf("exit: %v", err)
		}
	})

	t.Run("without it: 0 endpoints until the instances register again", func(t *testing.T) {
		log.reset()
		api := restart(t, "-registry-state-file", "none")
		log.waitFor(t, 0)
		rc2, err := registry.NewHTTPClient(api, regToken)
		if err != nil {
			t.Fatal(err)
		}
		if err := rc2.Heartbeat(ctx, "pets-1"); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("heartbeat without state: %v, want ErrNotFound", err)
		}
		for _, r := range regs {
			if err := rc2.Register(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		log.waitFor(t, 2)
	})
}
