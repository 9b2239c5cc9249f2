package launcher

import (
	"context"
	"fmt"
	"io"
	"os"
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
}

// Run starts the topology, prints how to use it, and stops everything when
// ctx ends or a process dies.
func Run(ctx context.Context, args []string, getenv func(string) string, out io.Writer) error {
	var o Options
	f := config.New("petmesh-dev", getenv, out)
	f.String(&o.BinDir, "bin", "PETMESH_BIN", "bin", "directory holding the petmesh binaries")
	f.String(&o.RunDir, "dir", "PETMESH_RUN_DIR", ".run", "run directory for logs, pids and data")
	f.String(&o.Registry, "registry", "REGISTRY", "builtin", "service registry and route store: builtin or consul")
	if err := f.Parse(args); err != nil {
		return err
	}
	if o.Registry != "builtin" && o.Registry != "consul" {
		return fmt.Errorf("-registry: want builtin or consul, got %q", o.Registry)
	}
	bin, err := filepath.Abs(o.BinDir)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(o.RunDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return err
	}
	l := &Launcher{BinDir: bin, RunDir: dir, Out: out}
	fmt.Fprintf(out, "petmesh: starting the topology (logs in %s)\n", filepath.Join(dir, "logs"))
	for _, p := range Topology(dir) {
		if err := l.Start(ctx, p); err != nil {
			_ = l.StopAll()
			return err
		}
	}
	fmt.Fprint(out, Banner())
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
