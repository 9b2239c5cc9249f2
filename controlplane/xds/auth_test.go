package xds_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/controlplane/xds/xdstest"
)

func TestParseTokens(t *testing.T) {
	tests := []struct {
		desc, in string
		want     []xds.Token
		wantErr  string
	}{
		{desc: "tokens, comments and blank lines", in: "# xds\n\n  aaaaaaaaaaaaaaaa  \nbbbbbbbbbbbbbbbbbbbb\n",
			want: []xds.Token{{Value: "aaaaaaaaaaaaaaaa", Nodes: []string{}}, {Value: "bbbbbbbbbbbbbbbbbbbb", Nodes: []string{}}}},
		{desc: "node patterns after the token", in: "aaaaaaaaaaaaaaaa edge~* \tsidecar~pets~*\n",
			want: []xds.Token{{Value: "aaaaaaaaaaaaaaaa", Nodes: []string{"edge~*", "sidecar~pets~*"}}}},
		{desc: "empty file", in: "\n# nothing\n", wantErr: "no token"},
		{desc: "short token names its line", in: "aaaaaaaaaaaaaaaa\nshort\n", wantErr: "line 2: token shorter than 16"},
		{desc: "a space cuts a token short", in: "aaaaaaaa aaaaaaaaaaaa\n", wantErr: "line 1: token shorter than 16"},
		{desc: "control character", in: "aaaaaaaaaaaaaaaa\x01\n", wantErr: "line 1: token must be printable ASCII"},
		{desc: "bad node pattern names its line", in: "# one\naaaaaaaaaaaaaaaa edge~[\n", wantErr: `line 2: node pattern "edge~["`},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := xds.ParseTokens([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("tokens %q, want %q", got, tc.want)
			}
		})
	}
}

const (
	tokA = "token-a-0123456789abcdef"
	tokB = "token-b-0123456789abcdef"
)

func TestTokenAuthAuthorize(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte(tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	reg := prometheus.NewRegistry()
	a, err := xds.NewTokenAuth(xds.TokenAuthOptions{File: file, Registerer: reg, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctxWith := func(vals ...string) context.Context {
		md := metadata.MD{}
		for _, v := range vals {
			md.Append("authorization", v)
		}
		return metadata.NewIncomingContext(context.Background(), md)
	}
	tests := []struct {
		desc string
		ctx  context.Context
		ok   bool
	}{
		{desc: "no metadata", ctx: context.Background()},
		{desc: "no authorization", ctx: ctxWith()},
		{desc: "right token", ctx: ctxWith("Bearer " + tokA), ok: true},
		{desc: "scheme is case-insensitive", ctx: ctxWith("bearer " + tokA), ok: true},
		{desc: "wrong token", ctx: ctxWith("Bearer " + tokB)},
		{desc: "token prefix", ctx: ctxWith("Bearer " + tokA[:20])},
		{desc: "token without scheme", ctx: ctxWith(tokA)},
		{desc: "basic scheme", ctx: ctxWith("Basic " + tokA)},
		{desc: "two authorization values", ctx: ctxWith("Bearer "+tokA, "Bearer "+tokA)},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			err := a.Authorize(tc.ctx)
			if tc.ok != (err == nil) {
				t.Fatalf("Authorize: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && status.Code(err) != codes.Unauthenticated {
				t.Fatalf("code %v, want Unauthenticated", status.Code(err))
			}
		})
	}

	// Rotation: the file gains token B and loses A; read again once the
	// check interval passed.
	if err := os.WriteFile(file, []byte("# rotated\n"+tokB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Authorize(ctxWith("Bearer " + tokB)); err == nil {
		t.Fatal("the new token was accepted before the reload interval")
	}
	now = now.Add(2 * time.Second)
	if err := a.Authorize(ctxWith("Bearer " + tokB)); err != nil {
		t.Fatalf("rotated token refused: %v", err)
	}
	if err := a.Authorize(ctxWith("Bearer " + tokA)); err == nil {
		t.Fatal("a removed token is still accepted")
	}
	// An invalid file keeps the previous tokens.
	if err := os.WriteFile(file, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Second)
	if err := a.Authorize(ctxWith("Bearer " + tokB)); err != nil {
		t.Fatalf("an invalid file dropped the tokens: %v", err)
	}
	if got := sample(t, reg, "petmesh_xds_auth_failures_total", "invalid"); got < 4 {
		t.Errorf("auth failures {reason=invalid} = %v, want at least 4", got)
	}
}

func TestNewTokenAuthErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("# none\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ desc, file, want string }{
		{"no file name", "", "token file is required"},
		{"missing file", filepath.Join(dir, "missing"), "no such file"},
		{"no token", empty, "no token"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := xds.NewTokenAuth(xds.TokenAuthOptions{File: tc.file}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// TestAuthInterceptorOnServe: the real xDS server with the interceptors,
// a raw ADS stream over a loopback socket: refused without or with a
// wrong token before any response, answered with the right one.
func TestAuthInterceptorOnServe(t *testing.T) {
	conn := authServer(t, tokA+"\n")
	for _, tc := range []struct {
		desc, auth string
		code       codes.Code
	}{
		{"no token", "", codes.Unauthenticated},
		{"wrong token", "Bearer " + tokB, codes.Unauthenticated},
		{"right token", "Bearer " + tokA, codes.OK},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			resp, err := firstResponse(t, conn, tc.auth, xdstest.EdgeNode("raw"))
			if status.Code(err) != tc.code {
				t.Fatalf("Recv: %v, want code %v", err, tc.code)
			}
			if tc.code == codes.OK && len(resp.GetResources()) == 0 {
				t.Fatal("no clusters in the response")
			}
		})
	}
}

// authServer starts the real xDS server behind a TokenAuth of a token
// file with content, and returns a client connection to it.
func authServer(t *testing.T, content string) *grpc.ClientConn {
	t.Helper()
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := xds.NewTokenAuth(xds.TokenAuthOptions{File: file})
	if err != nil {
		t.Fatal(err)
	}
	h := xdstest.Start(t, xdstest.Options{ServeOptions: a.ServerOptions()})
	conn, err := grpc.NewClient(h.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// firstResponse opens an ADS stream on conn with authorization auth
// (none when empty), asks for node's clusters and returns the first
// response or the stream's error.
func firstResponse(t *testing.T, conn *grpc.ClientConn, auth string, node *core.Node) (*discovery.DiscoveryResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if auth != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
	}
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A refused stream may already be closed: its Recv tells why.
	_ = st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	return st.Recv()
}

// TestAuthRevokesOpenStreams removes a token from the file while streams
// are open: Run's next check ends the stream that presented it with
// Unauthenticated ("xds token revoked") and counts it; a stream with a
// token still in the file goes on being served until that token is bound
// to other node patterns.
func TestAuthRevokesOpenStreams(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte(tokA+"\n"+tokB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	reg := prometheus.NewRegistry()
	a, err := xds.NewTokenAuth(xds.TokenAuthOptions{File: file, Registerer: reg, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	// The streams' deadline fails the test if nothing ends the stream.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() { _ = a.Run(ctx) }()
	h := xdstest.Start(t, xdstest.Options{ServeOptions: a.ServerOptions()})
	conn, err := grpc.NewClient(h.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	open := func(tok, node string) grpc.BidiStreamingClient[discovery.DiscoveryRequest, discovery.DiscoveryResponse] {
		t.Helper()
		sctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{Node: xdstest.EdgeNode(node), TypeUrl: resourcev3.ClusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatalf("first response on the %s stream: %v", node, err)
		}
		return st
	}
	stA, stB := open(tokA, "a"), open(tokB, "b")

	// Token A is removed; Run's next check (within a second) reloads it.
	if err := os.WriteFile(file, []byte("# A removed\n"+tokB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	_, err = stA.Recv()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "revoked") {
		t.Fatalf("the stream of the removed token: %v, want Unauthenticated, token revoked", err)
	}
	if got := sample(t, reg, "petmesh_xds_auth_failures_total", "revoked"); got != 1 {
		t.Errorf("auth failures {reason=revoked} = %v, want 1", got)
	}

	// The other stream is still served: a new subscription is answered.
	if err := stB.Send(&discovery.DiscoveryRequest{Node: xdstest.EdgeNode("b"), TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stB.Recv()
	if err != nil || resp.GetTypeUrl() != resourcev3.ListenerType {
		t.Fatalf("the stream of the kept token: %v %v, want a listener response", resp.GetTypeUrl(), err)
	}

	// Token B is bound to sidecar nodes: its open stream, which bound an
	// edge node under the old grant, is ended too.
	if err := os.WriteFile(file, []byte(tokB+" sidecar~*\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	if _, err = stB.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("the stream of the rebound token: %v, want Unauthenticated", err)
	}
	if got := sample(t, reg, "petmesh_xds_auth_failures_total", "revoked"); got != 2 {
		t.Errorf("auth failures {reason=revoked} = %v, want 2", got)
	}
}

// TestAuthTokenBoundToNodes: a token followed by node id patterns serves
// only the nodes that match them; other nodes get PermissionDenied on
// their first request, before they appear among the proxies.
func TestAuthTokenBoundToNodes(t *testing.T) {
	conn := authServer(t, tokA+" edge~*\n"+tokB+"\n")
	for _, tc := range []struct {
		desc, token string
		node        *core.Node
		code        codes.Code
	}{
		{"bound token, matching edge node", tokA, xdstest.EdgeNode("e1"), codes.OK},
		{"bound token, sidecar node", tokA, sidecarNode("pets", "pets-1"), codes.PermissionDenied},
		{"unbound token, sidecar node", tokB, sidecarNode("pets", "pets-1"), codes.OK},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := firstResponse(t, conn, "Bearer "+tc.token, tc.node)
			if status.Code(err) != tc.code {
				t.Fatalf("Recv: %v, want code %v", err, tc.code)
			}
			if tc.code == codes.PermissionDenied && !strings.Contains(status.Convert(err).Message(), tc.node.GetId()) {
				t.Fatalf("message %q does not name the node", status.Convert(err).Message())
			}
		})
	}
}
