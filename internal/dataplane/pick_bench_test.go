package dataplane

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkPick measures one endpoint pick (round robin) of a cluster of n
// endpoints: all available, and in panic mode (a quarter available, under
// the default 50 % healthy_panic_threshold). The panic check counts the
// available endpoints only after an availability change, not per pick.
func BenchmarkPick(b *testing.B) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	opts := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now, Rand: rand.Uint64N}
	for _, n := range []int{10, 1000, 10000} {
		urls := make([]string, n)
		for i := range urls {
			urls[i] = fmt.Sprintf("http://10.%d.%d.%d:8080", i>>16&255, i>>8&255, i&255)
		}
		cl, err := buildCluster(edsCluster("a"), loadAssignment(b, "a", urls...), nil, &opts, m)
		if err != nil {
			b.Fatal(err)
		}
		for _, mode := range []string{"healthy", "panic"} {
			for i, ep := range cl.eps {
				ep.healthy.Store(mode == "healthy" || i%4 == 0)
			}
			cl.availGen.Add(1) // as the health checker does on a transition
			if got, want := cl.inPanic(time.Now().UnixNano()), mode == "panic"; got != want {
				b.Fatalf("in panic %v, want %v", got, want)
			}
			b.Run(fmt.Sprintf("endpoints=%d/%s", n, mode), func(b *testing.B) {
				for b.Loop() {
					if cl.pick(nil) == nil {
						b.Fatal("no endpoint picked")
					}
				}
			})
		}
	}
}
