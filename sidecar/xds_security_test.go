package sidecar_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/certtest"
)

const xdsToken = "sidecar-test-xds-token-0123456789"

// startControlPlaneWith starts the real control plane binary on free
// loopback ports with the test table and issuer; args and env come after
// the defaults (a repeated flag replaces the default).
func startControlPlaneWith(t *testing.T, iss *issuer, args, env []string) *tu.Process {
	t.Helper()
	dir := t.TempDir()
	tableFile := filepath.Join(dir, "table.yaml")
	if err := os.WriteFile(tableFile, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	return tu.Start(t, tu.BuildBinary(t, "./controlplane/cmd/controlplane"), tu.StartOptions{
		Args: append([]string{
			"-xds-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0", "-debounce-quiet", "20ms", "-debounce-max", "200ms",
			"-store-dir", filepath.Join(dir, "store"), "-initial-table", tableFile,
			"-jwks-url", iss.jwksURL(), "-issuer", testIssuer,
		}, args...),
		Env:       append([]string{"CONTROLPLANE_REGISTRATION_TOKEN=" + regToken}, env...),
		Listeners: []string{"xds", "api"},
	})
}

// TestXDSTokenAndTLS: the real control plane binary with -xds-token-file
// and -xds-tls-cert-file, real sidecar binaries: one with the token, the
// CA and the server name gets its configuration, registers and is ready;
// one without the token is refused (logged by the control plane) and
// never becomes ready, nor registers. Both ADS variants are used.
func TestXDSTokenAndTLS(t *testing.T) {
	iss := newIssuer(t)
	dir := t.TempDir()
	certs := certtest.WriteServer(t, dir)
	tokens := filepath.Join(dir, "xds-tokens")
	if err := os.WriteFile(tokens, []byte("# sidecars\n"+xdsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(dir, "xds-token")
	if err := os.WriteFile(own, []byte(xdsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := startControlPlaneWith(t, iss,
		[]string{"-audience", "petmesh", "-xds-tls-cert-file", certs.Cert, "-xds-tls-key-file", certs.Key},
		[]string{"CONTROLPLANE_XDS_TOKEN_FILE=" + tokens})
	if strings.Contains(cp.Output(), "XDS UNAUTHENTICATED") {
		t.Fatal("the control plane warns that xDS is unauthenticated although -xds-token-file is set")
	}

	for _, delta := range []string{"true", "false"} {
		t.Run("delta="+delta, func(t *testing.T) {
			good := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-tls-" + delta, app: newApp(t, true), cp: cp,
				args: []string{"-xds-ca-file", certs.CA, "-xds-server-name", certtest.ServerName, "-xds-delta=" + delta},
				env:  []string{"SIDECAR_XDS_TOKEN_FILE=" + own}})
			bad := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-notoken-" + delta, app: newApp(t, true), cp: cp,
				args: []string{"-xds-ca-file", certs.CA, "-xds-server-name", certtest.ServerName, "-xds-delta=" + delta}})
			tu.Eventually(t, 15*time.Second, func() error {
				if code, err := statusOf(good.URL("admin")+"/readyz", nil); err != nil || code != http.StatusOK {
					return fmt.Errorf("sidecar with the token: readyz %d %v", code, err)
				}
				return nil
			})
			waitHealth(t, cp, "echo-tls-"+delta, registry.HealthPassing)
			tu.Eventually(t, 10*time.Second, func() error {
				if !strings.Contains(cp.Output(), "xds stream refused") {
					return fmt.Errorf("no refusal logged by the control plane yet")
				}
				if !strings.Contains(bad.Output(), "Unauthenticated") {
					return fmt.Errorf("the sidecar without a token does not log its refusal yet")
				}
				return nil
			})
			if code, _ := statusOf(bad.URL("admin")+"/readyz", nil); code != http.StatusServiceUnavailable {
				t.Fatalf("sidecar without a token: readyz %d, want 503", code)
			}
			if _, ok := instance(t, cp, "echo-notoken-"+delta); ok {
				t.Fatal("the sidecar without an xDS token registered (it has no configuration)")
			}
		})
	}
	for _, secret := range []string{xdsToken} {
		if strings.Contains(cp.Output(), secret) {
			t.Fatal("the control plane logged an xDS token")
		}
	}
}

// TestXDSUnauthenticatedWarning: without -xds-token-file the control plane
// still serves xDS (make run) and says loudly that it is open.
func TestXDSUnauthenticatedWarning(t *testing.T) {
	cp := startControlPlane(t, newIssuer(t))
	tu.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(cp.Output(), "XDS UNAUTHENTICATED") {
			return fmt.Errorf("no unauthenticated-xDS warning in the control plane's log")
		}
		return nil
	})
}
