package petctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/petmesh/petmesh/controlplane/api"
	"github.com/petmesh/petmesh/controlplane/api/apitest"
	"github.com/petmesh/petmesh/controlplane/petctl"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/store"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/internal/httpx"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// ctlEnv is a real control-plane API (file store, built-in registry, xDS
// server with one connected edge) on 127.0.0.1:0, and tokens.
type ctlEnv struct {
	api                   string
	xds                   *xds.Server
	admin, viewer, nobody string
}

func startCtlEnv(t *testing.T) *ctlEnv {
	t.Helper()
	env := apitest.Start(t)
	edge, err := client.New(client.Config{
		Server: env.XDSAddr, Node: &core.Node{Id: "edge~e1", Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()},
		Apply:       func(context.Context, *client.Snapshot) error { return nil },
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		BackoffMin:  20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	env.Go(func(ctx context.Context) { _ = edge.Run(ctx) })
	tu.Eventually(t, 15*time.Second, func() error {
		if p, ok := env.XDS.Proxy("edge~e1"); !ok || !p.Synced {
			return errors.New("edge not synced")
		}
		return nil
	})
	return &ctlEnv{api: env.URL, xds: env.XDS, admin: env.Admin, viewer: env.Viewer, nobody: env.Nobody}
}

// run runs petctl in process with PETMESH_API and PETMESH_TOKEN set.
func (e *ctlEnv) run(t *testing.T, token string, args ...string) (int, string, string) {
	t.Helper()
	return runCtl(t, map[string]string{"PETMESH_API": e.api, "PETMESH_TOKEN": token}, args...)
}

func runCtl(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := petctl.Run(t.Context(), args, func(k string) string { return env[k] }, &out, &errb)
	return code, out.String(), errb.String()
}

func writeTable(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// canaryYAML is the default table with pets split 80/20 by version.
func canaryYAML(t *testing.T) string {
	t.Helper()
	return strings.Replace(string(routes.DefaultYAML), "    targets: [{service: pets}]\n",
		"    targets: [{service: pets, subset: v1, weight: 80}, {service: pets, subset: v2, weight: 20}]\n", 1)
}

const invalidYAML = `
routes:
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets, subset: v1, weight: 80}, {service: pets, subset: v2, weight: 10}]
  - name: re
    match: {regex: "(unclosed"}
    targets: [{service: pets}]
services:
  pets: {lb: maglev}
`

// mustCode fails unless the exit code is want.
func mustCode(t *testing.T, what string, code, want int, stdout, stderr string) {
	t.Helper()
	if code != want {
		t.Fatalf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", what, code, want, stdout, stderr)
	}
}

func mustMatch(t *testing.T, what, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(out) {
			t.Fatalf("%s: output does not match %q:\n%s", what, p, out)
		}
	}
}

func jsonOf[T any](t *testing.T, out string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("not JSON (%v):\n%s", err, out)
	}
	return v
}

// TestPetctlCommands runs every subcommand against a real API, in table
// and JSON output, in an order that builds a history.
func TestPetctlCommands(t *testing.T) {
	e := startCtlEnv(t)
	canary := writeTable(t, "canary.yaml", canaryYAML(t))

	t.Run("routes get", func(t *testing.T) {
		code, out, errOut := e.run(t, e.viewer, "routes", "get")
		mustCode(t, "get", code, 0, out, errOut)
		mustMatch(t, "get", out, `^# version 1 by seed at \S+: initial table\n`, `(?m)^routes:$`, `(?m)^\s+name: pets$`, `(?m)^services:$`)
		code, out, errOut = e.run(t, e.viewer, "-o", "json", "routes", "get")
		mustCode(t, "get -o json", code, 0, out, errOut)
		got := jsonOf[api.RoutesResponse](t, out)
		if got.Number != 1 || got.Table.Route("pets") == nil {
			t.Fatalf("get -o json: %+v", got)
		}
	})
	t.Run("routes validate", func(t *testing.T) {
		code, out, errOut := e.run(t, e.viewer, "routes", "validate", "-f", canary, "-path", "/pets/7", "-method", "GET", "-header", "x-debug=1")
		mustCode(t, "validate", code, 0, out, errOut)
		mustMatch(t, "validate", out,
			`^valid \(compared with version 1\)\n`,
			`(?m)^route pets: changed$`,
			`(?m)^NODE\s+TYPE\s+RESOURCE\s+CHANGE$`,
			`(?m)^edge~dry-run\s+cluster\s+pets~v2\s+added$`,
			`(?m)^sample GET /pets/7: route pets \(authenticated\) → pets~v1 \(80%\), pets~v2 \(20%\)$`)
		code, out, errOut = e.run(t, e.viewer, "routes", "validate", "-f", canary, "-path", "/nowhere", "-o", "json")
		mustCode(t, "validate -o json", code, 0, out, errOut)
		v := jsonOf[api.ValidateResponse](t, out)
		if !v.Valid || v.BaseVersion != 1 || v.Sample == nil || v.Sample.Matched {
			t.Fatalf("validate -o json: %+v", v)
		}
		code, out, errOut = e.run(t, e.viewer, "routes", "validate", "-f", writeTable(t, "bad.yaml", invalidYAML))
		mustCode(t, "validate invalid", code, petctl.ExitValidation, out, errOut)
		mustMatch(t, "validate invalid", errOut, `rejected \(3 error\(s\)\)`,
			`(?m)^  routes\[0\]\.targets\[1\]\.weight: weights must sum to 100, got 90$`,
			`(?m)^  routes\[1\]\.match\.regex: `, `(?m)^  services\.pets\.lb: `)
	})
	t.Run("routes apply", func(t *testing.T) {
		code, out, errOut := e.run(t, e.admin, "routes", "apply", "-f", canary, "-m", "canary 20%")
		mustCode(t, "apply", code, 0, out, errOut)
		if out != "applied: version 2 (was 1)\n" {
			t.Fatalf("apply: %q", out)
		}
		code, out, errOut = e.run(t, e.admin, "routes", "apply", "-f", writeTable(t, "bad.yaml", invalidYAML))
		mustCode(t, "apply invalid", code, petctl.ExitValidation, out, errOut)
		mustMatch(t, "apply invalid", errOut, `PUT /v1/routes: 400 rejected \(3 error\(s\)\)`, `routes\[0\]\.targets\[1\]\.weight`)
		code, out, errOut = e.run(t, e.admin, "-o", "json", "routes", "apply", "-f", writeTable(t, "default.yaml", string(routes.DefaultYAML)), "-m", "default again")
		mustCode(t, "apply -o json", code, 0, out, errOut)
		if v := jsonOf[store.Version](t, out); v.Number != 3 || v.Author != "alice" || v.Message != "default again" {
			t.Fatalf("apply -o json: %+v", v)
		}
	})
	t.Run("routes set-weights", func(t *testing.T) {
		code, out, errOut := e.run(t, e.admin, "routes", "set-weights", "pets", "v1=90", "v2=10")
		mustCode(t, "set-weights", code, 0, out, errOut)
		if out != "applied: version 4: set weights of pets: v1=90 v2=10\n" {
			t.Fatalf("set-weights: %q", out)
		}
		code, out, errOut = e.run(t, e.admin, "routes", "set-weights", "pets", "v1=50", "v2=50", "-m", "half", "-o", "json")
		mustCode(t, "set-weights -o json", code, 0, out, errOut)
		if v := jsonOf[store.Version](t, out); v.Number != 5 || v.Message != "half" {
			t.Fatalf("set-weights -o json: %+v", v)
		}
		code, out, errOut = e.run(t, e.admin, "routes", "set-weights", "pets", "v1=70", "v2=20")
		mustCode(t, "set-weights summing to 90", code, petctl.ExitValidation, out, errOut)
		mustMatch(t, "set-weights summing to 90", errOut, `weights must sum to 100, got 90`)
		code, out, errOut = e.run(t, e.admin, "routes", "set-weights", "nope", "v1=100")
		mustCode(t, "set-weights unknown route", code, petctl.ExitOther, out, errOut)
		mustMatch(t, "set-weights unknown route", errOut, `404 no route named "nope"`)
	})
	t.Run("routes history", func(t *testing.T) {
		code, out, errOut := e.run(t, e.viewer, "routes", "history")
		mustCode(t, "history", code, 0, out, errOut)
		mustMatch(t, "history", out, `^VERSION\s+TIME\s+AUTHOR\s+MESSAGE\n`,
			`(?m)^1\s+\S+\s+seed\s+initial table$`, `(?m)^2\s+\S+\s+alice\s+canary 20%$`, `(?m)^5\s+\S+\s+alice\s+half$`)
		code, out, errOut = e.run(t, e.viewer, "routes", "history", "-o", "json")
		mustCode(t, "history -o json", code, 0, out, errOut)
		if vs := jsonOf[api.VersionsResponse](t, out).Versions; len(vs) != 5 {
			t.Fatalf("history -o json: %d versions", len(vs))
		}
	})
	t.Run("routes diff", func(t *testing.T) {
		code, out, errOut := e.run(t, e.viewer, "routes", "diff", "1", "2")
		mustCode(t, "diff", code, 0, out, errOut)
		mustMatch(t, "diff", out, `^route pets: changed\n`, `(?m)^\+.*subset: v2`, `(?m)^-`)
		code, out, errOut = e.run(t, e.viewer, "routes", "diff", "1", "3")
		mustCode(t, "diff equal", code, 0, out, errOut)
		if out != "no differences\n" {
			t.Fatalf("diff of equal tables: %q", out)
		}
		code, out, errOut = e.run(t, e.viewer, "-o", "json", "routes", "diff", "1", "2")
		mustCode(t, "diff -o json", code, 0, out, errOut)
		if d := jsonOf[store.Diff](t, out); d.From != 1 || d.To != 2 || len(d.Routes) != 1 {
			t.Fatalf("diff -o json: %+v", d)
		}
		code, out, errOut = e.run(t, e.viewer, "routes", "diff", "1", "99")
		mustCode(t, "diff missing version", code, petctl.ExitOther, out, errOut)
		mustMatch(t, "diff missing version", errOut, `: 404 `)
	})
	t.Run("routes rollback", func(t *testing.T) {
		code, out, errOut := e.run(t, e.admin, "routes", "rollback", "2")
		mustCode(t, "rollback", code, 0, out, errOut)
		if out != "rolled back: version 6 has the table of version 2\n" {
			t.Fatalf("rollback: %q", out)
		}
		code, out, errOut = e.run(t, e.viewer, "routes", "diff", "2", "6")
		mustCode(t, "diff after rollback", code, 0, out, errOut)
		if out != "no differences\n" {
			t.Fatalf("diff 2 6: %q", out)
		}
		code, out, errOut = e.run(t, e.admin, "-o", "json", "routes", "rollback", "1")
		mustCode(t, "rollback -o json", code, 0, out, errOut)
		if v := jsonOf[store.Version](t, out); v.Number != 7 || v.Message != "rollback to version 1" {
			t.Fatalf("rollback -o json: %+v", v)
		}
		code, out, errOut = e.run(t, e.admin, "routes", "rollback", "99")
		mustCode(t, "rollback to a missing version", code, petctl.ExitOther, out, errOut)
		mustMatch(t, "rollback to a missing version", errOut, `404 version: version 99 does not exist`)
	})
	t.Run("proxies", func(t *testing.T) {
		tu.Eventually(t, 15*time.Second, func() error {
			if p, _ := e.xds.Proxy("edge~e1"); !p.Synced || p.RouteVersion != 7 {
				return fmt.Errorf("edge at %d synced %v", p.RouteVersion, p.Synced)
			}
			return nil
		})
		code, out, errOut := e.run(t, e.viewer, "proxies")
		mustCode(t, "proxies", code, 0, out, errOut)
		mustMatch(t, "proxies", out, `^NODE\s+KIND\s+SERVICE\s+CONNECTED\s+ROUTE-VERSION\s+SYNCED\s+STALE\s+LAST-NACK\n`,
			`(?m)^edge~e1\s+edge\s+-\s+true\s+7\s+true\s+false\s+-$`)
		code, out, errOut = e.run(t, e.viewer, "proxies", "-o", "json")
		mustCode(t, "proxies -o json", code, 0, out, errOut)
		if ps := jsonOf[api.ProxiesResponse](t, out).Proxies; len(ps) != 1 || ps[0].ID != "edge~e1" || len(ps[0].Types) != 4 {
			t.Fatalf("proxies -o json: %+v", ps)
		}
	})
	t.Run("services", func(t *testing.T) {
		code, out, errOut := e.run(t, e.viewer, "services")
		mustCode(t, "services", code, 0, out, errOut)
		mustMatch(t, "services", out, `^SERVICE\s+INSTANCE\s+ADDRESS\s+VERSION\s+HEALTH\n`,
			`(?m)^pets\s+pets-1\s+127\.0\.0\.1:7001\s+v1\s+passing$`,
			`(?m)^pets\s+pets-2\s+127\.0\.0\.1:7011\s+v2\s+passing$`,
			`(?m)^stats\s+stats-1\s+127\.0\.0\.1:7003\s+-\s+passing$`)
		code, out, errOut = e.run(t, e.viewer, "-o", "json", "services")
		mustCode(t, "services -o json", code, 0, out, errOut)
		if ss := jsonOf[api.ServicesResponse](t, out).Services; len(ss) != 2 || ss[0].Name != "pets" || ss[0].Passing != 2 {
			t.Fatalf("services -o json: %+v", ss)
		}
	})
}

func TestPetctlExitCodes(t *testing.T) {
	e := startCtlEnv(t)
	table := writeTable(t, "t.yaml", string(routes.DefaultYAML))
	tests := []struct {
		desc   string
		env    map[string]string
		args   []string
		want   int
		stderr string // regexp
		stdout string // regexp
	}{
		{desc: "help", args: []string{"help"}, want: petctl.ExitOK, stdout: `^usage: petctl`},
		{desc: "-h", args: []string{"-h"}, want: petctl.ExitOK, stdout: `^usage: petctl`},
		{desc: "no command", want: petctl.ExitUsage, stderr: `a command is required`},
		{desc: "unknown command", args: []string{"frobnicate"}, want: petctl.ExitUsage, stderr: `unknown command "frobnicate"`},
		{desc: "routes without subcommand", args: []string{"routes"}, want: petctl.ExitUsage, stderr: `a subcommand is required`},
		{desc: "unknown routes subcommand", args: []string{"routes", "delete"}, want: petctl.ExitUsage, stderr: `unknown subcommand "delete"`},
		{desc: "bad output format", args: []string{"-o", "yaml", "routes", "get"}, want: petctl.ExitUsage, stderr: `-o: must be table or json`},
		{desc: "unknown flag", args: []string{"routes", "get", "-x"}, want: petctl.ExitUsage, stderr: `flag provided but not defined`},
		{desc: "apply without -f", args: []string{"routes", "apply"}, want: petctl.ExitUsage, stderr: `-f FILE is required`},
		{desc: "apply of a missing file", args: []string{"routes", "apply", "-f", "/nonexistent/t.yaml"}, want: petctl.ExitUsage, stderr: `no such file`},
		{desc: "set-weights without weights", args: []string{"routes", "set-weights", "pets"}, want: petctl.ExitUsage, stderr: `ROUTE and at least one subset=weight`},
		{desc: "set-weights with a bad weight", args: []string{"routes", "set-weights", "pets", "v1=ninety"}, want: petctl.ExitUsage, stderr: `want subset=weight, got "v1=ninety"`},
		{desc: "diff with one version", args: []string{"routes", "diff", "1"}, want: petctl.ExitUsage, stderr: `two versions are required`},
		{desc: "diff of a non-number", args: []string{"routes", "diff", "1", "x"}, want: petctl.ExitUsage, stderr: `"x" is not a version number`},
		{desc: "rollback of a non-number", args: []string{"routes", "rollback", "zero"}, want: petctl.ExitUsage, stderr: `"zero" is not a version number`},
		{desc: "no token: 401", env: map[string]string{"PETMESH_TOKEN": ""}, args: []string{"routes", "get"}, want: petctl.ExitAuth, stderr: `GET /v1/routes: 401 Authorization: bearer token required`},
		{desc: "garbage token: 401", env: map[string]string{"PETMESH_TOKEN": "x.y.z"}, args: []string{"proxies"}, want: petctl.ExitAuth, stderr: `: 401 `},
		{desc: "no role: 403", env: map[string]string{"PETMESH_TOKEN": e.nobody}, args: []string{"services"}, want: petctl.ExitAuth, stderr: `: 403 `},
		{desc: "viewer writes: 403", env: map[string]string{"PETMESH_TOKEN": e.viewer}, args: []string{"routes", "apply", "-f", table}, want: petctl.ExitAuth, stderr: `PUT /v1/routes: 403 .*admin`},
		{desc: "unreachable", env: map[string]string{"PETMESH_API": "http://127.0.0.1:1"}, args: []string{"routes", "get"}, want: petctl.ExitOther, stderr: `control plane unreachable at http://127\.0\.0\.1:1`},
		{desc: "-api and -token flags win over the environment", env: map[string]string{"PETMESH_API": "http://127.0.0.1:1", "PETMESH_TOKEN": ""},
			args: []string{"-api", e.api, "-token", e.viewer, "services"}, want: petctl.ExitOK, stdout: `(?m)^pets\s+pets-1`},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			env := map[string]string{"PETMESH_API": e.api, "PETMESH_TOKEN": e.admin}
			for k, v := range tc.env {
				env[k] = v
			}
			code, out, errOut := runCtl(t, env, tc.args...)
			mustCode(t, tc.desc, code, tc.want, out, errOut)
			if tc.stderr != "" {
				mustMatch(t, tc.desc+" (stderr)", errOut, tc.stderr)
			}
			if tc.stdout != "" {
				mustMatch(t, tc.desc+" (stdout)", out, tc.stdout)
			}
		})
	}
}

// TestPetctlStatusMapping checks the status → exit code mapping for
// statuses the real API does not produce on demand (a conflict between
// petctl's read and its write, a 428, server faults) with a stub server
// answering in the API's error shape.
func TestPetctlStatusMapping(t *testing.T) {
	tests := []struct {
		status int
		want   int
	}{
		{http.StatusBadRequest, petctl.ExitValidation},
		{http.StatusRequestEntityTooLarge, petctl.ExitValidation},
		{http.StatusUnsupportedMediaType, petctl.ExitValidation},
		{http.StatusConflict, petctl.ExitConflict},
		{http.StatusPreconditionRequired, petctl.ExitConflict},
		{http.StatusUnauthorized, petctl.ExitAuth},
		{http.StatusForbidden, petctl.ExitAuth},
		{http.StatusNotFound, petctl.ExitOther},
		{http.StatusInternalServerError, petctl.ExitOther},
		{http.StatusServiceUnavailable, petctl.ExitOther},
	}
	for _, tc := range tests {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet && r.URL.Path == "/v1/routes" {
					httpx.WriteJSON(w, http.StatusOK, map[string]any{"version": 4, "table": map[string]any{}})
					return
				}
				if r.Header.Get("If-Match") != "4" {
					httpx.WriteError(w, httpx.BadRequest("If-Match", "want 4, got %q", r.Header.Get("If-Match")))
					return
				}
				httpx.WriteError(w, &httpx.Error{Status: tc.status, Code: "stub", Field: "f", Message: "stub says no"})
			}))
			defer srv.Close()
			code, out, errOut := runCtl(t, map[string]string{"PETMESH_API": srv.URL}, "routes", "set-weights", "pets", "v1=100")
			mustCode(t, "set-weights", code, tc.want, out, errOut)
			mustMatch(t, "set-weights", errOut, fmt.Sprintf(`PUT /v1/routes/pets/weights: %d f: stub says no`, tc.status))
		})
	}
}

// TestPetctlBinary runs the real binary: PETMESH_API and PETMESH_TOKEN
// from the environment, and the process exit codes.
func TestPetctlBinary(t *testing.T) {
	e := startCtlEnv(t)
	bin := tu.BuildBinary(t, "./controlplane/cmd/petctl")
	run := func(env []string, args ...string) (int, string, string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return ee.ExitCode(), out.String(), errb.String()
		case err != nil:
			t.Fatal(err)
		}
		return 0, out.String(), errb.String()
	}
	code, out, errOut := run([]string{"PETMESH_API=" + e.api, "PETMESH_TOKEN=" + e.viewer}, "routes", "get")
	mustCode(t, "routes get", code, 0, out, errOut)
	mustMatch(t, "routes get", out, `^# version 1 by seed`)
	code, out, errOut = run([]string{"PETMESH_API=" + e.api, "PETMESH_TOKEN=" + e.viewer}, "routes", "rollback", "1")
	mustCode(t, "viewer rollback", code, petctl.ExitAuth, out, errOut)
	code, out, errOut = run([]string{"PETMESH_API=" + e.api, "PETMESH_TOKEN="}, "routes", "get")
	mustCode(t, "no token", code, petctl.ExitAuth, out, errOut)
	code, out, errOut = run([]string{"PETMESH_API=" + e.api, "PETMESH_TOKEN=" + e.admin}, "routes", "apply", "-f", writeTable(t, "bad.yaml", invalidYAML))
	mustCode(t, "invalid apply", code, petctl.ExitValidation, out, errOut)
	code, out, errOut = run([]string{"PETMESH_API=http://127.0.0.1:1"}, "services")
	mustCode(t, "unreachable", code, petctl.ExitOther, out, errOut)
	code, out, errOut = run(nil, "bogus")
	mustCode(t, "usage", code, petctl.ExitUsage, out, errOut)
}
