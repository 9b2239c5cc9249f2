package dataplane

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPick measures one endpoint pick (round robin) of a cluster of n
// endpoints: all available, and in panic mode (a quarter available, under
// the default 50 % healthy_panic_threshold). The panic check counts the
// available endpoints only after an availability change, not per pick.
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		cl := testClusterOf(b, n)
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
