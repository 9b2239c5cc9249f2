package sidecar_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

const xdsToken = "sidecar-test-xds-token-0123456789"

// writeTestCA writes a CA and a server certificate for "xds.petmesh.test"
// (and 127.0.0.1) signed by it.
func writeTestCA(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sidecar test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "xds.petmesh.test"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		DNSNames: []string{"xds.petmesh.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("xds.pem", "CERTIFICATE", der), write("xds-key.pem", "EC PRIVATE KEY", keyDER)
}

// TestXDSTokenAndTLS: the real control plane binary with -xds-token-file
// and -xds-tls-cert-file, real sidecar binaries: one with the token, the
// CA and the server name gets its configuration, registers and is ready;
// one without the token is refused (logged by the control plane) and
// never becomes ready, nor registers. Both ADS variants are used.
func TestXDSTokenAndTLS(t *testing.T) {
	iss := newIssuer(t)
	dir := t.TempDir()
	caFile, certFile, keyFile := writeTestCA(t, dir)
	tokens := filepath.Join(dir, "xds-tokens")
	if err := os.WriteFile(tokens, []byte("# sidecars\n"+xdsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(dir, "xds-token")
	if err := os.WriteFile(own, []byte(xdsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tableFile := filepath.Join(dir, "table.yaml")
	if err := os.WriteFile(tableFile, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := tu.Start(t, tu.BuildBinary(t, "./controlplane/cmd/controlplane"), tu.StartOptions{
		Args: []string{
			"-xds-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0", "-debounce-quiet", "20ms", "-debounce-max", "200ms",
			"-store-dir", filepath.Join(dir, "store"), "-initial-table", tableFile,
			"-jwks-url", iss.jwksURL(), "-issuer", testIssuer, "-audience", "petmesh",
			"-xds-tls-cert-file", certFile, "-xds-tls-key-file", keyFile,
		},
		Env:       []string{"CONTROLPLANE_REGISTRATION_TOKEN=" + regToken, "CONTROLPLANE_XDS_TOKEN_FILE=" + tokens},
		Listeners: []string{"xds", "api"},
	})
	if strings.Contains(cp.Output(), "XDS UNAUTHENTICATED") {
		t.Fatal("the control plane warns that xDS is unauthenticated although -xds-token-file is set")
	}

	for _, delta := range []string{"true", "false"} {
		t.Run("delta="+delta, func(t *testing.T) {
			good := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-tls-" + delta, app: newApp(t, true), cp: cp,
				args: []string{"-xds-ca-file", caFile, "-xds-server-name", "xds.petmesh.test", "-xds-delta=" + delta},
				env:  []string{"SIDECAR_XDS_TOKEN_FILE=" + own}})
			bad := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-notoken-" + delta, app: newApp(t, true), cp: cp,
				args: []string{"-xds-ca-file", caFile, "-xds-server-name", "xds.petmesh.test", "-xds-delta=" + delta}})
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
