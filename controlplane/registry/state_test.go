package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/petmesh/petmesh/controlplane/registry"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

// runMemory runs m.Run until the test ends (or stop is called) and waits
// for it.
func runMemory(t *testing.T, m *registry.Memory) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := m.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// stateIDs reads the state file's instance ids (nil when absent).
func stateIDs(path string) ([]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var sf struct {
		Instances []struct {
			ID string `json:"id"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(raw, &sf); err != nil {
		return nil, err
	}
	var ids []string
	for _, in := range sf.Instances {
		ids = append(ids, in.ID)
	}
	return ids, nil
}

func waitState(t *testing.T, path string, want ...string) {
	t.Helper()
	tu.Eventually(t, 5*time.Second, func() error {
		ids, err := stateIDs(path)
		if err != nil {
			return err
		}
		if !slices.Equal(ids, want) {
			return fmt.Errorf("state file holds %v, want %v", ids, want)
		}
		return nil
	})
}

func ids(s registry.Snapshot) []string {
	var out []string
	for _, in := range s.All() {
		out = append(out, in.ID)
	}
	return out
}

// TestMemoryStateSurvivesRestart: a restarted built-in registry serves the
// instances it had (so the control plane never sends empty endpoints for
// them), their heartbeats succeed without a re-registration, and an
// instance that stopped heart-beating expires one TTL after the restart.
func TestMemoryStateSurvivesRestart(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "data", "registry-state.json")
	m1 := newMemory(t, registry.MemoryOptions{StateFile: path})
	stop := runMemory(t, m1)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(m1.Register(ctx, registry.Registration{Service: "pets", ID: "pets-1", Address: "10.0.0.1", Port: 9001, Version: "v1", TTL: 3 * time.Second}))
	must(m1.Register(ctx, registry.Registration{Service: "pets", ID: "pets-2", Address: "10.0.0.2", Port: 9001, Version: "v2", TTL: 10 * time.Second, Metadata: map[string]string{"zone": "a"}}))
	must(m1.Register(ctx, registry.Registration{Service: "stats", ID: "stats-1", Address: "10.0.0.3", Port: 9003, TTL: 10 * time.Second}))
	must(m1.SetHealth(ctx, "pets-2", registry.HealthWarning, "slow disk"))
	must(m1.Deregister(ctx, "stats-1"))
	waitState(t, path, "pets-1", "pets-2")
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode: %v %v", fi, err)
	}
	before, err := m1.Snapshot(ctx)
	must(err)
	stop()

	// The restart, with a clock of its own.
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	m2 := newMemory(t, registry.MemoryOptions{StateFile: path, Clock: clock, SweepInterval: time.Hour})
	ch, err := m2.Watch(ctx)
	must(err)
	if first := <-ch; !first.Equal(before) {
		t.Fatalf("first snapshot after restart:\n%+v\nwant\n%+v", first, before)
	}

	steps := []struct {
		desc    string
		advance time.Duration
		beat    []string
		want    []string
	}{
		{desc: "a live instance's heartbeat succeeds (no 404, no re-registration)", advance: 2 * time.Second, beat: []string{"pets-1"}, want: []string{"pets-1", "pets-2"}},
		{desc: "renewed by its heartbeat", advance: 2500 * time.Millisecond, want: []string{"pets-1", "pets-2"}},
		{desc: "no heartbeat for one TTL: expired", advance: 500 * time.Millisecond, want: []string{"pets-2"}},
		{desc: "the other expires one TTL after the restart", advance: 5 * time.Second, want: nil},
	}
	for _, st := range steps {
		clock.Advance(st.advance)
		for _, id := range st.beat {
			must(m2.Heartbeat(ctx, id))
		}
		m2.Sweep()
		s, err := m2.Snapshot(ctx)
		must(err)
		if got := ids(s); !slices.Equal(got, st.want) {
			t.Fatalf("%s: instances %v, want %v", st.desc, got, st.want)
		}
	}
	if err := m2.Heartbeat(ctx, "pets-1"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("heartbeat after expiry: %v, want ErrNotFound", err)
	}
}

func TestMemoryStateRestoresHealthAndMetadata(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.json")
	m1 := newMemory(t, registry.MemoryOptions{StateFile: path})
	stop := runMemory(t, m1)
	if err := m1.Register(ctx, registry.Registration{Service: "pets", ID: "p1", Address: "pets.internal", Port: 80, Version: "v3", Metadata: map[string]string{"a": "b"}, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := m1.SetHealth(ctx, "p1", registry.HealthCritical, "db down"); err != nil {
		t.Fatal(err)
	}
	// Run writes a pending change before it returns.
	stop()
	m2 := newMemory(t, registry.MemoryOptions{StateFile: path})
	s, err := m2.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in, ok := s.Instance("p1")
	want := registry.Instance{Service: "pets", ID: "p1", Address: "pets.internal", Port: 80, Version: "v3", Metadata: map[string]string{"a": "b"}, Health: registry.HealthCritical, Output: "db down"}
	if !ok || fmt.Sprint(in) != fmt.Sprint(want) {
		t.Fatalf("restored %+v, want %+v", in, want)
	}
}

func TestMemoryStateBadFiles(t *testing.T) {
	tests := []struct {
		desc    string
		content string
		want    []string
		errors  int
	}{
		{desc: "not JSON: start empty", content: "{not json", errors: 1},
		{desc: "unknown version: start empty", content: `{"version":2,"instances":[]}`, errors: 1},
		{desc: "unknown field: start empty", content: `{"version":1,"instances":[],"extra":1}`, errors: 1},
		{
			desc: "invalid entries skipped, valid ones kept",
			content: `{"version":1,"saved_at":"2026-01-01T00:00:00Z","instances":[
				{"service":"pets","id":"ok","address":"10.0.0.1","port":80,"health":"passing","ttl":"10s"},
				{"service":"Pets!","id":"bad-service","address":"10.0.0.1","port":80,"health":"passing","ttl":"10s"},
				{"service":"pets","id":"bad-ttl","address":"10.0.0.1","port":80,"health":"passing","ttl":"0s"},
				{"service":"pets","id":"bad-health","address":"10.0.0.1","port":80,"health":"sick","ttl":"10s"},
				{"service":"pets","id":"bad-port","address":"10.0.0.1","port":0,"health":"passing","ttl":"10s"}]}`,
			want: []string{"ok"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewPedanticRegistry()
			m := newMemory(t, registry.MemoryOptions{StateFile: path, Registerer: reg})
			s, err := m.Snapshot(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(s); !slices.Equal(got, tc.want) {
				t.Fatalf("restored %v, want %v", got, tc.want)
			}
			want := fmt.Sprintf(`
# HELP petmesh_registry_state_errors_total Failed reads (at start) and writes of the built-in registry's state file.
# TYPE petmesh_registry_state_errors_total counter
petmesh_registry_state_errors_total{backend="memory"} %d
`, tc.errors)
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "petmesh_registry_state_errors_total"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMemoryStateWriteError: a state file that cannot be written is
// counted and logged; the registry keeps working.
func TestMemoryStateWriteError(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	// The state file's directory is a regular file: every write fails.
	m := newMemory(t, registry.MemoryOptions{StateFile: filepath.Join(blocker, "state.json"), Registerer: reg})
	runMemory(t, m)
	if err := m.Register(t.Context(), registry.Registration{Service: "pets", ID: "p1", Address: "10.0.0.1", Port: 80}); err != nil {
		t.Fatal(err)
	}
	tu.Eventually(t, 5*time.Second, func() error {
		n, err := testutil.GatherAndCount(reg, "petmesh_registry_state_errors_total")
		if err != nil || n != 1 {
			return fmt.Errorf("series %d %v", n, err)
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "petmesh_registry_state_errors_total" && mf.GetMetric()[0].GetCounter().GetValue() >= 1 {
				return nil
			}
		}
		return errors.New("no write error counted yet")
	})
	s, _ := m.Snapshot(t.Context())
	if got := ids(s); !slices.Equal(got, []string{"p1"}) {
		t.Fatalf("instances %v", got)
	}
}
