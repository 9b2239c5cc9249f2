package api_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/api"
	"github.com/petmesh/petmesh/internal/jwtauth/jwttest"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

const (
	secIssuer   = "petmesh-api-security"
	secRegToken = "api-security-registration-token"
)

// operation is one method and path of the OpenAPI document.
type operation struct {
	method, path string
	public       bool // security: [] in the document
	registry     bool // under /v1/registry/: the registration token, not a user token
	write        bool
}

// operations lists every operation of the API's own OpenAPI document
// (merged with the registry's), so a new endpoint is covered here at once.
func operations(t *testing.T) []operation {
	t.Helper()
	doc, err := api.OpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	var ops []operation
	for p, methods := range d.Paths {
		for m, raw := range methods {
			switch m {
			case "get", "put", "post", "delete", "patch":
			default:
				continue
			}
			var op struct {
				Security *[]map[string][]string `json:"security"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatal(err)
			}
			ops = append(ops, operation{
				method: strings.ToUpper(m), path: p,
				public:   op.Security != nil && len(*op.Security) == 0,
				registry: strings.HasPrefix(p, "/v1/registry/"),
				// Dry-run validation changes nothing: viewers may call it.
				write: m != "get" && !strings.HasSuffix(p, ":validate"),
			})
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].path+ops[i].method < ops[j].path+ops[j].method })
	return ops
}

// concrete fills the path parameters with plausible values.
func concrete(p string) string {
	r := strings.NewReplacer("{name}", "pets", "{n}", "1", "{a}", "1", "{b}", "1", "{id}", "pets-1")
	return r.Replace(p)
}

// TestSecurityAPINeedsCredentials starts the real control plane and sends
// every operation of its OpenAPI document without credentials, with a
// garbage token, with HTTP Basic, with a token of the wrong kind and with
// a token lacking the role: only the documented public operations (health,
// readiness, metrics, the document itself) answer without a valid
// credential, and a refusal is 401 (403 for a missing role) with the JSON
// error and never reaches the handler (no 2xx, no 5xx).
func TestSecurityAPINeedsCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the control plane")
	}
	is := jwttest.New(t, secIssuer)
	jwks := httptest.NewServer(is.Keys.JWKSHandler())
	t.Cleanup(jwks.Close)
	admin, viewer, nobody := is.Token("sec-test", "admin", "viewer"), is.Token("sec-test", "viewer"), is.Token("sec-test", "pets")

	bin := tu.BuildBinary(t, "./controlplane/cmd/controlplane")
	dir := t.TempDir()
	cp := tu.Start(t, bin, tu.StartOptions{
		Args: []string{"-xds-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0", "-store-dir", filepath.Join(dir, "store"),
			"-jwks-url", jwks.URL, "-issuer", secIssuer},
		Env:       []string{"CONTROLPLANE_REGISTRATION_TOKEN=" + secRegToken},
		Listeners: []string{"xds", "api"},
	})
	base := cp.URL("api")
	hc := &http.Client{Timeout: 10 * time.Second}
	call := func(method, path, auth string) (int, http.Header, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	// The API verifies tokens with the JWKS, fetched in the background.
	tu.Eventually(t, 20*time.Second, func() error {
		if code, _, b := call("GET", "/v1/routes", "Bearer "+viewer); code != 200 {
			return &statusErr{code, string(b)}
		}
		return nil
	})

	ops := operations(t)
	if len(ops) < 15 {
		t.Fatalf("only %d operations in the OpenAPI document", len(ops))
	}
	for _, op := range ops {
		t.Run(op.method+" "+op.path, func(t *testing.T) {
			path := concrete(op.path)
			if op.public {
				if code, _, b := call(op.method, path, ""); code == 401 || code == 403 || code >= 500 {
					t.Fatalf("public operation: %d %s", code, b)
				}
				return
			}
			type attempt struct {
				desc, auth string
				want       int
			}
			attempts := []attempt{
				{"no credentials", "", 401},
				{"garbage bearer", "Bearer not-a-token", 401},
				{"HTTP Basic", "Basic YWRtaW46YWRtaW4=", 401},
			}
			if op.registry {
				// Users, even admins, cannot register instances: only the
				// registration token can.
				attempts = append(attempts, attempt{"admin user token", "Bearer " + admin, 401})
			} else {
				attempts = append(attempts,
					attempt{"registration token", "Bearer " + secRegToken, 401},
					attempt{"token without a role", "Bearer " + nobody, 403})
				if op.write {
					attempts = append(attempts, attempt{"viewer writes", "Bearer " + viewer, 403})
				}
			}
			for _, a := range attempts {
				code, hdr, b := call(op.method, path, a.auth)
				if code != a.want {
					t.Errorf("%s: %d %s, want %d", a.desc, code, b, a.want)
					continue
				}
				if code == 401 && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("%s: 401 without a Bearer challenge", a.desc)
				}
				var e struct {
					Error struct{ Code, Message string }
				}
				if err := json.Unmarshal(b, &e); err != nil || e.Error.Code == "" {
					t.Errorf("%s: not the JSON error shape: %s", a.desc, b)
				}
				if strings.Contains(string(b), secRegToken) || strings.Contains(string(b), admin) {
					t.Errorf("%s: the response echoes a credential", a.desc)
				}
			}
		})
	}
	out := cp.Output()
	for _, s := range []string{secRegToken, admin, viewer, nobody} {
		if strings.Contains(out, s) {
			t.Fatal("the control plane's log holds a credential")
		}
	}
}

// TestSecurityControlPlaneRefusesToStartWithoutCredentials: with the
// defaults (no registration token, no JWKS) the real control plane does not
// start; it names the missing flags.
func TestSecurityControlPlaneRefusesToStartWithoutCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the control plane")
	}
	bin := tu.BuildBinary(t, "./controlplane/cmd/controlplane")
	cmd := exec.Command(bin, "-xds-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0", "-store-dir", t.TempDir())
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("the control plane started without credentials:\n%s", out)
	}
	if err == nil {
		t.Fatalf("exit 0 without credentials:\n%s", out)
	}
	for _, flag := range []string{"-registration-token-file", "-jwks-url"} {
		if !strings.Contains(string(out), flag) {
			t.Errorf("the error does not name %s:\n%s", flag, out)
		}
	}
}

type statusErr struct {
	code int
	body string
}

func (e *statusErr) Error() string { return http.StatusText(e.code) + ": " + e.body }
