package client_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/controlplane/xds/xdstest"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/certtest"
	"github.com/petmesh/petmesh/internal/xds/client"
)

const (
	goodToken  = "good-xds-token-0123456789"
	otherToken = "other-xds-token-0123456789"
	wrongToken = "wrong-xds-token-0123456789"
)

func writeToken(t testing.TB, path, tok string) {
	t.Helper()
	// A different size or a later mtime marks the change; write to a
	// temporary file and rename, as secret mounts do.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startAuthCP runs the real control plane with -xds-token-file's
// interceptors (and TLS when certFile is set).
func startAuthCP(t *testing.T, certFile, keyFile string) (*realCP, *xds.TokenAuth) {
	t.Helper()
	tokens := filepath.Join(t.TempDir(), "xds-tokens")
	if err := os.WriteFile(tokens, []byte("# accepted xDS tokens\n"+goodToken+"\n"+otherToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	auth, err := xds.NewTokenAuth(xds.TokenAuthOptions{File: tokens})
	if err != nil {
		t.Fatal(err)
	}
	opts := auth.ServerOptions()
	if certFile != "" {
		o, err := xds.ServerTLS(certFile, keyFile, nil)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, o)
	}
	return startRealCP(t, opts...), auth
}

// refused waits until the client's streams have been refused with
// codes.Unauthenticated at least n times (reconnects counted by the
// client: it keeps retrying with backoff).
func refused(t *testing.T, p *proxy, n float64) {
	t.Helper()
	tu.Eventually(t, 10*time.Second, func() error {
		err := p.c.StreamError()
		if status.Code(err) != codes.Unauthenticated {
			return fmt.Errorf("stream error %v, want Unauthenticated", err)
		}
		if r := metric(t, p.prom, "petmesh_xds_reconnects_total", nil); r < n {
			return fmt.Errorf("%v reconnect attempts, want at least %v", r, n)
		}
		return nil
	})
}

// TestTokenAuth: the real control plane with a token file, real clients
// over a loopback socket, for both ADS variants.
func TestTokenAuth(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprintf("delta=%v", delta), func(t *testing.T) {
			cp, _ := startAuthCP(t, "", "")
			dir := t.TempDir()

			t.Run("no token: Unauthenticated, retried with backoff, nothing applied", func(t *testing.T) {
				p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("anon"), Delta: delta})
				refused(t, p, 3)
				if n := p.applies(); n != 0 {
					t.Fatalf("%d snapshots applied without a token", n)
				}
				if _, ok := cp.Server.Proxy("edge~anon"); ok {
					t.Fatal("the control plane knows a node whose stream it refused")
				}
			})
			t.Run("wrong token refused", func(t *testing.T) {
				f := filepath.Join(dir, "wrong")
				writeToken(t, f, wrongToken)
				p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("wrong"), TokenFile: f, Delta: delta})
				refused(t, p, 2)
				if n := p.applies(); n != 0 {
					t.Fatalf("%d snapshots applied with a wrong token", n)
				}
				if msg := status.Convert(p.c.StreamError()).Message(); !strings.Contains(msg, "invalid xds token") {
					t.Errorf("refusal %q, want it to say the token is invalid", msg)
				}
			})
			t.Run("right token works; a rotated bad token keeps the last good config; fixed, it reconnects", func(t *testing.T) {
				f := filepath.Join(dir, "good")
				writeToken(t, f, goodToken)
				p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("good"), TokenFile: f, Delta: delta})
				st := xdstest.Synced(t, cp.Server, p.c, "edge~good")
				before := p.c.Current()
				if len(before.Listeners) == 0 || len(before.Clusters) == 0 {
					t.Fatalf("synced without listeners or clusters: %d, %d", len(before.Listeners), len(before.Clusters))
				}
				applied := p.applies()

				// The token file now holds a refused token; the control
				// plane restarts: the client is refused on reconnect and
				// keeps serving what it had.
				writeToken(t, f, wrongToken+"-rotated")
				r0 := metric(t, p.prom, "petmesh_xds_reconnects_total", nil)
				cp.Restart(t)
				refused(t, p, r0+2)
				if n := p.applies(); n != applied {
					t.Fatalf("%d snapshots applied while refused, want none", n-applied)
				}
				if got := p.c.Current(); len(got.Listeners) != len(before.Listeners) || len(got.Clusters) != len(before.Clusters) {
					t.Fatalf("state changed while refused: %d listeners %d clusters, had %d and %d",
						len(got.Listeners), len(got.Clusters), len(before.Listeners), len(before.Clusters))
				}
				if metric(t, p.prom, "petmesh_xds_connected", nil) != 0 {
					t.Fatal("petmesh_xds_connected is 1 while refused")
				}

				// The other accepted token: read again on change, no restart.
				writeToken(t, f, otherToken)
				xdstest.Synced(t, cp.Server, p.c, "edge~good")
				if v := p.c.Versions(); v[st.Types[0].TypeURL] == "" {
					t.Fatal("no version after reconnecting")
				}
			})
		})
	}
}

// TestTLS: the real control plane serving TLS with a certificate of a test
// CA (and tokens); clients verifying it with the CA file connect, by IP
// and by a -xds-server-name; a client with the system roots or plaintext
// does not.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certs := certtest.WriteServer(t, dir)
	caFile := certs.CA
	cp, _ := startAuthCP(t, certs.Cert, certs.Key)
	tok := filepath.Join(dir, "token")
	writeToken(t, tok, goodToken)

	t.Run("CA file, address checked against the IP SAN", func(t *testing.T) {
		p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("tls-ip"), TokenFile: tok, CAFile: caFile})
		xdstest.Synced(t, cp.Server, p.c, "edge~tls-ip")
	})
	t.Run("CA file and server name, delta", func(t *testing.T) {
		p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("tls-name"), TokenFile: tok, CAFile: caFile, ServerName: certtest.ServerName, Delta: true})
		xdstest.Synced(t, cp.Server, p.c, "edge~tls-name")
	})
	t.Run("a server name the certificate does not hold is refused", func(t *testing.T) {
		p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("tls-badname"), TokenFile: tok, CAFile: caFile, ServerName: "other.petmesh.test"})
		tu.Eventually(t, 10*time.Second, func() error {
			if err := p.c.StreamError(); err == nil || !strings.Contains(err.Error(), "certificate") {
				return fmt.Errorf("stream error %v, want a certificate error", err)
			}
			return nil
		})
		if p.applies() != 0 {
			t.Fatal("applied a snapshot over an unverified connection")
		}
	})
	t.Run("system roots do not know the test CA", func(t *testing.T) {
		p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("tls-sys"), TokenFile: tok, TLS: true})
		tu.Eventually(t, 10*time.Second, func() error {
			if err := p.c.StreamError(); err == nil || !strings.Contains(err.Error(), "certificate") {
				return fmt.Errorf("stream error %v, want a certificate error", err)
			}
			return nil
		})
	})
	t.Run("plaintext to a TLS server gets nothing", func(t *testing.T) {
		p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("plain"), TokenFile: tok})
		tu.Eventually(t, 10*time.Second, func() error {
			if metric(t, p.prom, "petmesh_xds_reconnects_total", nil) < 2 {
				return fmt.Errorf("stream error %v; waiting for two failed attempts", p.c.StreamError())
			}
			return nil
		})
		if p.applies() != 0 {
			t.Fatal("applied a snapshot over plaintext to a TLS server")
		}
	})
}
