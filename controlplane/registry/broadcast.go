package registry

import (
	"context"
	"sync"
)

// broadcaster fans snapshots out to watchers without ever blocking the
// publisher: each watcher has a one-slot channel and a newer snapshot
// replaces an unread older one. Identical consecutive snapshots are
// dropped. Safe for concurrent use.
type broadcaster struct {
	metrics *metrics

	mu   sync.Mutex
	last *Snapshot
	subs map[chan Snapshot]struct{}
}

func newBroadcaster(m *metrics) *broadcaster {
	return &broadcaster{metrics: m, subs: map[chan Snapshot]struct{}{}}
}

// publish records s as the current snapshot and offers it to every
// watcher, unless it equals the previous one. It reports whether s was new.
func (b *broadcaster) publish(s Snapshot) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last != nil && b.last.Equal(s) {
		return false
	}
	b.last = &s
	b.metrics.observe(s)
	for ch := range b.subs {
		b.offer(ch, s)
	}
	return true
}

// offer puts s into ch, replacing an unread snapshot. Called with b.mu
// held, so b is ch's only sender and the second send cannot block.
func (b *broadcaster) offer(ch chan Snapshot, s Snapshot) {
	select {
	case ch <- s:
		return
	default:
	}
	select {
	case <-ch:
		b.metrics.coalesced.Inc()
	default:
	}
	select {
	case ch <- s:
	default:
	}
}

// current returns the last published snapshot.
func (b *broadcaster) current() (Snapshot, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == nil {
		return Snapshot{}, false
	}
	return *b.last, true
}

// subscribe returns a channel fed until ctx is done, then closed.
func (b *broadcaster) subscribe(ctx context.Context) <-chan Snapshot {
	ch := make(chan Snapshot, 1)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	if b.last != nil {
		ch <- *b.last
	}
	b.metrics.watchers.Inc()
	b.mu.Unlock()
	context.AfterFunc(ctx, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.subs, ch)
		b.metrics.watchers.Dec()
		close(ch)
	})
	return ch
}
