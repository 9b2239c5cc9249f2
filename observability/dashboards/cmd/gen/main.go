// Command gen writes petmesh's Grafana dashboards as JSON:
//
//	go run ./observability/dashboards/cmd/gen [-out observability/grafana/dashboards]
//
// It removes generated files (*.json) that no dashboard produces any more.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/petmesh/petmesh/observability/dashboards"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	out := fs.String("out", filepath.Join("observability", "grafana", "dashboards"), "directory the dashboard JSON files are written to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	files, err := dashboards.Render()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", *out, err)
	}
	old, err := filepath.Glob(filepath.Join(*out, "*.json"))
	if err != nil {
		return fmt.Errorf("list %s: %w", *out, err)
	}
	for _, p := range old {
		if _, keep := files[filepath.Base(p)]; !keep {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove stale %s: %w", p, err)
			}
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(*out, name), b, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}
