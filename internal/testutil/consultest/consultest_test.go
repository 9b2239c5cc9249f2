package consultest_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/consultest"
)

func TestStartRegisterRestart(t *testing.T) {
	for _, tc := range []struct {
		desc       string
		opts       consultest.Options
		keepsState bool
	}{
		{desc: "dev mode loses state on restart", opts: consultest.Options{}, keepsState: false},
		{desc: "persistent server keeps state on restart", opts: consultest.Options{Persistent: true}, keepsState: true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			a := consultest.StartWith(t, tc.opts)
			c := a.Client()
			if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "pets-1", Name: "pets", Port: 9000, Address: "127.0.0.1"}); err != nil {
				t.Fatalf("register: %v", err)
			}
			a.WaitForService(t.Context(), "pets", 1, 10*time.Second)
			if _, err := c.KV().Put(&api.KVPair{Key: "petmesh/test", Value: []byte("v1")}, nil); err != nil {
				t.Fatalf("kv put: %v", err)
			}

			a.Restart()
			c = a.Client()
			testutil.Eventually(t, 10*time.Second, func() error {
				kv, _, err := c.KV().Get("petmesh/test", nil)
				if err != nil {
					return err
				}
				switch {
				case tc.keepsState && kv == nil:
					return errors.New("key lost after restart")
				case !tc.keepsState && kv != nil:
					return fmt.Errorf("key %q survived a dev-mode restart", kv.Value)
				}
				return nil
			})
			// Either way the agent restores the services it registered.
			a.WaitForService(t.Context(), "pets", 1, 10*time.Second)
		})
	}
}

func TestStopKillsAgent(t *testing.T) {
	a := consultest.Start(t)
	c := a.Client()
	if _, err := c.Status().Leader(); err != nil {
		t.Fatalf("leader: %v", err)
	}
	a.Stop()
	if _, err := c.Status().Leader(); err == nil {
		t.Fatal("agent still answers after Stop")
	}
	a.Stop() // idempotent
}

// TestMissingBinary runs this test binary again without a consul binary:
// it must skip normally and fail when PETMESH_REQUIRE_REAL=1.
func TestMissingBinary(t *testing.T) {
	if os.Getenv("CONSULTEST_CHILD") == "1" {
		consultest.Start(t)
		t.Fatal("Start returned without a binary")
	}
	for _, tc := range []struct {
		desc     string
		require  string
		wantFail bool
		wantText string
	}{
		{desc: "skips by default", require: "", wantFail: false, wantText: "SKIP"},
		{desc: "fails when real things are required", require: "1", wantFail: true, wantText: "PETMESH_REQUIRE_REAL=1"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestMissingBinary$", "-test.v")
			cmd.Env = append(os.Environ(), "CONSULTEST_CHILD=1", consultest.EnvBin+"=", consultest.EnvRequireReal+"="+tc.require)
			out, err := cmd.CombinedOutput()
			if failed := err != nil; failed != tc.wantFail {
				t.Fatalf("child failed=%v, want %v:\n%s", failed, tc.wantFail, out)
			}
			if !strings.Contains(string(out), tc.wantText) {
				t.Fatalf("child output lacks %q:\n%s", tc.wantText, out)
			}
		})
	}
}
