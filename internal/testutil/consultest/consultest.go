// Package consultest starts a real Consul agent for tests: a single-node
// dev-mode server on loopback, on free ports, with its own data directory,
// killed when the test ends.
//
// The binary comes from PETMESH_CONSUL_BIN (scripts/tool.sh consul builds
// and prints it; see DEVELOPERS.md). When the variable is unset the test is
// skipped, unless PETMESH_REQUIRE_REAL=1, in which case it fails.
//
// Dev mode keeps the raft state (catalog, KV) in memory: Restart brings
// the agent back on the same ports and data directory with an empty KV and
// a new raft log (indexes start lower: blocking-query clients must reset).
// Services and checks registered through this agent's API are kept in its
// data directory, as with any agent, and come back (checks critical until
// updated). Use StartWith(t, Options{Persistent: true}) for a non-dev
// single server whose whole state survives Restart.
package consultest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/petmesh/petmesh/internal/testutil"
)

// EnvBin names the environment variable holding the consul binary path.
const EnvBin = "PETMESH_CONSUL_BIN"

// EnvRequireReal, when "1", turns a missing binary into a test failure.
const EnvRequireReal = testutil.EnvRequireReal

// Options configure StartWith.
type Options struct {
	// Persistent runs a non-dev single server (-server -bootstrap-expect 1)
	// whose raft state lives in the data directory, so that Restart keeps
	// the catalog and KV. Leader election takes a few seconds longer.
	Persistent bool
	// StartTimeout bounds the wait for a leader; default 60s.
	StartTimeout time.Duration
	// ExtraArgs are appended to the agent command line.
	ExtraArgs []string
}

// Agent is a running Consul agent. Its methods are safe for concurrent use.
type Agent struct {
	t       testing.TB
	bin     string
	opts    Options
	dataDir string
	ports   ports
	node    string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *testutil.SyncBuffer
	// outputs of earlier runs (before Restart), kept for failure logs.
	history []string
}

type ports struct {
	http, serfLAN, serfWAN, server int
}

// Bin returns the consul binary path from PETMESH_CONSUL_BIN, skipping or
// failing t when it is unset (see the package doc).
func Bin(t testing.TB) string {
	t.Helper()
	return testutil.RealBinary(t, EnvBin, "Consul agent", "build consul with scripts/tool.sh consul")
}

// Start starts a dev-mode agent and waits for it to elect itself leader.
// It is killed in t.Cleanup.
func Start(t testing.TB) *Agent {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, opts Options) *Agent {
	t.Helper()
	bin := Bin(t)
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	a := &Agent{t: t, bin: bin, opts: opts, dataDir: t.TempDir(), node: fmt.Sprintf("petmesh-test-%d", os.Getpid())}
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("consul agent output:\n%s", a.Output())
		}
	})
	// Free ports are found by binding and closing; another process may
	// grab one in between, so retry a few times with fresh ports.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		a.ports, err = freePorts()
		if err != nil {
			t.Fatalf("consultest: free ports: %v", err)
		}
		if err = a.start(); err == nil {
			return a
		}
		a.Stop()
	}
	t.Fatalf("consultest: start consul: %v\n%s", err, a.Output())
	return nil
}

func (a *Agent) args() []string {
	p := a.ports
	args := []string{"agent",
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
		"-node", a.node, "-data-dir", a.dataDir,
		"-http-port", strconv.Itoa(p.http),
		"-serf-lan-port", strconv.Itoa(p.serfLAN),
		"-serf-wan-port", strconv.Itoa(p.serfWAN),
		"-server-port", strconv.Itoa(p.server),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-log-level", "warn", "-disable-host-node-id",
	}
	if a.opts.Persistent {
		// raft_multiplier 1 (as in dev mode) makes elections take about a
		// second instead of several.
		args = append(args, "-server", "-bootstrap-expect", "1", "-hcl", "performance { raft_multiplier = 1 }")
	} else {
		args = append(args, "-dev")
	}
	return append(args, a.opts.ExtraArgs...)
}

func (a *Agent) start() error {
	cmd := exec.Command(a.bin, a.args()...)
	out := &testutil.SyncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", a.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	a.mu.Lock()
	a.cmd, a.done, a.out = cmd, done, out
	a.mu.Unlock()
	return a.waitReady(done)
}

// waitReady polls /v1/status/leader until the agent reports a leader and
// its own node is in the catalog (so agent registrations sync at once).
func (a *Agent) waitReady(done <-chan struct{}) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	base := "http://" + a.HTTPAddr()
	deadline := time.Now().Add(a.opts.StartTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("consul exited before electing a leader (last poll: %v)", last)
		default:
		}
		last = func() error {
			leader, err := get(hc, base+"/v1/status/leader")
			if err != nil {
				return err
			}
			if leader == `""` || leader == "" {
				return errors.New("no leader yet")
			}
			node, err := get(hc, base+"/v1/catalog/node/"+a.node)
			if err != nil {
				return err
			}
			if node == "null" || !strings.Contains(node, a.node) {
				return errors.New("node not in catalog yet")
			}
			return nil
		}()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a readiness wait
	}
	return fmt.Errorf("no leader within %v: %w", a.opts.StartTimeout, last)
}

func get(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	return strings.TrimSpace(string(b)), nil
}

// HTTPAddr returns the agent's HTTP API address, "127.0.0.1:port".
func (a *Agent) HTTPAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.http))
}

// URL returns "http://" + HTTPAddr().
func (a *Agent) URL() string { return "http://" + a.HTTPAddr() }

// NodeName returns the agent's node name.
func (a *Agent) NodeName() string { return a.node }

// Client returns a new API client for the agent.
func (a *Agent) Client() *api.Client {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.HTTPAddr()
	cfg.Scheme = "http"
	cfg.Token = ""
	c, err := api.NewClient(cfg)
	if err != nil {
		a.t.Fatalf("consultest: api client: %v", err)
	}
	return c
}

// Stop kills the agent with SIGKILL and waits for it to exit. Stopping a
// stopped agent does nothing.
func (a *Agent) Stop() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart kills the agent (if running) and starts it again on the same
// ports and data directory, then waits for a leader. In dev mode (the
// default) KV and the raft log start empty, but the agent restores the
// services it registered; with Options.Persistent everything is kept.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	a.mu.Lock()
	if a.out != nil {
		a.history = append(a.history, a.out.String())
	}
	a.mu.Unlock()
	var err error
	// The killed process's ports are free at once (listeners use
	// SO_REUSEADDR), but retry briefly in case the kernel lags.
	for attempt := 0; attempt < 3; attempt++ {
		if err = a.start(); err == nil {
			return
		}
		a.Stop()
	}
	a.t.Fatalf("consultest: restart consul: %v\n%s", err, a.Output())
}

// Output returns everything the agent has written, across restarts.
func (a *Agent) Output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b strings.Builder
	for i, h := range a.history {
		fmt.Fprintf(&b, "--- run %d ---\n%s", i+1, h)
	}
	if a.out != nil {
		if len(a.history) > 0 {
			fmt.Fprintf(&b, "--- run %d ---\n", len(a.history)+1)
		}
		b.WriteString(a.out.String())
	}
	return b.String()
}

// WaitForService polls the health catalog until the named service has n
// instances (any health), or fails t after timeout.
func (a *Agent) WaitForService(ctx context.Context, service string, n int, timeout time.Duration) {
	a.t.Helper()
	c := a.Client()
	deadline := time.Now().Add(timeout)
	for {
		entries, _, err := c.Health().Service(service, "", false, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil && len(entries) == n {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("consultest: service %q: want %d instances within %v, have %d (err %v)", service, n, timeout, len(entries), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePorts reserves four distinct loopback ports free for TCP; the serf
// ports are also checked for UDP.
func freePorts() (ports, error) {
	var got []int
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}()
	for len(got) < 4 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports{}, err
		}
		closers = append(closers, l)
		port := l.Addr().(*net.TCPAddr).Port
		if len(got) == 1 || len(got) == 2 { // serf LAN/WAN use UDP too
			u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				continue
			}
			closers = append(closers, u)
		}
		got = append(got, port)
	}
	return ports{http: got[0], serfLAN: got[1], serfWAN: got[2], server: got[3]}, nil
}
