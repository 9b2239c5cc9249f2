package testutil

import (
	"os"
	"testing"
)

// EnvRequireReal, when "1" (set by make test), turns a missing real server
// binary into a test failure instead of a skip.
const EnvRequireReal = "PETMESH_REQUIRE_REAL"

// RealBinary returns the path of a real server binary named by the
// environment variable env (e.g. PETMESH_CONSUL_BIN). When the variable is
// unset the test is skipped, or failed when PETMESH_REQUIRE_REAL=1; hint
// says how to get the binary. A path that does not exist always fails.
func RealBinary(t testing.TB, env, what, hint string) string {
	t.Helper()
	bin := os.Getenv(env)
	if bin == "" {
		if os.Getenv(EnvRequireReal) == "1" {
			t.Fatalf("%s is not set and %s=1; %s", env, EnvRequireReal, hint)
		}
		t.Skipf("%s not set; skipping test that needs a real %s", env, what)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s=%s: %v", env, bin, err)
	}
	return bin
}
