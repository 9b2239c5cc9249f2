package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	yaml3 "gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/testutil/promtest"
)

const k8sDir = "k8s"

// kustomization is the subset of kustomize's Kustomization this project
// uses; decoding is strict so that a typo is an error.
type kustomization struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Namespace  string `yaml:"namespace"`
	Labels     []struct {
		Pairs            map[string]string `yaml:"pairs"`
		IncludeSelectors bool              `yaml:"includeSelectors"`
	} `yaml:"labels"`
	Resources []string `yaml:"resources"`
	Images    []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
	} `yaml:"images"`
}

func loadKustomization(t *testing.T) kustomization {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	dec := yaml3.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	return k
}

// object is one decoded manifest.
type object struct {
	file string
	kind string
	name string
	obj  any
}

// newObject returns an empty typed object for apiVersion/kind.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, nil
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1/PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, nil
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "rbac.authorization.k8s.io/v1/Role":
		return &rbacv1.Role{}, nil
	case "rbac.authorization.k8s.io/v1/RoleBinding":
		return &rbacv1.RoleBinding{}, nil
	}
	return nil, fmt.Errorf("unsupported apiVersion %q kind %q", apiVersion, kind)
}

// decodeManifests strictly decodes every document of a multi-document
// YAML stream into its k8s.io/api type: unknown or duplicate fields and
// wrong types are errors.
func decodeManifests(file string, raw []byte) ([]object, error) {
	var out []object
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: split documents: %w", file, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("%s document %d: %w", file, i+1, err)
		}
		obj, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			return nil, fmt.Errorf("%s document %d: %w", file, i+1, err)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("%s document %d (%s): %w", file, i+1, tm.Kind, err)
		}
		name := ""
		if m, ok := obj.(metav1.Object); ok {
			name = m.GetName()
		}
		if name == "" {
			return nil, fmt.Errorf("%s document %d (%s): no metadata.name", file, i+1, tm.Kind)
		}
		out = append(out, object{file: file, kind: tm.Kind, name: name, obj: obj})
	}
	return out, nil
}

func stripComments(b []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func loadAll(t *testing.T) (kustomization, []object) {
	t.Helper()
	k := loadKustomization(t)
	var objs []object
	for _, r := range k.Resources {
		raw, err := os.ReadFile(filepath.Join(k8sDir, r))
		if err != nil {
			t.Fatalf("resource %s listed in kustomization.yaml: %v", r, err)
		}
		o, err := decodeManifests(r, raw)
		if err != nil {
			t.Fatal(err)
		}
		if len(o) == 0 {
			t.Errorf("resource %s holds no manifest", r)
		}
		objs = append(objs, o...)
	}
	return k, objs
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	k := loadKustomization(t)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" || k.Namespace != "petmesh" {
		t.Errorf("kustomization header: %+v", k)
	}
	listed := map[string]bool{}
	for _, r := range k.Resources {
		if listed[r] {
			t.Errorf("resource %s listed twice", r)
		}
		listed[r] = true
		if _, err := os.Stat(filepath.Join(k8sDir, r)); err != nil {
			t.Errorf("resource %s: %v", r, err)
		}
	}
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !listed[b] {
			t.Errorf("%s is not listed in kustomization.yaml", b)
		}
	}
	if len(k.Images) != 1 || k.Images[0].Name != "petmesh" {
		t.Errorf("images: %+v, want one entry for petmesh", k.Images)
	}
}

func TestManifestsDecodeStrictly(t *testing.T) {
	_, objs := loadAll(t)
	seen := map[string]string{}
	for _, o := range objs {
		key := o.kind + "/" + o.name
		if prev, dup := seen[key]; dup {
			t.Errorf("%s defined in %s and %s", key, prev, o.file)
		}
		seen[key] = o.file
	}
	for _, want := range []string{
		"Namespace/petmesh", "ConfigMap/petmesh-routes", "ConfigMap/prometheus-config", "ConfigMap/jaeger-config",
		"Deployment/controlplane", "Deployment/edge", "Deployment/pets", "Deployment/sync", "Deployment/stats",
		"Service/controlplane", "Service/edge", "Service/pets", "Service/sync", "Service/stats",
		"StatefulSet/consul", "Service/consul", "Deployment/prometheus", "Deployment/jaeger",
	} {
		if _, ok := seen[want]; !ok {
			t.Errorf("%s missing", want)
		}
	}
}

// TestStrictDecodingRejects shows that the decoding above can fail.
func TestStrictDecodingRejects(t *testing.T) {
	good := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 1\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i}]\n"
	if _, err := decodeManifests("good", []byte(good)); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
	tests := []struct {
		desc, doc string
	}{
		{desc: "unknown field", doc: strings.Replace(good, "replicas: 1", "replica: 1", 1)},
		{desc: "wrong type", doc: strings.Replace(good, "replicas: 1", "replicas: two", 1)},
		{desc: "duplicate field", doc: strings.Replace(good, "replicas: 1", "replicas: 1\n  replicas: 2", 1)},
		{desc: "unknown container field", doc: strings.Replace(good, "image: i", "image: i, imagee: j", 1)},
		{desc: "unsupported kind", doc: strings.Replace(good, "kind: Deployment", "kind: Deploymnet", 1)},
		{desc: "no name", doc: strings.Replace(good, "metadata: {name: x}", "metadata: {}", 1)},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := decodeManifests("bad", []byte(tc.doc)); err == nil {
				t.Errorf("decoded a manifest with %s", tc.desc)
			}
		})
	}
}

// podSpecs returns the pod template of every Deployment and StatefulSet.
func podSpecs(objs []object) map[string]corev1.PodTemplateSpec {
	out := map[string]corev1.PodTemplateSpec{}
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			out["Deployment/"+o.name] = v.Spec.Template
		case *appsv1.StatefulSet:
			out["StatefulSet/"+o.name] = v.Spec.Template
		}
	}
	return out
}

func TestWorkloads(t *testing.T) {
	_, objs := loadAll(t)
	withSidecar := map[string]bool{"pets": true, "sync": true, "stats": true}
	for _, o := range objs {
		var (
			tmpl     corev1.PodTemplateSpec
			selector *metav1.LabelSelector
			replicas *int32
		)
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			tmpl, selector, replicas = v.Spec.Template, v.Spec.Selector, v.Spec.Replicas
		case *appsv1.StatefulSet:
			tmpl, selector, replicas = v.Spec.Template, v.Spec.Selector, v.Spec.Replicas
		default:
			continue
		}
		t.Run(o.kind+"/"+o.name, func(t *testing.T) {
			if selector == nil || len(selector.MatchLabels) == 0 {
				t.Fatal("no selector")
			}
			for k, v := range selector.MatchLabels {
				if tmpl.Labels[k] != v {
					t.Errorf("selector %s=%s does not match the pod labels %v", k, v, tmpl.Labels)
				}
			}
			if replicas == nil || *replicas < 1 {
				t.Errorf("replicas %v", replicas)
			}
			names := map[string]bool{}
			for _, c := range tmpl.Spec.Containers {
				names[c.Name] = true
				ports := map[string]bool{}
				for _, p := range c.Ports {
					ports[p.Name] = true
				}
				if c.ReadinessProbe == nil || c.LivenessProbe == nil {
					t.Errorf("container %s: want readiness and liveness probes", c.Name)
				}
				for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
					if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.Type == intstr.String && !ports[p.HTTPGet.Port.StrVal] {
						t.Errorf("container %s: probe port %q is not a declared port", c.Name, p.HTTPGet.Port.StrVal)
					}
				}
				for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
					if _, ok := c.Resources.Requests[r]; !ok {
						t.Errorf("container %s: no %s request", c.Name, r)
					}
					if _, ok := c.Resources.Limits[r]; !ok {
						t.Errorf("container %s: no %s limit", c.Name, r)
					}
				}
				if strings.HasPrefix(c.Image, "petmesh") {
					if len(c.Args) != 1 {
						t.Errorf("container %s: args %v, want the binary name", c.Name, c.Args)
					}
					if c.SecurityContext == nil || c.SecurityContext.RunAsNonRoot == nil || !*c.SecurityContext.RunAsNonRoot {
						t.Errorf("container %s: not forced to run as non-root", c.Name)
					}
				}
			}
			if o.kind == "Deployment" && withSidecar[o.name] {
				if !names["sidecar"] || !names[o.name] || len(tmpl.Spec.Containers) != 2 {
					t.Errorf("want containers %s and sidecar, have %v", o.name, names)
				}
				for _, c := range tmpl.Spec.Containers {
					env := map[string]string{}
					for _, e := range c.Env {
						env[e.Name] = e.Value
					}
					if c.Name == "sidecar" {
						if env["SIDECAR_SERVICE"] != o.name || env["SIDECAR_XDS_ADDR"] == "" || !strings.HasPrefix(env["SIDECAR_APP_ADDR"], "127.0.0.1:") {
							t.Errorf("sidecar env: %v", env)
						}
					}
				}
			}
		})
	}

	t.Run("control plane: two replicas on Consul", func(t *testing.T) {
		for _, o := range objs {
			d, ok := o.obj.(*appsv1.Deployment)
			if !ok || o.name != "controlplane" {
				continue
			}
			if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
				t.Errorf("replicas %v, want 2", d.Spec.Replicas)
			}
			env := map[string]string{}
			for _, e := range d.Spec.Template.Spec.Containers[0].Env {
				env[e.Name] = e.Value
			}
			if env["CONTROLPLANE_REGISTRY"] != "consul" || env["CONTROLPLANE_CONSUL_ADDR"] == "" {
				t.Errorf("control plane not on Consul: %v", env)
			}
			return
		}
		t.Error("no controlplane Deployment")
	})
}

// TestReferences checks that Services select pods and name their ports,
// and that every ConfigMap, Secret and PVC a pod uses is defined.
func TestReferences(t *testing.T) {
	_, objs := loadAll(t)
	pods := podSpecs(objs)
	defined := map[string]map[string]bool{} // kind/name -> keys (ConfigMap, Secret)
	for _, o := range objs {
		keys := map[string]bool{}
		switch v := o.obj.(type) {
		case *corev1.ConfigMap:
			for k := range v.Data {
				keys[k] = true
			}
		case *corev1.Secret:
			for k := range v.StringData {
				keys[k] = true
			}
			for k := range v.Data {
				keys[k] = true
			}
		}
		defined[o.kind+"/"+o.name] = keys
	}
	for _, o := range objs {
		svc, ok := o.obj.(*corev1.Service)
		if !ok {
			continue
		}
		t.Run("Service/"+o.name, func(t *testing.T) {
			var match []corev1.PodTemplateSpec
			for _, p := range pods {
				ok := len(svc.Spec.Selector) > 0
				for k, v := range svc.Spec.Selector {
					if p.Labels[k] != v {
						ok = false
					}
				}
				if ok {
					match = append(match, p)
				}
			}
			if len(match) == 0 {
				t.Fatalf("selector %v matches no pod template", svc.Spec.Selector)
			}
			for _, sp := range svc.Spec.Ports {
				if sp.TargetPort.Type != intstr.String {
					continue
				}
				found := false
				for _, c := range match[0].Spec.Containers {
					for _, cp := range c.Ports {
						found = found || cp.Name == sp.TargetPort.StrVal
					}
				}
				if !found {
					t.Errorf("port %s: targetPort %q is not a container port", sp.Name, sp.TargetPort.StrVal)
				}
			}
		})
	}
	var keys []string
	for k := range pods {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := pods[k]
		t.Run("refs of "+k, func(t *testing.T) {
			for _, c := range p.Spec.Containers {
				for _, e := range c.Env {
					if e.ValueFrom == nil {
						continue
					}
					if r := e.ValueFrom.ConfigMapKeyRef; r != nil && !defined["ConfigMap/"+r.Name][r.Key] {
						t.Errorf("env %s: ConfigMap %s key %s not defined", e.Name, r.Name, r.Key)
					}
					if r := e.ValueFrom.SecretKeyRef; r != nil && !defined["Secret/"+r.Name][r.Key] {
						t.Errorf("env %s: Secret %s key %s not defined", e.Name, r.Name, r.Key)
					}
				}
			}
			for _, v := range p.Spec.Volumes {
				if v.ConfigMap != nil && defined["ConfigMap/"+v.ConfigMap.Name] == nil {
					t.Errorf("volume %s: ConfigMap %s not defined", v.Name, v.ConfigMap.Name)
				}
				if v.PersistentVolumeClaim != nil && defined["PersistentVolumeClaim/"+v.PersistentVolumeClaim.ClaimName] == nil {
					t.Errorf("volume %s: PVC %s not defined", v.Name, v.PersistentVolumeClaim.ClaimName)
				}
			}
		})
	}
}

func configMap(t *testing.T, objs []object, name, key string) string {
	t.Helper()
	for _, o := range objs {
		if cm, ok := o.obj.(*corev1.ConfigMap); ok && o.name == name {
			v, ok := cm.Data[key]
			if !ok {
				t.Fatalf("ConfigMap %s has no key %s", name, key)
			}
			return v
		}
	}
	t.Fatalf("ConfigMap %s not found", name)
	return ""
}

func secretData(t *testing.T, objs []object, name, key string) string {
	t.Helper()
	for _, o := range objs {
		if sec, ok := o.obj.(*corev1.Secret); ok && o.name == name {
			if v, ok := sec.StringData[key]; ok {
				return v
			}
			if v, ok := sec.Data[key]; ok {
				return string(v)
			}
			t.Fatalf("Secret %s has no key %s", name, key)
		}
	}
	t.Fatalf("Secret %s not found", name)
	return ""
}

// TestConfigMaps checks that the ConfigMaps carry valid configuration and
// stay identical to the files under observability/.
func TestConfigMaps(t *testing.T) {
	_, objs := loadAll(t)
	tests := []struct {
		desc, cm, key, file string
	}{
		{desc: "alert rules", cm: "prometheus-config", key: "alerts.yml", file: "../observability/prometheus/alerts.yml"},
		{desc: "jaeger config", cm: "jaeger-config", key: "config.yaml", file: "../observability/jaeger/config.yaml"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			want, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if got := configMap(t, objs, tc.cm, tc.key); got != string(want) {
				t.Errorf("ConfigMap %s key %s differs from %s; copy the file into deploy/k8s", tc.cm, tc.key, tc.file)
			}
		})
	}

	// The dev identities: the edge's users and service accounts are the
	// ones of `make run`, whose passwords and secrets README.md lists.
	for _, key := range []string{"users.yaml", "service-accounts.yaml"} {
		t.Run("secret petmesh-identity "+key, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join("..", "dev", "config", key))
			if err != nil {
				t.Fatal(err)
			}
			if got := secretData(t, objs, "petmesh-identity", key); got != string(want) {
				t.Errorf("Secret petmesh-identity key %s differs from dev/config/%s; copy the file into deploy/k8s/identity.yaml", key, key)
			}
		})
	}

	t.Run("route table", func(t *testing.T) {
		data := configMap(t, objs, "petmesh-routes", "routes.yaml")
		if _, err := routes.Load([]byte(data), routes.ValidateOptions{KnownServices: []string{"pets", "sync", "stats"}}); err != nil {
			t.Errorf("routes.yaml in ConfigMap petmesh-routes: %v", err)
		}
	})

	t.Run("prometheus config", func(t *testing.T) {
		bin := promtest.PromtoolBin(t)
		dir := t.TempDir()
		cfg := strings.ReplaceAll(configMap(t, objs, "prometheus-config", "prometheus.yml"), "/etc/prometheus/alerts.yml", "alerts.yml")
		// Debian's promtool is built without Kubernetes service discovery;
		// check everything else (relabelling, jobs, rules) with the pod
		// discovery swapped for a static target.
		const sd = "    kubernetes_sd_configs:\n      - role: pod\n        namespaces:\n          own_namespace: true\n"
		if !strings.Contains(cfg, sd) {
			t.Fatalf("prometheus.yml has no pod discovery block %q", sd)
		}
		// The dashboards group sidecar and app series by the target labels
		// service and petmesh_instance, as in the other topologies.
		var parsed struct {
			ScrapeConfigs []struct {
				RelabelConfigs []struct {
					TargetLabel string `yaml:"target_label"`
				} `yaml:"relabel_configs"`
			} `yaml:"scrape_configs"`
		}
		if err := yaml3.Unmarshal([]byte(cfg), &parsed); err != nil {
			t.Fatal(err)
		}
		set := map[string]bool{}
		for _, sc := range parsed.ScrapeConfigs {
			for _, rc := range sc.RelabelConfigs {
				set[rc.TargetLabel] = true
			}
		}
		for _, l := range []string{"job", "service", "petmesh_instance"} {
			if !set[l] {
				t.Errorf("no relabelling sets the target label %s", l)
			}
		}
		cfg = strings.Replace(cfg, sd, "    static_configs:\n      - targets: [\"pod:7101\"]\n", 1)
		for name, body := range map[string]string{
			"prometheus.yml": cfg,
			"alerts.yml":     configMap(t, objs, "prometheus-config", "alerts.yml"),
		} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command(bin, "check", "config", "prometheus.yml")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatal(err)
			}
			t.Errorf("promtool check config: %v\n%s", err, out)
		}
	})
}
