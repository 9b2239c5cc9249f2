package certtest_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"

	"github.com/petmesh/petmesh/internal/testutil/certtest"
)

// TestWriteServer: the server certificate loads with its key and verifies
// against the CA for the server name and 127.0.0.1, not for another name.
func TestWriteServer(t *testing.T) {
	f := certtest.WriteServer(t, t.TempDir())
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA certificate in the CA file")
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc, name string
		ok         bool
	}{
		{"server name", certtest.ServerName, true},
		{"loopback IP", "127.0.0.1", true},
		{"another name", "other.petmesh.test", false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: tc.name})
			if tc.ok != (err == nil) {
				t.Fatalf("verify for %q: %v, want ok=%v", tc.name, err, tc.ok)
			}
		})
	}
}
