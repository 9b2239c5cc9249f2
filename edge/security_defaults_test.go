package edge

import (
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	tu "github.com/petmesh/petmesh/internal/testutil"
)

// TestSecurityListenDefaults reads the defaults of every petmesh server
// binary from its real -h output, with an environment that sets none of
// its variables: every admin, API and egress listener binds to loopback
// unless configured otherwise. The listeners meant for other machines are
// listed too, so that widening or narrowing one is a visible change here
// and in SECURITY.md.
func TestSecurityListenDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary")
	}
	loopback := map[string]bool{"127.0.0.1": true, "::1": true, "localhost": true}
	tests := []struct {
		pkg      string
		loopback []string          // listen flags that must default to loopback
		public   map[string]string // listen flags on every interface: flag → default
	}{
		{"./edge/cmd/edge", []string{"admin-addr"}, map[string]string{"addr": ":8080"}},
		{"./sidecar/cmd/sidecar", []string{"admin-addr", "outbound-addr"}, map[string]string{"inbound-addr": ":15001"}},
		{"./controlplane/cmd/controlplane", []string{"api-addr"}, map[string]string{"xds-addr": ":18000"}},
		{"./services/pets/cmd/pets", []string{"admin-addr", "addr"}, nil},
		{"./services/sync/cmd/sync", []string{"admin-addr", "addr"}, nil},
		{"./services/stats/cmd/stats", []string{"admin-addr", "addr"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.pkg, func(t *testing.T) {
			bin := tu.BuildBinary(t, tc.pkg)
			cmd := exec.Command(bin, "-h")
			cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
			out, _ := cmd.CombinedOutput() // -h exits non-zero with some flag packages
			defaults := flagDefaults(string(out))
			if len(defaults) < 3 {
				t.Fatalf("no flag defaults in -h output:\n%s", out)
			}
			for _, f := range tc.loopback {
				v, ok := defaults[f]
				if !ok {
					t.Fatalf("-%s not in -h output:\n%s", f, out)
				}
				host, _, err := net.SplitHostPort(v)
				if err != nil || !loopback[host] {
					t.Errorf("-%s defaults to %q; want a loopback address", f, v)
				}
			}
			for f, want := range tc.public {
				if got := defaults[f]; got != want {
					t.Errorf("-%s defaults to %q; SECURITY.md documents %q", f, got, want)
				}
			}
		})
	}
}

// flagDefaults parses the "(default "…")" of each string flag in the
// standard flag package's usage output: a "  -name type" line, then its
// indented help lines.
func flagDefaults(usage string) map[string]string {
	head := regexp.MustCompile(`^  -([a-z0-9-]+)`)
	def := regexp.MustCompile(`\(default "([^"]*)"\)`)
	m := map[string]string{}
	name := ""
	for line := range strings.Lines(usage) {
		if g := head.FindStringSubmatch(line); g != nil {
			name = g[1]
		}
		if g := def.FindStringSubmatch(line); g != nil && name != "" {
			m[name] = g[1]
		}
	}
	return m
}
