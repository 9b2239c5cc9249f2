package xds

import "time"

// debouncer decides when pending changes are rebuilt. A rebuild runs once
// no change has arrived for the quiet period, or maxDelay after the first
// pending change, whichever is first. The quiet period is short (quiet,
// 0 by default: an isolated change is rebuilt at once, the leading edge)
// for an isolated change, so that it converges fast, and long (busyQuiet)
// while changes arrive closer together than busyQuiet (a flapping
// endpoint, a deploy), so that a burst is coalesced into few rebuilds:
// under a burst it rebuilds like a plain busyQuiet debounce, plus at most
// the burst's first change.
//
// A debouncer is not safe for concurrent use (Run owns it).
type debouncer struct {
	quiet, busyQuiet, maxDelay time.Duration

	pending bool      // a change awaits a rebuild
	busy    bool      // the pending changes came in a burst
	first   time.Time // first pending change
	last    time.Time // latest change (pending or not)
}

// event records a change at now and returns when to rebuild.
func (d *debouncer) event(now time.Time) time.Time {
	if !d.last.IsZero() && now.Sub(d.last) < d.busyQuiet {
		d.busy = true
	}
	d.last = now
	if !d.pending {
		d.pending, d.first = true, now
	}
	return d.deadline()
}

// deadline is when the pending changes are due (meaningful when pending).
func (d *debouncer) deadline() time.Time {
	q := d.quiet
	if d.busy {
		q = d.busyQuiet
	}
	at := d.last.Add(q)
	if limit := d.first.Add(d.maxDelay); limit.Before(at) {
		return limit
	}
	return at
}

// rebuilt records that the pending changes were rebuilt (Run's timer,
// reset to deadline at every event, fired).
func (d *debouncer) rebuilt() {
	d.pending, d.busy = false, false
}
