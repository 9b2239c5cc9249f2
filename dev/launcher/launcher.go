// Package launcher starts the petmesh topology on one machine for
// development (`make run`, `make start`): every process is a real binary
// from the bin directory, with its log in <dir>/logs and its pid in
// <dir>/pids. It waits for each process to announce its listeners, prints
// the URLs and the dev credentials, and on SIGINT/SIGTERM stops the
// processes in reverse start order, each with SIGTERM and then SIGKILL.
package launcher

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Proc describes one process of the topology.
type Proc struct {
	// Name is unique; it names the log and pid files.
	Name string
	// Bin is the binary's file name inside the bin directory.
	Bin  string
	Args []string
	Env  []string
	// Listeners are the listener names the process must announce before
	// the next process starts.
	Listeners []string
	// Job processes run to completion (their exit is not an error).
	Job bool
	// Absolute means Bin is a path, not a name inside the bin directory.
	Absolute bool
	// Ready, when set, is polled after the listeners are announced; the
	// next process starts once it returns nil.
	Ready func(context.Context) error
}

// running is a started process.
type running struct {
	proc  Proc
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
	mu    sync.Mutex
	addrs map[string]string
}

// Launcher owns the processes it starts.
type Launcher struct {
	BinDir string
	RunDir string
	Out    io.Writer
	// StartTimeout bounds the wait for one process's listeners.
	StartTimeout time.Duration
	// StopTimeout bounds the wait after SIGTERM before SIGKILL.
	StopTimeout time.Duration

	mu    sync.Mutex
	procs []*running
}

// Start starts p and waits until it has announced its listeners.
func (l *Launcher) Start(ctx context.Context, p Proc) error {
	for _, d := range []string{"logs", "pids"} {
		if err := os.MkdirAll(filepath.Join(l.RunDir, d), 0o755); err != nil {
			return err
		}
	}
	// Append: a process started again under the same name (a restart)
	// keeps the earlier run's log.
	logf, err := os.OpenFile(filepath.Join(l.RunDir, "logs", p.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	bin := filepath.Join(l.BinDir, p.Bin)
	if p.Absolute {
		bin = p.Bin
	}
	cmd := exec.Command(bin, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.SysProcAttr = sysProcAttr()
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	_ = os.WriteFile(filepath.Join(l.RunDir, "pids", p.Name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	r := &running{proc: p, cmd: cmd, done: make(chan struct{}), addrs: map[string]string{}}
	announced := make(chan struct{})
	go func() {
		defer logf.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		closed := len(p.Listeners) == 0
		if closed {
			close(announced)
		}
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = logf.Write(append(line, '\n'))
			var rec struct{ Msg, Name, Addr string }
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" {
				r.mu.Lock()
				r.addrs[rec.Name] = rec.Addr
				all := true
				for _, n := range p.Listeners {
					if _, ok := r.addrs[n]; !ok {
						all = false
					}
				}
				r.mu.Unlock()
				if all && !closed {
					close(announced)
					closed = true
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		r.err = cmd.Wait()
		_ = pw.Close()
		close(r.done)
	}()
	l.mu.Lock()
	// A restart takes the place of the exited process of the same name,
	// so StopAll keeps the reverse start order of the topology.
	replaced := false
	for i, o := range l.procs {
		if o.proc.Name == p.Name && o.exited() {
			l.procs[i], replaced = r, true
			break
		}
	}
	if !replaced {
		l.procs = append(l.procs, r)
	}
	l.mu.Unlock()

	timeout := l.StartTimeout
	if timeout == 0 {
		timeout = 90 * time.Second
	}
	select {
	case <-announced:
		if p.Ready != nil {
			if err := l.waitReady(ctx, p, r, timeout); err != nil {
				return err
			}
		}
		fmt.Fprintf(l.Out, "  started %-24s pid %d\n", p.Name, cmd.Process.Pid)
		return nil
	case <-r.done:
		if p.Job && r.err == nil {
			return nil
		}
		return fmt.Errorf("%s exited during start (%v); see %s", p.Name, r.err, filepath.Join(l.RunDir, "logs", p.Name+".log"))
	case <-time.After(timeout):
		return fmt.Errorf("%s did not announce %v within %v; see %s", p.Name, p.Listeners, timeout, filepath.Join(l.RunDir, "logs", p.Name+".log"))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitReady polls p.Ready until it passes, the process exits, or timeout.
func (l *Launcher) waitReady(ctx context.Context, p Proc, r *running, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		last = p.Ready(pctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("%s exited while getting ready (%v); see %s", p.Name, r.err, filepath.Join(l.RunDir, "logs", p.Name+".log"))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %v: %v; see %s", p.Name, timeout, last, filepath.Join(l.RunDir, "logs", p.Name+".log"))
		}
	}
}

// Exited returns a channel closed when any non-job process exits, with
// its name and error.
func (l *Launcher) Exited() <-chan string {
	ch := make(chan string, 1)
	l.mu.Lock()
	procs := append([]*running(nil), l.procs...)
	l.mu.Unlock()
	for _, r := range procs {
		if r.proc.Job {
			continue
		}
		go func() {
			<-r.done
			select {
			case ch <- fmt.Sprintf("%s exited: %v", r.proc.Name, r.err):
			default:
			}
		}()
	}
	return ch
}

// StopAll stops every process in reverse start order.
func (l *Launcher) StopAll() error {
	l.mu.Lock()
	procs := append([]*running(nil), l.procs...)
	l.procs = nil
	l.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		r := procs[i]
		if r.exited() {
			continue
		}
		if err := l.stop(r); err != nil && !r.proc.Job {
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				errs = append(errs, err)
			}
		}
		_ = os.Remove(filepath.Join(l.RunDir, "pids", r.proc.Name+".pid"))
		fmt.Fprintf(l.Out, "  stopped %s\n", r.proc.Name)
	}
	return errors.Join(errs...)
}

// Addr returns the announced address of a listener of a running process.
func (l *Launcher) Addr(proc, listener string) string {
	r := l.find(proc)
	if r == nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addrs[listener]
}

// find returns the newest process named name, or nil.
func (l *Launcher) find(name string) *running {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.procs) - 1; i >= 0; i-- {
		if l.procs[i].proc.Name == name {
			return l.procs[i]
		}
	}
	return nil
}

func (r *running) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Proc returns the description of the process named name, to start it
// again after it stopped.
func (l *Launcher) Proc(name string) (Proc, bool) {
	r := l.find(name)
	if r == nil {
		return Proc{}, false
	}
	return r.proc, true
}

// Pid returns the pid of the process named name (0 when unknown).
func (l *Launcher) Pid(name string) int {
	r := l.find(name)
	if r == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Signal sends sig to the process named name.
func (l *Launcher) Signal(name string, sig os.Signal) error {
	r := l.find(name)
	if r == nil {
		return fmt.Errorf("no process %q", name)
	}
	if r.exited() {
		return fmt.Errorf("%s has exited", name)
	}
	return r.cmd.Process.Signal(sig)
}

// Wait waits up to timeout for the process named name to exit and returns
// its exit error (nil for exit status 0).
func (l *Launcher) Wait(name string, timeout time.Duration) error {
	r := l.find(name)
	if r == nil {
		return fmt.Errorf("no process %q", name)
	}
	select {
	case <-r.done:
		return r.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %v", name, timeout)
	}
}

// Stop stops the process named name with SIGTERM, then SIGKILL after
// StopTimeout, and returns its exit error.
func (l *Launcher) Stop(name string) error {
	r := l.find(name)
	if r == nil {
		return fmt.Errorf("no process %q", name)
	}
	return l.stop(r)
}

func (l *Launcher) stop(r *running) error {
	if r.exited() {
		return nil
	}
	timeout := l.StopTimeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		return r.err
	case <-time.After(timeout):
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.done
		return fmt.Errorf("%s did not stop within %v; killed", r.proc.Name, timeout)
	}
}
