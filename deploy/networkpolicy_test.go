package deploy_test

import (
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// selects reports whether sel (nil: no selector given) matches lbls.
func selects(t *testing.T, sel *metav1.LabelSelector, lbls map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %v: %v", sel, err)
	}
	return s.Matches(labels.Set(lbls))
}

// portNumber resolves a policy port (number or container port name)
// against the target pod's containers.
func portNumber(pod corev1.PodTemplateSpec, p networkingv1.NetworkPolicyPort) int32 {
	if p.Port == nil {
		return -1 // every port
	}
	if p.Port.IntValue() > 0 {
		return int32(p.Port.IntValue())
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == p.Port.String() {
				return cp.ContainerPort
			}
		}
	}
	return 0 // a name the pod does not have: matches nothing
}

// admits evaluates the ingress NetworkPolicies of the namespace as a
// plugin enforcing them would (pod selectors only; every policy here
// has no namespace or IP-block peers, which the test checks): may a pod
// labelled src connect to pod dst on port?
func admits(t *testing.T, pols []*networkingv1.NetworkPolicy, src map[string]string, dst corev1.PodTemplateSpec, port int32) bool {
	t.Helper()
	isolated := false
	for _, pol := range pols {
		if !selects(t, &pol.Spec.PodSelector, dst.Labels) {
			continue
		}
		isolated = true
		for _, rule := range pol.Spec.Ingress {
			fromOK := len(rule.From) == 0
			for _, peer := range rule.From {
				if peer.NamespaceSelector != nil || peer.IPBlock != nil {
					t.Fatalf("policy %s: only pod-selector peers are expected", pol.Name)
				}
				if peer.PodSelector != nil && selects(t, peer.PodSelector, src) {
					fromOK = true
				}
			}
			portOK := len(rule.Ports) == 0
			for _, p := range rule.Ports {
				if n := portNumber(dst, p); n == -1 || n == port {
					portOK = true
				}
			}
			if fromOK && portOK {
				return true
			}
		}
	}
	return !isolated
}

// TestNetworkPolicies: only mesh proxies (the edge and pods with a
// sidecar) reach the control plane's xDS port, only Prometheus its API;
// the services' application ports are reachable from no other pod, their
// sidecar's inbound port from mesh proxies only.
func TestNetworkPolicies(t *testing.T) {
	_, objs := loadAll(t)
	var pols []*networkingv1.NetworkPolicy
	for _, o := range objs {
		if p, ok := o.obj.(*networkingv1.NetworkPolicy); ok {
			pols = append(pols, p)
		}
	}
	if len(pols) == 0 {
		t.Fatal("no NetworkPolicy in deploy/k8s")
	}
	pods := podSpecs(objs)
	byName := map[string]corev1.PodTemplateSpec{}
	for _, p := range pods {
		byName[p.Labels["app.kubernetes.io/name"]] = p
	}
	// Every pod that runs a proxy carries the label, and no other.
	for key, p := range pods {
		proxy := p.Labels["app.kubernetes.io/name"] == "edge"
		for _, c := range p.Spec.Containers {
			if c.Name == "sidecar" {
				proxy = true
			}
		}
		if got := p.Labels["petmesh.io/mesh-proxy"] == "true"; got != proxy {
			t.Errorf("%s: petmesh.io/mesh-proxy label %v, want %v (runs a mesh proxy: %v)", key, got, proxy, proxy)
		}
	}
	cp, ok := byName["controlplane"]
	if !ok {
		t.Fatal("no controlplane pod")
	}
	for name, src := range byName {
		proxy := src.Labels["petmesh.io/mesh-proxy"] == "true"
		if got := admits(t, pols, src.Labels, cp, 18000); got != proxy {
			t.Errorf("%s → controlplane xDS 18000: admitted %v, want %v", name, got, proxy)
		}
		if got := admits(t, pols, src.Labels, cp, 18080); got != (name == "prometheus") {
			t.Errorf("%s → controlplane API 18080: admitted %v, want only Prometheus", name, got)
		}
	}
	// An unlabelled pod (anything else in the namespace) is refused.
	stranger := map[string]string{"app.kubernetes.io/name": "debug"}
	if admits(t, pols, stranger, cp, 18000) {
		t.Error("an unlabelled pod reaches the control plane's xDS port")
	}
	for _, svc := range []string{"pets", "sync", "stats"} {
		dst, ok := byName[svc]
		if !ok {
			t.Fatalf("no %s pod", svc)
		}
		var appPort int32
		for _, c := range dst.Spec.Containers {
			for _, e := range c.Env {
				if e.Name == strings.ToUpper(svc)+"_ADDR" {
					_, p, _ := strings.Cut(e.Value, ":")
					n, _ := strconv.Atoi(p)
					appPort = int32(n)
				}
			}
		}
		if appPort == 0 {
			t.Fatalf("%s: no %s_ADDR", svc, strings.ToUpper(svc))
		}
		for name, src := range byName {
			if admits(t, pols, src.Labels, dst, appPort) {
				t.Errorf("%s → %s app port %d admitted; only its own sidecar (loopback) may", name, svc, appPort)
			}
			proxy := src.Labels["petmesh.io/mesh-proxy"] == "true"
			if got := admits(t, pols, src.Labels, dst, 15006); got != proxy {
				t.Errorf("%s → %s sidecar inbound 15006: admitted %v, want %v", name, svc, got, proxy)
			}
		}
		if admits(t, pols, stranger, dst, 15006) {
			t.Errorf("an unlabelled pod reaches %s's sidecar inbound", svc)
		}
		if !admits(t, pols, byName["prometheus"].Labels, dst, 15000) {
			t.Errorf("Prometheus cannot scrape %s's sidecar admin", svc)
		}
	}
}
