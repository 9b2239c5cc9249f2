package syncsvc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/petmesh/petmesh/internal/testutil"
)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// startConsul runs a dev agent on free ports and waits for a leader.
func startConsul(t *testing.T) *consul.Client {
	t.Helper()
	bin := os.Getenv("PETMESH_CONSUL_BIN")
	if bin == "" {
		if os.Getenv("PETMESH_REQUIRE_REAL") == "1" {
			t.Fatal("PETMESH_CONSUL_BIN is not set and PETMESH_REQUIRE_REAL=1")
		}
		t.Skip("PETMESH_CONSUL_BIN is not set")
	}
	httpPort := freePort(t)
	testutil.Start(t, bin, testutil.StartOptions{Args: []string{"agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", httpPort, "-grpc-port", "-1", "-dns-port", "-1",
		"-serf-lan-port", freePort(t), "-serf-wan-port", freePort(t), "-server-port", freePort(t)}})
	cfg := consul.DefaultConfig()
	cfg.Address = "127.0.0.1:" + httpPort
	client, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, func() error {
		leader, err := client.Status().Leader()
		if err != nil {
			return err
		}
		if leader == "" {
			return fmt.Errorf("no leader yet")
		}
		return nil
	})
	return client
}

func TestConsulLocker(t *testing.T) {
	client := startConsul(t)
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
