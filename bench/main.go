package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// Main is benchrun's command line: flags → Config → Run → bench.json,
// bench.md and bench.png in -out. "benchrun controlplane -in FILE" turns
// saved BenchmarkScale output into controlplane.json and controlplane.md;
// "benchrun report -dir DIR" renders DIR/bench.json again.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "controlplane" {
		return controlPlaneMain(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "report" {
		return reportMain(args[1:], stdout, stderr)
	}
	fs := newFlagSet("benchrun", stderr)
	var cfg Config
	out := fs.String("out", "results/bench", "directory for bench.json, bench.md, bench.png (and profiles/)")
	targets := fs.String("targets", strings.Join(AllTargets, ","), "comma-separated targets to measure")
	fs.StringVar(&cfg.BinDir, "bin", "bin", "directory holding the petmesh binaries edge, sidecar and controlplane")
	fs.StringVar(&cfg.Traefik, "traefik", "", "Traefik binary (empty: Traefik is skipped)")
	fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds; every target is measured once per round")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "wrk duration per target and round")
	fs.DurationVar(&cfg.Warmup, "warmup", 3*time.Second, "wrk warm-up per target before the first round (0: none)")
	fs.IntVar(&cfg.Threads, "threads", 2, "wrk threads (-t)")
	fs.IntVar(&cfg.Conns, "conns", 64, "connections: wrk -c, and the fixed-rate load's")
	fs.IntVar(&cfg.Rate, "rate", 1000, "fixed-rate load, requests per second")
	fs.DurationVar(&cfg.RateDuration, "rate-duration", 0, "fixed-rate window per target and round (0: -duration)")
	profile := fs.Bool("profile", true, "save CPU and allocation profiles of the edge and the sidecar under load in <out>/profiles")
	fs.BoolVar(&cfg.Require, "require", false, "fail instead of skipping a peer whose binary is missing")
	fs.BoolVar(&cfg.KeepWorkDir, "keep", false, "keep the work directory (configs and logs of every process)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.Targets = nil
	for _, t := range strings.Split(*targets, ",") {
		if t = strings.TrimSpace(t); t != "" {
			cfg.Targets = append(cfg.Targets, t)
		}
	}
	if cfg.Rounds <= 0 || cfg.Duration < time.Second || cfg.Rate <= 0 || cfg.Threads <= 0 || cfg.Conns < cfg.Threads {
		return errors.New("want -rounds ≥ 1, -duration ≥ 1s, -rate ≥ 1, -threads ≥ 1 and -conns ≥ -threads")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if *profile {
		cfg.ProfileDir, cfg.ProfileRel = filepath.Join(*out, "profiles"), *out
	}
	cfg.Log = stderr
	if cfg.KeepWorkDir {
		d, err := os.MkdirTemp("", "petmesh-bench-")
		if err != nil {
			return err
		}
		cfg.WorkDir = d
		fmt.Fprintln(stderr, "work directory (kept):", d)
	}
	rep, err := Run(ctx, cfg)
	if err != nil {
		return err
	}
	return rep.Write(*out, stdout)
}

// reportMain renders bench.md and bench.png again from a bench.json
// (after a change of the report's layout; the figures are not touched).
func reportMain(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("benchrun report", stderr)
	dir := fs.String("dir", "results/bench", "directory holding bench.json; bench.md and bench.png are rewritten there")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rep, err := ReadReport(filepath.Join(*dir, "bench.json"))
	if err != nil {
		return err
	}
	return rep.Write(*dir, stdout)
}

// Write saves bench.json, bench.md and bench.png in dir and prints the
// markdown to w.
func (r *Report) Write(dir string, w io.Writer) error {
	f, err := os.Create(filepath.Join(dir, "bench.json"))
	if err != nil {
		return err
	}
	if err := r.WriteJSON(f); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	md := r.Markdown()
	if err := os.WriteFile(filepath.Join(dir, "bench.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := r.WritePNG(filepath.Join(dir, "bench.png")); err != nil {
		return err
	}
	_, err = io.WriteString(w, md)
	return err
}
