package xds

import (
	"testing"
	"time"
)

// simulate feeds change events at the given offsets to a debouncer and
// returns the offsets of the rebuilds, as Run's timer would fire them.
func simulate(d *debouncer, events []time.Duration) []time.Duration {
	t0 := time.Unix(1_700_000_000, 0)
	var rebuilds []time.Duration
	var timer time.Time // zero: stopped
	fire := func(until time.Duration) {
		for !timer.IsZero() && timer.Sub(t0) <= until {
			d.rebuilt()
			rebuilds = append(rebuilds, timer.Sub(t0))
			timer = time.Time{}
		}
	}
	for _, e := range events {
		fire(e)
		timer = d.event(t0.Add(e))
	}
	fire(time.Hour)
	return rebuilds
}

func every(gap, span time.Duration) []time.Duration {
	var out []time.Duration
	for t := time.Duration(0); t < span; t += gap {
		out = append(out, t)
	}
	return out
}

func TestDebouncer(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		desc     string
		quiet    time.Duration
		plain    bool // no busy quiet period
		events   []time.Duration
		rebuilds int
		first    time.Duration // offset of the first rebuild
	}{
		{desc: "default: isolated change rebuilt at once", quiet: DefaultQuietPeriod, events: []time.Duration{0}, rebuilds: 1, first: 0},
		{desc: "default: isolated changes each rebuilt at once", quiet: DefaultQuietPeriod, events: []time.Duration{0, 300 * ms, 600 * ms}, rebuilds: 3, first: 0},
		{desc: "default: a second change within the busy period waits for the burst to end", quiet: DefaultQuietPeriod, events: []time.Duration{0, 10 * ms}, rebuilds: 2, first: 0},
		{desc: "default: flap every 50ms for 3s: like a 100ms debounce plus the first change", quiet: DefaultQuietPeriod, events: every(50*ms, 3*time.Second), rebuilds: 4, first: 0},
		{desc: "default: flap every 10ms for 3s: once per max delay plus the first change", quiet: DefaultQuietPeriod, events: every(10*ms, 3*time.Second), rebuilds: 4, first: 0},
		{desc: "isolated change rebuilt after the short quiet period", quiet: 20 * ms, events: []time.Duration{0}, rebuilds: 1, first: 20 * ms},
		{desc: "two changes within the quiet period coalesce", quiet: 20 * ms, events: []time.Duration{0, 10 * ms}, rebuilds: 1, first: 110 * ms},
		{desc: "isolated changes each rebuilt fast", quiet: 20 * ms, events: []time.Duration{0, 300 * ms, 600 * ms}, rebuilds: 3, first: 20 * ms},
		{desc: "flap every 10ms for 3s: once per max delay", quiet: 20 * ms, events: every(10*ms, 3*time.Second), rebuilds: 3, first: time.Second},
		{desc: "flap every 50ms for 3s: like a 100ms debounce plus the first change", quiet: 20 * ms, events: every(50*ms, 3*time.Second), rebuilds: 4, first: 20 * ms},
		{desc: "same flap with a plain 20ms debounce: a push storm", quiet: 20 * ms, plain: true, events: every(50*ms, 3*time.Second), rebuilds: 60, first: 20 * ms},
		{desc: "same flap with a plain 100ms debounce", quiet: 100 * ms, events: every(50*ms, 3*time.Second), rebuilds: 3, first: time.Second},
		{desc: "changes 150ms apart are each rebuilt (as with a plain 100ms debounce)", quiet: 20 * ms, events: every(150*ms, 3*time.Second), rebuilds: 20, first: 20 * ms},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			d := &debouncer{quiet: tc.quiet, busyQuiet: max(tc.quiet, 100*ms), maxDelay: time.Second}
			if tc.plain {
				d.busyQuiet = tc.quiet
			}
			got := simulate(d, tc.events)
			if len(got) != tc.rebuilds || got[0] != tc.first {
				t.Fatalf("rebuilds at %v, want %d starting at %v", got, tc.rebuilds, tc.first)
			}
		})
	}
}
