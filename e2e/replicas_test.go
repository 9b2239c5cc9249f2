package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil"
)

// testSecondControlPlane starts a second control-plane process on the
// mesh's Consul (registry and route store), as deploy/k8s runs two
// replicas, and checks that the replicas agree through Consul alone: the
// second serves the same route version and sees the same pets instances,
// a route change made through the second reaches every proxy connected to
// the first, and a rollback made through the first shows in the second.
func testSecondControlPlane(t *testing.T, m *mesh) {
	cp, ok := m.l.Proc("controlplane")
	if !ok {
		t.Fatal("no controlplane process")
	}
	second := cp
	second.Name = "controlplane-2"
	second.Args = slices.Clone(cp.Args)
	for i, a := range second.Args {
		if (a == "-xds-addr" || a == "-api-addr") && i+1 < len(second.Args) {
			second.Args[i+1] = "127.0.0.1:0"
		}
	}
	if err := m.l.Start(testutil.Context(t), second); err != nil {
		t.Fatalf("start a second control plane: %v", err)
	}
	defer func() {
		if err := m.l.Stop(second.Name); err != nil {
			t.Errorf("stop the second control plane: %v", err)
		}
	}()
	api2 := "http://" + m.l.Addr(second.Name, "api")
	ops := m.token("ops")

	version := func(api string) (int, error) {
		var v struct {
			Version int `json:"version"`
		}
		err := m.getJSON(api+"/v1/routes", ops, &v)
		return v.Version, err
	}
	agree := func(want int) error {
		for _, api := range []string{m.apiURL(""), api2} {
			v, err := version(api)
			if err != nil {
				return err
			}
			if v != want {
				return fmt.Errorf("%s serves route version %d, want %d", api, v, want)
			}
		}
		return nil
	}
	v1, err := version(m.apiURL(""))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error { return agree(v1) })

	// Both read the instances the sidecars registered in Consul.
	testutil.Eventually(t, 10*time.Second, func() error {
		var out struct {
			Services []struct {
				Name    string `json:"name"`
				Passing int    `json:"passing"`
			} `json:"services"`
		}
		if err := m.getJSON(api2+"/v1/services", ops, &out); err != nil {
			return err
		}
		for _, s := range out.Services {
			if s.Name == "pets" && s.Passing == 2 {
				return nil
			}
		}
		return fmt.Errorf("the second control plane does not see two passing pets instances: %+v", out.Services)
	})

	// A change through the second reaches the proxies of the first.
	prev := m.changeTable(t, api2, ops, "e2e: through the second replica", func(services map[string]any) {
		stats, _ := services["stats"].(map[string]any)
		if stats == nil {
			t.Fatal("no service stats in the route table")
		}
		stats["connect_timeout"] = "2s"
	})
	if prev != v1 {
		t.Fatalf("the second replica replaced version %d, want %d", prev, v1)
	}
	testutil.Eventually(t, 10*time.Second, func() error { return agree(v1 + 1) })

	// A rollback through the first (petctl) shows in the second.
	m.rollbackTable(t, prev)
	testutil.Eventually(t, 10*time.Second, func() error { return agree(v1 + 2) })
}
