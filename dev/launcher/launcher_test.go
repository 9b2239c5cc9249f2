package launcher

import (
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil"
)

// all returns the addresses of a that a topology without Obs uses, named
// (no Consul: only the consul topology has one; no observability).
func (a Addrs) all() map[string]string {
	m := a.named()
	delete(m, "consul")
	for name := range a.obs() {
		delete(m, name)
	}
	return m
}

// obs returns the observability addresses of a, named.
func (a Addrs) obs() map[string]string {
	m := map[string]string{}
	for name, addr := range a.named() {
		if name == "prometheus" || strings.HasPrefix(name, "jaeger ") {
			m[name] = addr
		}
	}
	return m
}

// TestDevAddrsDocumented: every fixed port of make run is in the README's
// "What make run starts" table, and they are distinct.
func TestDevAddrsDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testutil.RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	start := strings.Index(readme, "## What `make run` starts")
	end := strings.Index(readme[start+1:], "\n## ")
	if start < 0 || end < 0 {
		t.Fatal("README has no \"What `make run` starts\" section")
	}
	section := readme[start : start+1+end]
	seen := map[string]string{}
	for name, addr := range DevAddrs().named() {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if other, dup := seen[port]; dup {
			t.Errorf("%s and %s share port %s", name, other, port)
		}
		seen[port] = name
		if !strings.Contains(section, port) {
			t.Errorf("%s port %s is not in the README's make run table", name, port)
		}
	}
}

// TestTopologyUsesAddrs: given other addresses, no process refers to a
// fixed dev port, and every address is given to some process.
func TestTopologyUsesAddrs(t *testing.T) {
	port := 40000
	next := func() string { port++; return fmt.Sprintf("127.0.0.1:%d", port) }
	inst := func() InstanceAddrs {
		return InstanceAddrs{App: next(), AppAdmin: next(), SidecarAdmin: next(), Inbound: next(), Outbound: next()}
	}
	a := Addrs{Edge: next(), EdgeAdmin: next(), XDS: next(), API: next(), Standin: next(), Consul: next(),
		Pets1: inst(), Pets2: inst(), Sync: inst(), Stats: inst(),
		Jaeger:     JaegerAddrs{UI: next(), OTLPGRPC: next(), OTLPHTTP: next(), QueryGRPC: next(), Health: next(), Metrics: next()},
		Prometheus: next()}
	for _, tc := range []struct {
		desc, registry, consulBin string
		obs                       bool
		procs                     int
	}{
		{desc: "builtin", registry: "builtin", procs: 11},
		{desc: "consul agent started", registry: "consul", consulBin: "/bin/consul", procs: 12},
		{desc: "consul agent running", registry: "consul", procs: 11},
		{desc: "builtin with jaeger and prometheus", registry: "builtin", obs: true, procs: 13},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			o := Options{BinDir: "/bin", RunDir: "/run", Registry: tc.registry, ConsulBin: tc.consulBin, Addrs: a,
				Obs: tc.obs, JaegerBin: "/bin/jaeger", PrometheusBin: "/bin/prometheus"}
			procs := Topology(o)
			if len(procs) != tc.procs {
				t.Fatalf("%d processes, want %d", len(procs), tc.procs)
			}
			var args strings.Builder
			for _, p := range procs {
				args.WriteString(strings.Join(p.Args, " ") + " " + strings.Join(p.Env, " ") + "\n")
			}
			all := args.String()
			for name, addr := range DevAddrs().named() {
				if strings.Contains(all, addr) {
					t.Errorf("a process refers to the dev address of %s (%s)", name, addr)
				}
			}
			want := a.all()
			if tc.obs {
				maps.Copy(want, a.obs())
			}
			for name, addr := range want {
				// Jaeger's metrics address is given as host and port.
				if _, port, _ := net.SplitHostPort(addr); !strings.Contains(all, addr) && (name != "jaeger metrics" || !strings.Contains(all, "JAEGER_METRICS_PORT="+port)) {
					t.Errorf("no process is given the address of %s (%s)", name, addr)
				}
			}
			if !tc.obs {
				for name, addr := range a.obs() {
					if strings.Contains(all, addr) {
						t.Errorf("without obs, a process is given the %s address %s", name, addr)
					}
				}
			}
			// xDS is authenticated: the control plane accepts the dev token
			// file, and every process that dials xDS sends it.
			for _, p := range procs {
				if !slices.Contains(p.Args, "-xds-addr") {
					continue
				}
				if i := slices.Index(p.Args, "-xds-token-file"); i < 0 || p.Args[i+1] != "/run/etc/xds-token" {
					t.Errorf("%s dials xDS without -xds-token-file /run/etc/xds-token: %v", p.Name, p.Args)
				}
			}
			if tc.registry == "consul" && !strings.Contains(all, a.Consul) {
				t.Errorf("no process is given the Consul address %s", a.Consul)
			}
			banner := Banner(o)
			for _, addr := range []string{a.Edge, a.API, a.Pets1.App, a.Pets2.SidecarAdmin} {
				if !strings.Contains(banner, addr) {
					t.Errorf("banner does not show %s", addr)
				}
			}
		})
	}
}

// TestLauncherRestart: a process stopped and started again under the same
// name takes its old place; Addr, Pid, Signal and Wait follow the newest.
func TestLauncherRestart(t *testing.T) {
	bin := testutil.BuildBinary(t, "./dev/petfinder-standin/cmd/petfinder-standin")
	l := &Launcher{BinDir: filepath.Dir(bin), RunDir: t.TempDir(), Out: io.Discard, StopTimeout: 10 * time.Second}
	t.Cleanup(func() { _ = l.StopAll() })
	ctx := testutil.Context(t)
	p := Proc{Name: "standin", Bin: filepath.Base(bin), Args: []string{"-addr", "127.0.0.1:0"}, Listeners: []string{"http"}}
	if err := l.Start(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctx, Proc{Name: "other", Bin: filepath.Base(bin), Args: []string{"-addr", "127.0.0.1:0"}, Listeners: []string{"http"}}); err != nil {
		t.Fatal(err)
	}
	first, pid := l.Addr("standin", "http"), l.Pid("standin")
	if first == "" || pid == 0 {
		t.Fatalf("addr %q pid %d", first, pid)
	}
	if err := l.Signal("standin", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := l.Wait("standin", 10*time.Second); err == nil {
		t.Fatal("a killed process exited without an error")
	}
	if err := l.Signal("standin", syscall.SIGTERM); err == nil {
		t.Fatal("signalling an exited process succeeded")
	}
	again, ok := l.Proc("standin")
	if !ok {
		t.Fatal("no Proc for standin")
	}
	if err := l.Start(ctx, again); err != nil {
		t.Fatal(err)
	}
	if l.Pid("standin") == pid || l.Addr("standin", "http") == "" {
		t.Fatalf("after the restart: pid %d (was %d), addr %q", l.Pid("standin"), pid, l.Addr("standin", "http"))
	}
	l.mu.Lock()
	var order []string
	for _, r := range l.procs {
		order = append(order, r.proc.Name)
	}
	l.mu.Unlock()
	if strings.Join(order, ",") != "standin,other" {
		t.Errorf("process order %v, want the restart in the old place", order)
	}
	if err := l.Stop("standin"); err != nil {
		t.Errorf("stop: %v", err)
	}
	log, err := os.ReadFile(filepath.Join(l.RunDir, "logs", "standin.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), `"msg":"listening"`); n != 2 {
		t.Errorf("log holds %d listening lines, want both runs' (2)", n)
	}
}
