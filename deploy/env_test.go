package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/petmesh/petmesh/deploy"
	"github.com/petmesh/petmesh/internal/testutil"
)

// accepted is what one petmesh binary reads: its flags and environment
// variables, as its own -h prints them.
type accepted struct {
	flags map[string]bool
	env   map[string]bool
}

var (
	// usageFlag matches a flag line of Go's flag usage: "  -name type".
	usageFlag = regexp.MustCompile(`(?m)^\s+-([A-Za-z0-9][A-Za-z0-9_.-]*)`)
	// usageEnv matches an environment variable named in the usage, as
	// "(env NAME)" after every flag or "or set NAME" for the variables
	// read without a flag (secrets).
	usageEnv = regexp.MustCompile(`\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b`)
	// otelEnv matches the OpenTelemetry variables internal/telemetry reads.
	otelEnv = regexp.MustCompile(`"(OTEL_[A-Z0-9_]+)"`)
)

var (
	acceptedMu    sync.Mutex
	acceptedCache = map[string]accepted{}
)

// acceptedBy builds bin (a name from deploy.Binaries) once per test
// process, runs it with -h and collects the flags and environment
// variables it documents; a binary that links internal/telemetry also
// reads the OTEL_* variables that package reads.
func acceptedBy(t *testing.T, bin string) accepted {
	t.Helper()
	acceptedMu.Lock()
	defer acceptedMu.Unlock()
	if a, ok := acceptedCache[bin]; ok {
		return a
	}
	pkg, ok := deploy.Binaries()[bin]
	if !ok {
		t.Fatalf("%s is not a binary of the image (deploy.Binaries)", bin)
	}
	path := testutil.BuildBinary(t, pkg)
	// -h exits 0 or 1 depending on the binary (flag.ErrHelp); the usage
	// is what counts.
	out, _ := exec.Command(path, "-h").CombinedOutput()
	if !strings.Contains(strings.ToLower(string(out)), "usage") {
		t.Fatalf("%s -h printed no usage:\n%s", bin, out)
	}
	a := accepted{flags: map[string]bool{}, env: map[string]bool{}}
	for _, m := range usageFlag.FindAllStringSubmatch(string(out), -1) {
		a.flags[m[1]] = true
	}
	for _, name := range usageEnv.FindAllString(string(out), -1) {
		a.env[name] = true
	}
	root := testutil.RepoRoot(t)
	deps, err := exec.Command("go", "list", "-C", root, "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	if strings.Contains(string(deps), "github.com/petmesh/petmesh/internal/telemetry\n") {
		for name := range telemetryEnv(t, root) {
			a.env[name] = true
		}
	}
	if len(a.flags) == 0 {
		t.Fatalf("%s -h: no flags found in\n%s", bin, out)
	}
	acceptedCache[bin] = a
	return a
}

// telemetryEnv returns the OTEL_* variables named in internal/telemetry's
// sources (the standard OpenTelemetry variables every process honours).
func telemetryEnv(t *testing.T, root string) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "internal", "telemetry", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range otelEnv.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = true
		}
	}
	if !out["OTEL_EXPORTER_OTLP_ENDPOINT"] || !out["OTEL_SERVICE_NAME"] {
		t.Fatalf("internal/telemetry names no OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_SERVICE_NAME: %v", out)
	}
	return out
}

// invocation is one petmesh process as a deployment runs it.
type invocation struct {
	where string   // "compose service x", "Deployment/x container y"
	argv  []string // binary and its arguments
	env   []string // names of the variables set
	// helpers are variables set only to be substituted into others
	// ($(NAME) in Kubernetes); they need not be read by the binary.
	helpers map[string]bool
	// problems found while reading the deployment.
	problems []string
}

// check returns the problems of inv: a binary that is not in the image,
// a flag it does not define, a variable it does not read.
func (inv invocation) check(t *testing.T) []string {
	t.Helper()
	if len(inv.argv) == 0 {
		return []string{inv.where + ": no command"}
	}
	bin := inv.argv[0]
	if _, ok := deploy.Binaries()[bin]; !ok {
		return []string{fmt.Sprintf("%s: command %q is not a binary of the image", inv.where, bin)}
	}
	a := acceptedBy(t, bin)
	out := append([]string{}, inv.problems...)
	for _, arg := range inv.argv[1:] {
		if !strings.HasPrefix(arg, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if !a.flags[name] {
			out = append(out, fmt.Sprintf("%s: %s has no flag -%s", inv.where, bin, name))
		}
	}
	for _, name := range inv.env {
		if !a.env[name] && !inv.helpers[name] {
			out = append(out, fmt.Sprintf("%s: %s does not read %s", inv.where, bin, name))
		}
	}
	return out
}

// composeInvocations returns every petmesh process of a compose file: the
// services running the petmesh image, with their command and environment
// (YAML anchors and merge keys resolved).
func composeInvocations(t *testing.T, raw []byte) []invocation {
	t.Helper()
	var f struct {
		Services map[string]struct {
			Image       string   `yaml:"image"`
			Command     []string `yaml:"command"`
			Entrypoint  []string `yaml:"entrypoint"`
			Environment any      `yaml:"environment"`
			EnvFile     any      `yaml:"env_file"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatalf("parse compose file: %v", err)
	}
	var out []invocation
	for name, s := range f.Services {
		if !strings.HasPrefix(s.Image, "petmesh:") {
			continue
		}
		inv := invocation{where: "compose service " + name, argv: append(append([]string{}, s.Entrypoint...), s.Command...)}
		switch env := s.Environment.(type) {
		case map[string]any:
			for k := range env {
				inv.env = append(inv.env, k)
			}
		case []any:
			for _, kv := range env {
				k, _, _ := strings.Cut(fmt.Sprint(kv), "=")
				inv.env = append(inv.env, k)
			}
		case nil:
		default:
			t.Fatalf("compose service %s: environment of type %T", name, env)
		}
		if s.EnvFile != nil {
			inv.problems = append(inv.problems, inv.where+": env_file cannot be checked; set the variables in environment")
		}
		sort.Strings(inv.env)
		out = append(out, inv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].where < out[j].where })
	return out
}

var k8sRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// k8sInvocations returns every container running the petmesh image.
func k8sInvocations(t *testing.T, objs []object) []invocation {
	t.Helper()
	var out []invocation
	for key, pod := range podSpecs(objs) {
		for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
			if !strings.HasPrefix(c.Image, "petmesh:") {
				continue
			}
			inv := invocation{where: key + " container " + c.Name, argv: append(append([]string{}, c.Command...), c.Args...), helpers: map[string]bool{}}
			if len(c.EnvFrom) > 0 {
				inv.problems = append(inv.problems, inv.where+": envFrom cannot be checked; list the variables in env")
			}
			// Kubernetes expands $(NAME) only for a variable defined
			// earlier in the list; any other reference stays as it is.
			defined := map[string]bool{}
			refs := []string{}
			for _, e := range c.Env {
				for _, m := range k8sRef.FindAllStringSubmatch(e.Value, -1) {
					if !defined[m[1]] {
						inv.problems = append(inv.problems, fmt.Sprintf("%s: %s refers to $(%s), which is not defined before it", inv.where, e.Name, m[1]))
					}
					refs = append(refs, m[1])
				}
				defined[e.Name] = true
				inv.env = append(inv.env, e.Name)
			}
			for _, m := range k8sRef.FindAllStringSubmatch(strings.Join(inv.argv, " "), -1) {
				refs = append(refs, m[1])
			}
			for _, r := range refs {
				inv.helpers[r] = true
			}
			out = append(out, inv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].where < out[j].where })
	return out
}

// TestDeploymentsUseRealFlagsAndEnv fails when docker-compose.yml or a
// Kubernetes manifest runs a petmesh binary with a flag it does not
// define or an environment variable it does not read (taken from the
// binary's own -h, not from a list kept here).
func TestDeploymentsUseRealFlagsAndEnv(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary")
	}
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	_, objs := loadAll(t)
	sets := map[string][]invocation{
		"compose":    composeInvocations(t, raw),
		"kubernetes": k8sInvocations(t, objs),
	}
	for name, invs := range sets {
		t.Run(name, func(t *testing.T) {
			if len(invs) < 7 {
				t.Fatalf("only %d petmesh processes found", len(invs))
			}
			for _, inv := range invs {
				for _, p := range inv.check(t) {
					t.Error(p)
				}
			}
		})
	}

	t.Run("the check catches a wrong name", func(t *testing.T) {
		bad := []byte(`
x-env: &env
  SIDECAR_ADVERTISE_ADDR: pets-1:15006
services:
  s:
    image: petmesh:dev
    command: [sidecar, -service, pets, -advertise-addr, x, --xds-addr=y]
    environment:
      <<: *env
      SIDECAR_SERVICE: pets
  other:
    image: postgres:17
    environment: {ANYTHING: x}
`)
		invs := composeInvocations(t, bad)
		if len(invs) != 1 {
			t.Fatalf("%d invocations, want 1", len(invs))
		}
		problems := invs[0].check(t)
		got := strings.Join(problems, "\n")
		for _, want := range []string{"has no flag -advertise-addr", "does not read SIDECAR_ADVERTISE_ADDR"} {
			if !strings.Contains(got, want) {
				t.Errorf("problems %q: want %q", got, want)
			}
		}
		// -service, --xds-addr=y and SIDECAR_SERVICE are real.
		if len(problems) != 2 {
			t.Errorf("%d problems, want 2:\n%s", len(problems), got)
		}

		k8s := `apiVersion: apps/v1
kind: Deployment
metadata: {name: edge}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
      - name: edge
        image: petmesh:dev
        args: [edge, -node-id, "edge~$(POD_NAME)"]
        env:
        - {name: EDGE_INSTANCE, value: "$(POD_NAME)"}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - {name: EDGE_ADDR, value: ":8080"}
        - {name: UNUSED, value: x}
`
		objs, err := decodeManifests("bad.yaml", []byte(k8s))
		if err != nil {
			t.Fatal(err)
		}
		invs = k8sInvocations(t, objs)
		if len(invs) != 1 {
			t.Fatalf("%d invocations, want 1", len(invs))
		}
		problems = invs[0].check(t)
		got = strings.Join(problems, "\n")
		for _, want := range []string{"does not read EDGE_INSTANCE", "EDGE_INSTANCE refers to $(POD_NAME), which is not defined before it", "does not read UNUSED"} {
			if !strings.Contains(got, want) {
				t.Errorf("problems %q: want %q", got, want)
			}
		}
		// POD_NAME is substituted, -node-id and EDGE_ADDR are real.
		if len(problems) != 3 {
			t.Errorf("%d problems, want 3:\n%s", len(problems), got)
		}
	})
}
