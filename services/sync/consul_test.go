package syncsvc

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil/consultest"
)

func TestConsulLocker(t *testing.T) {
	client := consultest.Start(t).Client()
	ctx := context.Background()
	a := &ConsulLocker{Client: client, Key: "petmesh/sync/test-leader", Holder: "a", SessionTTL: 10 * time.Second}
	b := &ConsulLocker{Client: client, Key: "petmesh/sync/test-leader", Holder: "b", SessionTTL: 10 * time.Second}

	lease, err := a.TryLock(ctx)
	if err != nil {
		t.Fatalf("a: %v", err)
	}
	if _, err := b.TryLock(ctx); !errors.Is(err, ErrLocked) {
		t.Fatalf("b while a holds: %v, want ErrLocked", err)
	}
	pair, _, err := client.KV().Get(a.Key, nil)
	if err != nil || pair == nil || string(pair.Value) != "a" || pair.Session == "" {
		t.Fatalf("lock key %+v %v", pair, err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lease.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("lost channel not closed after release")
	}
	leaseB, err := b.TryLock(ctx)
	if err != nil {
		t.Fatalf("b after release: %v", err)
	}
	// Destroying b's session (as Consul does when its TTL lapses) must
	// tell b that it lost the lock.
	pair, _, _ = client.KV().Get(b.Key, nil)
	if _, err := client.Session().Destroy(pair.Session, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-leaseB.Lost():
	case <-time.After(15 * time.Second):
		t.Fatal("lease not lost after its session was destroyed")
	}
	_ = leaseB.Release(ctx)
}
