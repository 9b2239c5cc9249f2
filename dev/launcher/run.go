package launcher

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/petmesh/petmesh/internal/config"
)

// Options of a dev run.
type Options struct {
	BinDir string
	RunDir string
	// Registry is "builtin" or "consul".
	Registry string
	// ConsulBin is the consul binary used with Registry "consul"; empty
	// means an agent already runs at Addrs.Consul (tests start their own).
	ConsulBin string
	// Addrs are the listener addresses; the zero value means DevAddrs.
	Addrs Addrs
}

func (o Options) addrs() Addrs {
	if o.Addrs == (Addrs{}) {
		return DevAddrs()
	}
	return o.Addrs
}

// Run starts the topology, prints how to use it, and stops everything when
// ctx ends or a process dies.
func Run(ctx context.Context, args []string, getenv func(string) string, out io.Writer) error {
	var o Options
	f := config.New("petmesh-dev", getenv, out)
	f.String(&o.BinDir, "bin", "PETMESH_BIN", "bin", "directory holding the petmesh binaries")
	f.String(&o.RunDir, "dir", "PETMESH_RUN_DIR", ".run", "run directory for logs, pids and data")
	f.String(&o.Registry, "registry", "REGISTRY", "builtin", "service registry and route store: builtin or consul")
	f.String(&o.ConsulBin, "consul-bin", "PETMESH_CONSUL_BIN", "", "consul binary for -registry consul (make run builds it with scripts/tool.sh consul)")
	if err := f.Parse(args); err != nil {
		return err
	}
	if o.Registry != "builtin" && o.Registry != "consul" {
		return fmt.Errorf("-registry: want builtin or consul, got %q", o.Registry)
	}
	if o.Registry == "consul" && o.ConsulBin == "" {
		return fmt.Errorf("-consul-bin: required with -registry consul")
	}
	bin, err := filepath.Abs(o.BinDir)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(o.RunDir)
	if err != nil {
		return err
	}
	o.BinDir, o.RunDir = bin, dir
	if err := Prepare(dir); err != nil {
		return err
	}
	l := &Launcher{BinDir: bin, RunDir: dir, Out: out}
	fmt.Fprintf(out, "petmesh: starting the topology (logs in %s)\n", filepath.Join(dir, "logs"))
	for _, p := range Topology(o) {
		if err := l.Start(ctx, p); err != nil {
			_ = l.StopAll()
			return err
		}
	}
	fmt.Fprint(out, Banner(o))
	exited := l.Exited()
	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "petmesh: stopping")
	case msg := <-exited:
		fmt.Fprintln(out, "petmesh:", msg, "- stopping everything")
	}
	stopErr := l.StopAll()
	// Give the OS a moment to release the ports before a quick restart.
	time.Sleep(100 * time.Millisecond)
	return stopErr
}
