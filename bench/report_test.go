package bench

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestReport(t *testing.T) {
	rep := &Report{Conditions: Conditions{CPUs: 2, CPUModel: "test CPU", Rounds: 2, Rate: 1000, Threads: 2, Conns: 64}}
	for _, x := range []struct {
		name     string
		rps, p99 []float64
	}{
		{TargetNginx, []float64{10000, 12000}, []float64{2, 4}},
		{TargetJWT, []float64{6000, 5000}, []float64{3, 5}},
	} {
		tg := &target{Name: x.name, Version: "1"}
		var rs []Round
		for i := range x.rps {
			rs = append(rs, Round{Round: i + 1, Wrk: WrkResult{RPS: x.rps[i], P99: 10}, Fixed: FixedRateResult{Latency: Percentiles{P50: 1, P99: x.p99[i]}}})
		}
		rep.Targets = append(rep.Targets, summarize(tg, rs))
	}
	md := rep.Markdown()
	// nginx: medians 11000 req/s, p99 3 ms; JWT: 5500 req/s (0.50×), p99 4 ms (1.33×).
	for _, want := range []string{"| nginx | 11000 | 1.00× |", "| petmesh-jwt | 5500 | 0.50× |", "| 1.33× |", "| 2 | petmesh-jwt | 5000 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	dir := t.TempDir()
	var out bytes.Buffer
	if err := rep.Write(dir, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != md {
		t.Error("Write printed something other than the markdown")
	}
	back, err := ReadReport(filepath.Join(dir, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	if tr, ok := back.Target(TargetJWT); !ok || tr.RPS != 5500 || len(tr.Rounds) != 2 {
		t.Fatalf("JSON round trip: %+v", tr)
	}
	f, err := os.Open(filepath.Join(dir, "bench.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if _, err := png.Decode(f); err != nil {
		t.Fatalf("bench.png: %v", err)
	}
}

func TestTraefikVersionFrom(t *testing.T) {
	dev := "Version:      dev\nCodename:     cheddar\nGo version:   go1.26.10\n"
	cases := []struct{ bin, out, want string }{
		{"/c/petmesh/traefik-v3.6.12/traefik", dev, "v3.6.12 (module build)"},
		{"/usr/bin/traefik", "Version:      3.6.12\nGo version:   go1.25.1\n", "3.6.12"},
		{"/usr/bin/traefik", dev, "unknown"},
		{"/usr/bin/traefik", "", "unknown"},
	}
	for _, c := range cases {
		if got := traefikVersionFrom(c.bin, c.out); got != c.want {
			t.Errorf("traefikVersionFrom(%q, %q) = %q; want %q", c.bin, c.out, got, c.want)
		}
	}
}
