package deploy_test

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	yaml3 "gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/petmesh/petmesh/controlplane/xds"
)

// xdsTokenEnv is, per binary, the variable naming its xDS token file: the
// control plane's accepted tokens, the token the edge and a sidecar send.
// TestDeploymentsUseRealFlagsAndEnv checks these names against -h.
var xdsTokenEnv = map[string]string{
	"controlplane": "CONTROLPLANE_XDS_TOKEN_FILE",
	"edge":         "EDGE_XDS_TOKEN_FILE",
	"sidecar":      "SIDECAR_XDS_TOKEN_FILE",
}

// xdsMount is a mount of a container: target directory (or file) inside
// it, whether it is read-only, and how to read a file below it.
type xdsMount struct {
	target   string
	readOnly bool
	problem  string // why the mount cannot provide a token ("" if it can)
	// read returns the file at rel (slash-separated, "" for the target
	// itself) of the mount's source.
	read func(rel string) (string, error)
}

// xdsProcess is a control plane, edge or sidecar as a deployment runs it.
type xdsProcess struct {
	where  string
	bin    string
	env    map[string]string
	mounts []xdsMount
}

// xdsTokenProblems checks that every process gets a token file path in
// its variable, that a read-only mount provides that file, that the
// control planes' files are valid token files, and that every proxy's
// token is one the control planes accept. want is the minimum number of
// processes per binary, so that a renamed binary cannot empty the check.
func xdsTokenProblems(procs []xdsProcess, want map[string]int) []string {
	var problems []string
	count := map[string]int{}
	accepted := map[string]bool{}
	sent := map[string]string{} // where -> token
	for _, p := range procs {
		name, ok := xdsTokenEnv[p.bin]
		if !ok {
			continue
		}
		count[p.bin]++
		file := p.env[name]
		if file == "" {
			problems = append(problems, fmt.Sprintf("%s: %s not set (xDS would be unauthenticated)", p.where, name))
			continue
		}
		if !path.IsAbs(file) {
			problems = append(problems, fmt.Sprintf("%s: %s=%q is not an absolute path", p.where, name, file))
			continue
		}
		// The mount with the longest target containing the file.
		var m *xdsMount
		for i := range p.mounts {
			t := strings.TrimSuffix(p.mounts[i].target, "/")
			if (file == t || strings.HasPrefix(file, t+"/")) && (m == nil || len(t) > len(m.target)) {
				m = &p.mounts[i]
			}
		}
		if m == nil {
			problems = append(problems, fmt.Sprintf("%s: no volume is mounted at %s (%s)", p.where, path.Dir(file), name))
			continue
		}
		if !m.readOnly {
			problems = append(problems, fmt.Sprintf("%s: the mount at %s holding %s is not read-only", p.where, m.target, name))
		}
		if m.problem != "" {
			problems = append(problems, fmt.Sprintf("%s: the mount at %s holding %s: %s", p.where, m.target, name, m.problem))
			continue
		}
		content, err := m.read(strings.TrimPrefix(strings.TrimPrefix(file, strings.TrimSuffix(m.target, "/")), "/"))
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %s=%s: %v", p.where, name, file, err))
			continue
		}
		if p.bin == "controlplane" {
			toks, err := xds.ParseTokens([]byte(content))
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %s=%s: the control plane refuses it: %v", p.where, name, file, err))
				continue
			}
			for _, tok := range toks {
				accepted[tok.Value] = true
			}
			continue
		}
		// internal/xds/client sends the whole file, trimmed: one token on
		// one line, no comments.
		tok := strings.TrimSpace(content)
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
			problems = append(problems, fmt.Sprintf("%s: %s=%s: want one token on one line, have %d bytes", p.where, name, file, len(content)))
			continue
		}
		sent[p.where] = tok
	}
	for bin, n := range want {
		if count[bin] < n {
			problems = append(problems, fmt.Sprintf("%d %s processes found, want at least %d", count[bin], bin, n))
		}
	}
	for where, tok := range sent {
		if count["controlplane"] > 0 && !accepted[tok] {
			problems = append(problems, fmt.Sprintf("%s: its xDS token is not one the control plane accepts", where))
		}
	}
	sort.Strings(problems)
	return problems
}

// composeXDSProcesses returns the control plane, edge and sidecars of a
// resolved compose project. docker-compose config prints bind mounts as
// "/abs/source:target[:mode]".
func composeXDSProcesses(p composeProject) []xdsProcess {
	var out []xdsProcess
	for name, s := range p.Services {
		if !strings.HasPrefix(s.Image, "petmesh:") || len(s.Command) == 0 {
			continue
		}
		proc := xdsProcess{where: "compose service " + name, bin: s.Command[0], env: s.Environment}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				continue
			}
			src, target := parts[0], parts[1]
			ro := len(parts) > 2 && strings.Contains(","+parts[2]+",", ",ro,")
			m := xdsMount{target: target, readOnly: ro}
			if !filepath.IsAbs(src) {
				m.problem = fmt.Sprintf("named volume %s, not a bind mount of the repository's token", src)
			}
			m.read = func(rel string) (string, error) {
				b, err := os.ReadFile(filepath.Join(src, filepath.FromSlash(rel)))
				return string(b), err
			}
			proc.mounts = append(proc.mounts, m)
		}
		out = append(out, proc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].where < out[j].where })
	return out
}

// k8sXDSProcesses returns the control plane, edge and sidecar containers
// of the manifests; a token must come from a Secret volume mounted as a
// directory (a subPath mount never sees a rotated Secret).
func k8sXDSProcesses(t *testing.T, objs []object) []xdsProcess {
	t.Helper()
	secrets := map[string]*corev1.Secret{}
	for _, o := range objs {
		if s, ok := o.obj.(*corev1.Secret); ok {
			secrets[o.name] = s
		}
	}
	var out []xdsProcess
	for key, pod := range podSpecs(objs) {
		vols := map[string]corev1.Volume{}
		for _, v := range pod.Spec.Volumes {
			vols[v.Name] = v
		}
		for _, c := range pod.Spec.Containers {
			if !strings.HasPrefix(c.Image, "petmesh:") || len(c.Args) == 0 {
				continue
			}
			proc := xdsProcess{where: key + " container " + c.Name, bin: c.Args[0], env: map[string]string{}}
			for _, e := range c.Env {
				proc.env[e.Name] = e.Value
			}
			for _, vm := range c.VolumeMounts {
				m := xdsMount{target: vm.MountPath, readOnly: vm.ReadOnly}
				v, ok := vols[vm.Name]
				switch {
				case !ok:
					m.problem = fmt.Sprintf("volume %s is not defined in the pod", vm.Name)
				case vm.SubPath != "" || vm.SubPathExpr != "":
					m.problem = "a subPath mount is never updated when the Secret is"
				case v.Secret == nil:
					m.problem = fmt.Sprintf("volume %s is not a Secret", vm.Name)
				case secrets[v.Secret.SecretName] == nil:
					m.problem = fmt.Sprintf("Secret %s is not defined", v.Secret.SecretName)
				}
				if m.problem == "" {
					src := v.Secret
					sec := secrets[src.SecretName]
					m.read = func(rel string) (string, error) {
						key := rel
						if len(src.Items) > 0 {
							key = ""
							for _, it := range src.Items {
								if it.Path == rel {
									key = it.Key
								}
							}
						}
						if v, ok := sec.StringData[key]; ok && key != "" {
							return v, nil
						}
						if v, ok := sec.Data[key]; ok && key != "" {
							return string(v), nil
						}
						return "", fmt.Errorf("Secret %s (volume %s) has no file %q", src.SecretName, vm.Name, rel)
					}
				}
				proc.mounts = append(proc.mounts, m)
			}
			out = append(out, proc)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].where < out[j].where })
	return out
}

// TestXDSTokenWired fails when the control plane, the edge or any sidecar
// of docker-compose.yml or the Kubernetes manifests runs without the xDS
// token: its variable, the read-only volume providing the file, a token
// the control plane accepts.
func TestXDSTokenWired(t *testing.T) {
	t.Run("compose", func(t *testing.T) {
		p := resolvedCompose(t, composeFile)
		procs := composeXDSProcesses(p)
		want := map[string]int{"controlplane": 1, "edge": 1, "sidecar": 4}
		for _, pr := range xdsTokenProblems(procs, want) {
			t.Error(pr)
		}

		// One sidecar without the volume, one without the variable, a
		// writable mount on the edge: each is named.
		bad := composeProject{Services: map[string]composeService{}}
		for name, s := range p.Services {
			c := s
			c.Environment = map[string]string{}
			for k, v := range s.Environment {
				c.Environment[k] = v
			}
			c.Volumes = nil
			for _, v := range s.Volumes {
				switch {
				case name == "pets-2-sidecar" && strings.Contains(v, ":/etc/petmesh/xds"):
					continue
				case name == "edge" && strings.Contains(v, ":/etc/petmesh/xds"):
					v = strings.TrimSuffix(v, ":ro") + ":rw"
				}
				c.Volumes = append(c.Volumes, v)
			}
			if name == "stats-sidecar" {
				delete(c.Environment, "SIDECAR_XDS_TOKEN_FILE")
			}
			bad.Services[name] = c
		}
		got := strings.Join(xdsTokenProblems(composeXDSProcesses(bad), want), "\n")
		for _, w := range []string{
			"compose service pets-2-sidecar: no volume is mounted at /etc/petmesh/xds",
			"compose service stats-sidecar: SIDECAR_XDS_TOKEN_FILE not set",
			"compose service edge: the mount at /etc/petmesh/xds holding EDGE_XDS_TOKEN_FILE is not read-only",
		} {
			if !strings.Contains(got, w) {
				t.Errorf("problems of a broken compose project:\n%s\nwant %q", got, w)
			}
		}
	})

	t.Run("kubernetes", func(t *testing.T) {
		_, objs := loadAll(t)
		want := map[string]int{"controlplane": 1, "edge": 1, "sidecar": 3}
		for _, pr := range xdsTokenProblems(k8sXDSProcesses(t, objs), want) {
			t.Error(pr)
		}
	})

	t.Run("kubernetes: a sidecar without the mount, a wrong token", func(t *testing.T) {
		k, _ := loadAll(t)
		edits := map[string][2]string{ // file -> old, new
			"sync.yaml": {"        - {name: xds-token, mountPath: /etc/petmesh/xds, readOnly: true}\n", ""},
			"stats.yaml": {"        - {name: xds-token, mountPath: /etc/petmesh/xds, readOnly: true}\n",
				"        - {name: xds-token, mountPath: /etc/petmesh/xds/token, subPath: token, readOnly: true}\n"},
			"identity.yaml": {"  token: petmesh-dev-xds-token-DEVELOPMENT-ONLY\n", "  token: short\n"},
		}
		var objs []object
		for _, r := range k.Resources {
			raw, err := os.ReadFile(filepath.Join(k8sDir, r))
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := edits[r]; ok {
				if !strings.Contains(string(raw), e[0]) {
					t.Fatalf("%s no longer holds %q; update this test", r, e[0])
				}
				raw = []byte(strings.Replace(string(raw), e[0], e[1], 1))
			}
			o, err := decodeManifests(r, raw)
			if err != nil {
				t.Fatal(err)
			}
			objs = append(objs, o...)
		}
		got := strings.Join(xdsTokenProblems(k8sXDSProcesses(t, objs), map[string]int{"sidecar": 4}), "\n")
		for _, w := range []string{
			"Deployment/sync container sidecar: no volume is mounted at /etc/petmesh/xds",
			"Deployment/stats container sidecar: the mount at /etc/petmesh/xds/token holding SIDECAR_XDS_TOKEN_FILE: a subPath mount",
			"Deployment/controlplane container controlplane: CONTROLPLANE_XDS_TOKEN_FILE=/etc/petmesh/xds/token: the control plane refuses it",
			"Deployment/pets container sidecar: its xDS token is not one the control plane accepts",
			"3 sidecar processes found, want at least 4",
		} {
			if !strings.Contains(got, w) {
				t.Errorf("problems of broken manifests:\n%s\nwant %q", got, w)
			}
		}
	})

	t.Run("compose and Kubernetes share the development token", func(t *testing.T) {
		_, objs := loadAll(t)
		want, err := os.ReadFile(filepath.Join("dev-secrets", "xds", "token"))
		if err != nil {
			t.Fatal(err)
		}
		got := secretData(t, objs, "petmesh-xds-token", "token")
		if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Errorf("Secret petmesh-xds-token key token %q differs from deploy/dev-secrets/xds/token %q", got, want)
		}
		// Marked as a development value wherever it is seen.
		if !strings.Contains(got, "DEVELOPMENT-ONLY") {
			t.Errorf("the development xDS token %q does not say DEVELOPMENT-ONLY", got)
		}
	})
}

// xdsTLSComponent is deploy/k8s/xds-tls/kustomization.yaml, decoded
// strictly.
type xdsTLSComponent struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Patches    []struct {
		Path string `yaml:"path"`
	} `yaml:"patches"`
}

const xdsTLSSecret = "petmesh-xds-tls"

// xdsTLSProblems checks the optional xDS TLS component against the base
// manifests: the control plane gets tls.crt and tls.key, the edge and
// every sidecar the CA (and only the CA) of Secret petmesh-xds-tls, each
// from a read-only Secret volume whose name and mount path are new to
// the container (a strategic merge on an existing one would replace it).
// It returns the problems and, per patched container, the variables set.
func xdsTLSProblems(base, patches []object) ([]string, map[string][]string) {
	var problems []string
	envByWhere := map[string][]string{}
	basePods := podSpecs(base)
	patchPods := podSpecs(patches)
	want := map[string][]string{ // binary -> variable -> file (key of the Secret)
		"controlplane": {"CONTROLPLANE_XDS_TLS_CERT_FILE=tls.crt", "CONTROLPLANE_XDS_TLS_KEY_FILE=tls.key"},
		"edge":         {"EDGE_XDS_CA_FILE=ca.crt"},
		"sidecar":      {"SIDECAR_XDS_CA_FILE=ca.crt"},
	}
	for key, pod := range basePods {
		for _, c := range pod.Spec.Containers {
			if !strings.HasPrefix(c.Image, "petmesh:") || len(c.Args) == 0 || want[c.Args[0]] == nil {
				continue
			}
			where := key + " container " + c.Name
			pp, ok := patchPods[key]
			var pc *corev1.Container
			for i := range pp.Spec.Containers {
				if pp.Spec.Containers[i].Name == c.Name {
					pc = &pp.Spec.Containers[i]
				}
			}
			if !ok || pc == nil {
				problems = append(problems, fmt.Sprintf("%s: not patched by the xds-tls component", where))
				continue
			}
			env := map[string]string{}
			for _, e := range pc.Env {
				env[e.Name] = e.Value
				envByWhere[where] = append(envByWhere[where], e.Name)
			}
			vols := map[string]corev1.Volume{}
			for _, v := range pp.Spec.Volumes {
				vols[v.Name] = v
				for _, bv := range pod.Spec.Volumes {
					if bv.Name == v.Name {
						problems = append(problems, fmt.Sprintf("%s: volume %s already exists in the base (the patch would replace it)", where, v.Name))
					}
				}
			}
			for _, vm := range pc.VolumeMounts {
				for _, bm := range c.VolumeMounts {
					if bm.MountPath == vm.MountPath {
						problems = append(problems, fmt.Sprintf("%s: mount path %s already used in the base", where, vm.MountPath))
					}
				}
			}
			for _, w := range want[c.Args[0]] {
				name, secretKey, _ := strings.Cut(w, "=")
				file := env[name]
				if file == "" {
					problems = append(problems, fmt.Sprintf("%s: %s not set", where, name))
					continue
				}
				var vm *corev1.VolumeMount
				for i := range pc.VolumeMounts {
					if path.Dir(file) == path.Clean(pc.VolumeMounts[i].MountPath) {
						vm = &pc.VolumeMounts[i]
					}
				}
				if vm == nil {
					problems = append(problems, fmt.Sprintf("%s: no volume is mounted at %s (%s)", where, path.Dir(file), name))
					continue
				}
				v, ok := vols[vm.Name]
				switch {
				case !ok:
					problems = append(problems, fmt.Sprintf("%s: volume %s is not defined by the patch", where, vm.Name))
					continue
				case !vm.ReadOnly || vm.SubPath != "":
					problems = append(problems, fmt.Sprintf("%s: mount %s must be read-only and without subPath", where, vm.MountPath))
				case v.Secret == nil || v.Secret.SecretName != xdsTLSSecret:
					problems = append(problems, fmt.Sprintf("%s: volume %s is not Secret %s", where, vm.Name, xdsTLSSecret))
					continue
				}
				// The file at path.Base(file) must be secretKey.
				got := ""
				if len(v.Secret.Items) == 0 {
					got = path.Base(file)
				}
				for _, it := range v.Secret.Items {
					if it.Path == path.Base(file) {
						got = it.Key
					}
				}
				if got != secretKey {
					problems = append(problems, fmt.Sprintf("%s: %s=%s is Secret key %q, want %q", where, name, file, got, secretKey))
				}
				if c.Args[0] != "controlplane" {
					// A proxy must never see the control plane's key.
					if len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != "ca.crt" {
						problems = append(problems, fmt.Sprintf("%s: volume %s must project only ca.crt of %s", where, vm.Name, xdsTLSSecret))
					}
				}
			}
		}
	}
	sort.Strings(problems)
	return problems, envByWhere
}

// loadXDSTLSComponent decodes the component and its patches strictly,
// with edit applied to the named patch file's text.
func loadXDSTLSComponent(t *testing.T, edit func(file, text string) string) []object {
	t.Helper()
	dir := filepath.Join(k8sDir, "xds-tls")
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var comp xdsTLSComponent
	dec := yaml3.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&comp); err != nil {
		t.Fatalf("xds-tls/kustomization.yaml: %v", err)
	}
	if comp.APIVersion != "kustomize.config.k8s.io/v1alpha1" || comp.Kind != "Component" || len(comp.Patches) == 0 {
		t.Fatalf("xds-tls/kustomization.yaml: %+v, want a Component with patches", comp)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	var objs []object
	for _, p := range comp.Patches {
		listed[p.Path] = true
		b, err := os.ReadFile(filepath.Join(dir, p.Path))
		if err != nil {
			t.Fatalf("patch %s: %v", p.Path, err)
		}
		text := string(b)
		if edit != nil {
			text = edit(p.Path, text)
		}
		o, err := decodeManifests("xds-tls/"+p.Path, []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !listed[b] {
			t.Errorf("xds-tls/%s is not listed in its kustomization.yaml", b)
		}
	}
	return objs
}

// TestXDSTLSComponent checks the optional component deploy/k8s/xds-tls
// offline (no kustomize needed): its patches decode strictly, reach the
// control plane, the edge and every sidecar of the base, use only
// variables the binaries read, and give the proxies only the CA.
func TestXDSTLSComponent(t *testing.T) {
	_, base := loadAll(t)
	problems, env := xdsTLSProblems(base, loadXDSTLSComponent(t, nil))
	for _, p := range problems {
		t.Error(p)
	}
	if len(env) < 5 {
		t.Errorf("%d containers patched, want the control plane, the edge and three sidecars", len(env))
	}
	if !testing.Short() {
		for where, names := range env {
			bin := "sidecar"
			switch {
			case strings.Contains(where, "container controlplane"):
				bin = "controlplane"
			case strings.Contains(where, "container edge"):
				bin = "edge"
			}
			for _, p := range (invocation{where: "xds-tls " + where, argv: []string{bin}, env: names}).check(t) {
				t.Error(p)
			}
		}
	}

	t.Run("a missed sidecar, a proxy given the key, a clash", func(t *testing.T) {
		objs := loadXDSTLSComponent(t, func(file, text string) string {
			if file != "proxies.yaml" {
				return text
			}
			docs := strings.Split(text, "---\n")
			var kept []string
			for _, d := range docs {
				switch {
				case strings.Contains(d, "name: stats\n"):
					continue // stats' sidecar not patched
				case strings.Contains(d, "name: sync\n"):
					d = strings.Replace(d, "items: [{key: ca.crt, path: ca.crt}]", "items: [{key: ca.crt, path: ca.crt}, {key: tls.key, path: tls.key}]", 1)
				case strings.Contains(d, "name: edge\n"):
					d = strings.ReplaceAll(d, "name: xds-ca", "name: identity")
				}
				kept = append(kept, d)
			}
			return strings.Join(kept, "---\n")
		})
		got, _ := xdsTLSProblems(base, objs)
		all := strings.Join(got, "\n")
		for _, w := range []string{
			"Deployment/stats container sidecar: not patched by the xds-tls component",
			"Deployment/sync container sidecar: volume xds-ca must project only ca.crt",
			"Deployment/edge container edge: volume identity already exists in the base",
		} {
			if !strings.Contains(all, w) {
				t.Errorf("problems of a broken component:\n%s\nwant %q", all, w)
			}
		}
	})
}
