package bench

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil"
)

// program finds name on PATH; when it is missing the test is skipped, or
// fails with PETMESH_REQUIRE_REAL=1.
func program(t *testing.T, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(testutil.EnvRequireReal) == "1" {
		t.Fatalf("%s not found and %s=1; %s", name, testutil.EnvRequireReal, hint)
	}
	t.Skipf("%s not found; %s", name, hint)
	return ""
}

// TestHarness runs the real harness for one round of 1s (wrk and the
// fixed-rate load) against the backend directly, every installed peer
// (nginx at least) and the three petmesh targets (real control plane,
// edge and sidecar binaries), then checks the written JSON, markdown and
// PNG. Peers other than nginx that are not installed are skipped unless
// PETMESH_REQUIRE_REAL=1; Traefik is included when PETMESH_TRAEFIK_BIN is set.
func TestHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real proxies")
	}
	hint := "make bench installs it (apt-get install wrk nginx-light haproxy caddy)"
	cfg := Config{
		Wrk:     program(t, "wrk", hint),
		Nginx:   program(t, "nginx", hint),
		Targets: []string{TargetDirect, TargetNginx, TargetPublic, TargetJWT, TargetMesh},
		Rounds:  1, Duration: time.Second, Warmup: 0, Rate: 200, RateDuration: time.Second,
		Threads: 2, Conns: 8,
		Require: os.Getenv(testutil.EnvRequireReal) == "1",
	}
	for _, peer := range []struct {
		name string
		bin  *string
	}{{TargetHAProxy, &cfg.HAProxy}, {TargetCaddy, &cfg.Caddy}} {
		if p, err := exec.LookPath(peer.name); err == nil || cfg.Require {
			*peer.bin = p
			cfg.Targets = append(cfg.Targets, peer.name)
		}
	}
	// Traefik is optional (a long build): measured when PETMESH_TRAEFIK_BIN
	// names it (export PETMESH_TRAEFIK_BIN=$(scripts/tool.sh traefik)).
	if p := os.Getenv("PETMESH_TRAEFIK_BIN"); p != "" {
		cfg.Traefik = p
		cfg.Targets = append(cfg.Targets, TargetTraefik)
	}
	bins := t.TempDir()
	for _, b := range []string{"edge", "sidecar", "controlplane"} {
		src := testutil.BuildBinary(t, "./"+b+"/cmd/"+b)
		if err := os.Symlink(src, filepath.Join(bins, b)); err != nil {
			t.Fatal(err)
		}
	}
	cfg.BinDir = bins
	var log bytes.Buffer
	cfg.Log = &log
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	out := t.TempDir()
	var md bytes.Buffer
	if err := rep.Write(out, &md); err != nil {
		t.Fatal(err)
	}

	got, err := ReadReport(filepath.Join(out, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Skipped) > 0 && cfg.Require {
		t.Fatalf("skipped with %s=1: %+v", testutil.EnvRequireReal, got.Skipped)
	}
	measured := map[string]bool{}
	for _, s := range got.Skipped {
		measured[s.Name] = true // skipped counts as accounted for
	}
	for _, tr := range got.Targets {
		measured[tr.Name] = true
		if len(tr.Rounds) != 1 {
			t.Errorf("%s: %d rounds, want 1", tr.Name, len(tr.Rounds))
			continue
		}
		r := tr.Rounds[0]
		if tr.RPS <= 0 || r.Wrk.Requests <= 0 || tr.WrkP99 <= 0 {
			t.Errorf("%s: wrk figures missing: %+v", tr.Name, r.Wrk)
		}
		if r.Wrk.Errors != 0 || r.Fixed.Errors != 0 {
			t.Errorf("%s: errors (wrk %d, fixed %d: %s)", tr.Name, r.Wrk.Errors, r.Fixed.Errors, r.Fixed.First)
		}
		if r.Fixed.Sent != 200 || r.Fixed.OK != 200 || tr.FixedP50 <= 0 || tr.FixedP99 < tr.FixedP50 {
			t.Errorf("%s: fixed-rate figures: sent %d ok %d p50 %v p99 %v", tr.Name, r.Fixed.Sent, r.Fixed.OK, tr.FixedP50, tr.FixedP99)
		}
		if tr.Name != TargetDirect && (tr.CPUPer1k <= 0 || tr.RSSMB <= 0) {
			t.Errorf("%s: proxy CPU %v ms/1k, RSS %v MB: want both > 0", tr.Name, tr.CPUPer1k, tr.RSSMB)
		}
		if tr.Version == "" || tr.Version == "unknown" {
			t.Errorf("%s: version %q", tr.Name, tr.Version)
		}
	}
	for _, n := range cfg.Targets {
		if !measured[n] {
			t.Errorf("target %s neither measured nor skipped", n)
		}
	}
	if got.Conditions.CPUs <= 0 || got.Conditions.CPUModel == "" || got.Conditions.LoadBefore == [3]float64{} && got.Conditions.LoadAfter == [3]float64{} {
		t.Errorf("conditions: %+v", got.Conditions)
	}

	mdFile, err := os.ReadFile(filepath.Join(out, "bench.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| nginx | ", "| 1.00× |", "| petmesh-mesh | ", "Load average before"} {
		if !strings.Contains(string(mdFile), want) {
			t.Errorf("bench.md lacks %q:\n%s", want, mdFile)
		}
	}
	f, err := os.Open(filepath.Join(out, "bench.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("bench.png: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 200 {
		t.Fatalf("bench.png is %v", b)
	}
}
