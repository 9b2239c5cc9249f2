package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const scaleOutput = `goos: linux
goarch: amd64
pkg: github.com/petmesh/petmesh/controlplane/xds
cpu: Test CPU 9000
BenchmarkScale/proxies=100/endpoints=30-2         	       2	 403222562 ns/op	         5.000 client-cpu-ms/change	        22.48 cpu-ms/change	        48.81 endpoint-ack-p50-ms	        77.34 endpoint-ack-p99-ms	        30.00 endpoints	         5.333 heap-MB	        24.91 loadavg-1m	       100.0 proxies	        39.55 route-ack-p50-ms	        97.19 route-ack-p99-ms	        34.15 rss-MB	        34.15 rss-peak-MB	         0.1292 sync-cpu-s	         0.3681 sync-s
BenchmarkConvergence/proxies=100/clients=inproc-2 	      10	 1 ns/op	 3.0 route-ack-p50-ms
PASS
`

func TestControlPlaneReport(t *testing.T) {
	lines, cpu, err := ParseGoBench(strings.NewReader(scaleOutput))
	if err != nil {
		t.Fatal(err)
	}
	if cpu != "Test CPU 9000" || len(lines) != 2 || lines[0].Name != "Scale/proxies=100/endpoints=30" || lines[0].N != 2 ||
		lines[0].Metrics["route-ack-p99-ms"] != 97.19 || lines[1].Name != "Convergence/proxies=100/clients=inproc" {
		t.Fatalf("parsed %q %+v", cpu, lines)
	}

	dir := t.TempDir()
	in := filepath.Join(dir, "scale.txt")
	if err := os.WriteFile(in, []byte(scaleOutput), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	if err := Main(t.Context(), []string{"controlplane", "-in", in, "-out", dir}, &out, &errs); err != nil {
		t.Fatalf("%v: %s", err, errs.String())
	}
	want := "| 100 | 30 | 4 | 40 / 97 | 49 / 77 | 22 | 0.4 (0.1) | 5.3 | 34 (34) | 24.9 |"
	if !strings.Contains(out.String(), want) {
		t.Fatalf("table lacks %q:\n%s", want, out.String())
	}
	raw, err := os.ReadFile(filepath.Join(dir, "controlplane.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep ControlPlaneReport
	if err := json.Unmarshal(raw, &rep); err != nil || len(rep.Results) != 1 || rep.CPUModel != "Test CPU 9000" {
		t.Fatalf("controlplane.json: %v %+v", err, rep)
	}

	empty := filepath.Join(dir, "empty.txt")
	if err := os.WriteFile(empty, []byte("PASS\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Main(t.Context(), []string{"controlplane", "-in", empty, "-out", dir}, &out, &errs); err == nil || !strings.Contains(err.Error(), "no BenchmarkScale results") {
		t.Fatalf("empty input: %v", err)
	}
}
