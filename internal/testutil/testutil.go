// Package testutil holds helpers for tests that run real processes over
// real sockets: building binaries once per test process, starting them on
// 127.0.0.1:0 and reading the bound addresses from their logs, and polling
// for conditions instead of sleeping.
package testutil

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Eventually polls f every 20ms until it returns nil or timeout passes,
// then fails the test with f's last error.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	buildMu   sync.Mutex
	buildDir  string
	buildDone = map[string]string{}
)

// RepoRoot returns the module root (the directory holding go.mod).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// BuildBinary builds the main package at pkg (a path relative to the
// module root, e.g. "./services/pets/cmd/pets") once per test process and
// returns the binary's path.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := buildDone[pkg]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "petmesh-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = RepoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	buildDone[pkg] = out
	return out
}

// Process is a child process started by Start. Its stderr and stdout are
// kept and printed by the test log when the test fails.
type Process struct {
	t     testing.TB
	Cmd   *exec.Cmd
	mu    sync.Mutex
	out   bytes.Buffer
	addrs map[string]string
	ready chan struct{}
	want  []string
	done  chan struct{}
	err   error
}

// StartOptions configure Start.
type StartOptions struct {
	Args []string
	// Env is added to the current environment.
	Env []string
	// Listeners are the names whose "listening" log lines Start waits for.
	Listeners []string
	// Timeout bounds the wait for listeners; default 60s.
	Timeout time.Duration
	// Dir is the working directory.
	Dir string
}

// ListeningMsg is the log message every petmesh binary writes, as a JSON
// line with "name" and "addr" attributes, once a listener is bound.
const ListeningMsg = "listening"

// Start runs bin and waits until every listener in opts.Listeners has been
// announced in its JSON log. The process is killed when the test ends.
func Start(t testing.TB, bin string, opts StartOptions) *Process {
	t.Helper()
	cmd := exec.Command(bin, opts.Args...)
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.Dir = opts.Dir
	p := &Process{t: t, Cmd: cmd, addrs: map[string]string{}, ready: make(chan struct{}), want: opts.Listeners, done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go p.scan(pr)
	go func() {
		p.err = cmd.Wait()
		_ = pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("output of %s %s:\n%s", filepath.Base(bin), strings.Join(opts.Args, " "), p.Output())
		}
	})
	if len(opts.Listeners) == 0 {
		close(p.ready)
		return p
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	select {
	case <-p.ready:
	case <-p.done:
		t.Fatalf("%s exited before listening: %v\n%s", bin, p.err, p.Output())
	case <-time.After(timeout):
		t.Fatalf("%s did not announce %v within %v\n%s", bin, opts.Listeners, timeout, p.Output())
	}
	return p
}

func (p *Process) scan(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	readyClosed := false
	for sc.Scan() {
		line := sc.Bytes()
		p.mu.Lock()
		p.out.Write(line)
		p.out.WriteByte('\n')
		var rec struct {
			Msg  string `json:"msg"`
			Name string `json:"name"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Msg == ListeningMsg && rec.Name != "" {
			p.addrs[rec.Name] = rec.Addr
		}
		if !readyClosed && len(p.want) > 0 {
			all := true
			for _, n := range p.want {
				if _, ok := p.addrs[n]; !ok {
					all = false
				}
			}
			if all {
				close(p.ready)
				readyClosed = true
			}
		}
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// Addr returns the announced address of the named listener.
func (p *Process) Addr(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.addrs[name]
	if !ok {
		p.t.Fatalf("listener %q not announced; have %v", name, p.addrs)
	}
	return a
}

// URL returns http://Addr(name).
func (p *Process) URL(name string) string { return "http://" + p.Addr(name) }

// Output returns everything the process has written so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Wait waits for the process to exit, up to timeout, and returns its error.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("process %d still running after %v", p.Cmd.Process.Pid, timeout)
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill kills the process (SIGKILL) and waits for it.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// Context returns a context cancelled when the test ends.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}
