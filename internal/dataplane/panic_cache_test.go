package dataplane

import (
	"testing"
	"time"
)

// TestPanicStateCache checks when inPanic counts the endpoints again: on
// an availability change (availGen), when an ejection it saw ends, and
// after panicRecheck at the latest; otherwise it answers from its cache.
func TestPanicStateCache(t *testing.T) {
	cl := testClusterOf(t, 4)
	now := time.Unix(1000, 0).UnixNano()
	step := func(desc string, at int64, want bool) {
		t.Helper()
		if got := cl.inPanic(at); got != want {
			t.Fatalf("%s: in panic %v, want %v", desc, got, want)
		}
	}
	step("all healthy", now, false)

	// Three of four unhealthy without telling the cluster: the cached
	// answer stands until panicRecheck has passed.
	for _, ep := range cl.eps[1:] {
		ep.healthy.Store(false)
	}
	step("changed behind the cache", now+int64(time.Millisecond), false)
	step("after panicRecheck", now+panicRecheck, true)

	// A health check transition (availGen) is seen at once.
	now += panicRecheck
	for _, ep := range cl.eps {
		ep.healthy.Store(true)
	}
	cl.availGen.Add(1)
	step("healthy again, generation bumped", now, false)

	// Ejections put the cluster in panic; the first ejection's end is
	// seen at its deadline, without a generation change.
	for i, ep := range cl.eps[1:] {
		ep.ejectedUntil.Store(now + int64(time.Duration(100*(i+1))*time.Millisecond))
	}
	cl.availGen.Add(1)
	step("three of four ejected", now, true)
	step("before the first ejection ends", now+int64(99*time.Millisecond), true)
	step("two of four available once it ended", now+int64(100*time.Millisecond), false)
}
