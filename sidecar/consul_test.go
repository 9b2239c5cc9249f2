package sidecar_test

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/petmesh/petmesh/controlplane/registry"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/consultest"
)

// TestConsulLifecycle runs the sidecar against a real Consul agent (and the
// control plane watching it): TTL-checked registration with the version
// tag, critical while the app fails, deregistration on SIGTERM.
func TestConsulLifecycle(t *testing.T) {
	agent := consultest.Start(t) // skips without PETMESH_CONSUL_BIN unless PETMESH_REQUIRE_REAL=1
	iss := newIssuer(t)
	cp := startControlPlaneWith(t, iss, []string{"-registry", "consul", "-consul-addr", agent.HTTPAddr()}, nil)
	a := newApp(t, true)
	sc := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-c1", app: a, cp: cp,
		args: []string{"-registry", "consul", "-consul-addr", agent.HTTPAddr(), "-ttl", "2s"}})
	cc := agent.Client()

	check := func(want string) func() error {
		return func() error {
			checks, err := cc.Agent().Checks()
			if err != nil {
				return err
			}
			c, ok := checks[registry.TTLCheckID("echo-c1")]
			if !ok {
				return errors.New("no TTL check registered")
			}
			if c.Status != want {
				return fmt.Errorf("check %s, want %s (output %q)", c.Status, want, c.Output)
			}
			return nil
		}
	}
	tu.Eventually(t, 15*time.Second, check(consulapi.HealthPassing))
	svc, _, err := cc.Agent().Service("echo-c1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Service != "echo" || !slices.Contains(svc.Tags, registry.VersionTagPrefix+"v1") || svc.Address != "127.0.0.1" {
		t.Fatalf("consul service %+v: want echo with tag version=v1 at 127.0.0.1", svc)
	}

	t.Run("critical while the app fails", func(t *testing.T) {
		a.healthy.Store(false)
		tu.Eventually(t, 10*time.Second, check(consulapi.HealthCritical))
		a.healthy.Store(true)
		tu.Eventually(t, 10*time.Second, check(consulapi.HealthPassing))
	})

	t.Run("deregistered on SIGTERM", func(t *testing.T) {
		if err := sc.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := sc.Wait(20 * time.Second); err != nil {
			t.Fatalf("exit: %v", err)
		}
		svcs, err := cc.Agent().Services()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := svcs["echo-c1"]; ok {
			t.Fatal("still registered with Consul after SIGTERM")
		}
	})
}
