// Package interop_test checks the control plane against an independent
// xDS client: grpc-go's own xDS implementation, in a separate process.
package interop_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/petmesh/petmesh/controlplane/registry"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

const regToken = "interop-registration-token-0123456789"

const table = `
routes:
  - name: echo
    match: {prefix: /}
    auth: {public: true}
    targets: [{service: echo}]
`

// backend is a real gRPC server whose health Check names it in the
// "server-id" trailer.
type backend struct {
	healthpb.UnimplementedHealthServer
	id string
}

func (b *backend) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if err := grpc.SetTrailer(ctx, metadata.Pairs("server-id", b.id)); err != nil {
		return nil, err
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func startBackend(t *testing.T, id string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, &backend{id: id})
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return ln.Addr().(*net.TCPAddr).Port
}

// calls collects the client's per-call lines.
type calls struct {
	mu    sync.Mutex
	lines []map[string]string
}

func (c *calls) since(n int) (int, map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	counts := map[string]int{}
	for _, l := range c.lines[min(n, len(c.lines)):] {
		if s := l["server"]; s != "" {
			counts[s]++
		} else {
			counts["error"]++
		}
	}
	return len(c.lines), counts
}

func TestGRPCXDSClientBalancesAndFollowsEndpoints(t *testing.T) {
	dir := t.TempDir()
	tableFile := filepath.Join(dir, "table.yaml")
	if err := os.WriteFile(tableFile, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	cpBin := tu.BuildBinary(t, "./controlplane/cmd/controlplane")
	cp := tu.Start(t, cpBin, tu.StartOptions{
		Args: []string{"-xds-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0", "-insecure-no-auth",
			"-store-dir", filepath.Join(dir, "store"), "-initial-table", tableFile, "-debounce-quiet", "20ms", "-debounce-max", "200ms"},
		Env:       []string{"CONTROLPLANE_REGISTRATION_TOKEN=" + regToken},
		Listeners: []string{"xds", "api"},
	})

	ctx := tu.Context(t)
	rc, err := registry.NewHTTPClient(cp.URL("api"), regToken)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"echo-1", "echo-2"} {
		port := startBackend(t, id)
		if err := rc.Register(ctx, registry.Registration{Service: "echo", ID: id, Address: "127.0.0.1", Port: port, Version: "v1", TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}

	bootstrap := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      cp.Addr("xds"),
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{
			"id":       resource.GRPCNodeID("interop", "client-1"),
			"metadata": map[string]any{resource.MetaProxyless: true},
		},
	}
	bfile := filepath.Join(dir, "bootstrap.json")
	b, _ := json.Marshal(bootstrap)
	if err := os.WriteFile(bfile, b, 0o600); err != nil {
		t.Fatal(err)
	}

	clientBin := tu.BuildBinary(t, "./controlplane/interop/cmd/xdsgrpcclient")
	cctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(cctx, clientBin, "-target", "xds:///echo")
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+bfile)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr safeBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := &calls{}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l map[string]string
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				got.mu.Lock()
				got.lines = append(got.lines, l)
				got.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-readDone
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("xdsgrpcclient stderr:\n%s", stderr.String())
		}
	})

	// Balanced across both backends.
	var mark int
	tu.Eventually(t, 30*time.Second, func() error {
		n, counts := got.since(0)
		if counts["echo-1"] == 0 || counts["echo-2"] == 0 {
			return fmt.Errorf("%d calls: %v", n, counts)
		}
		mark = n
		return nil
	})
	tu.Eventually(t, 10*time.Second, func() error {
		n, counts := got.since(mark)
		if n-mark < 100 {
			return fmt.Errorf("only %d calls", n-mark)
		}
		a, b := counts["echo-1"], counts["echo-2"]
		if a+b < 100 || a < (a+b)*3/10 || b < (a+b)*3/10 {
			return fmt.Errorf("unbalanced: %v", counts)
		}
		return nil
	})

	// Deregister one: traffic follows the endpoint change.
	if err := rc.Deregister(ctx, "echo-2"); err != nil {
		t.Fatal(err)
	}
	tu.Eventually(t, 15*time.Second, func() error {
		n, _ := got.since(0)
		mark = n
		return nil
	})
	tu.Eventually(t, 15*time.Second, func() error {
		n, counts := got.since(mark)
		if counts["echo-2"] > 0 || counts["error"] > 0 {
			_, _ = got.since(0)
			mark = n // restart the window: the change may not have arrived yet
			return fmt.Errorf("window still had %v", counts)
		}
		if counts["echo-1"] < 50 {
			return fmt.Errorf("only %v since the change", counts)
		}
		return nil
	})
}

// safeBuffer is a concurrency-safe bytes buffer for a child's stderr.
type safeBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}
