package deploy_test

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// listensOn reports whether one of the listen addresses in env (values of
// variables ending in _ADDR) accepts connections from other hosts on port:
// ":port" or "0.0.0.0:port".
func listensOn(env map[string]string, port string) bool {
	for k, v := range env {
		if !strings.HasSuffix(k, "_ADDR") {
			continue
		}
		host, p, err := net.SplitHostPort(v)
		if err == nil && p == port && (host == "" || host == "0.0.0.0" || host == "::") {
			return true
		}
	}
	return false
}

// TestComposeScrapeTargetsListen: every petmesh target of the compose
// Prometheus configuration is a port that the service (or a sidecar in
// its network namespace) listens on for other containers.
func TestComposeScrapeTargetsListen(t *testing.T) {
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			NetworkMode string            `yaml:"network_mode"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	promRaw, err := os.ReadFile("../observability/prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(promRaw, &prom); err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				host, port, err := net.SplitHostPort(tg)
				if err != nil {
					t.Errorf("job %s target %q: %v", sc.JobName, tg, err)
					continue
				}
				s, ok := f.Services[host]
				if !ok || !strings.HasPrefix(s.Image, "petmesh:") {
					continue // infrastructure (Consul, Jaeger, Prometheus itself)
				}
				env := map[string]string{}
				for name, o := range f.Services {
					if name == host || o.NetworkMode == "service:"+host {
						for k, v := range o.Environment {
							env[name+"/"+k] = v
						}
					}
				}
				if !listensOn(env, port) {
					t.Errorf("job %s scrapes %s, but nothing in %s's network namespace listens on 0.0.0.0:%s", sc.JobName, tg, host, port)
				}
				checked++
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d petmesh targets checked", checked)
	}
}

// TestK8sContainerPortsListen: every declared container port of a petmesh
// container is a listen address of that container (its *_ADDR variables),
// bound to all interfaces, so Services, probes and Prometheus reach it.
func TestK8sContainerPortsListen(t *testing.T) {
	_, objs := loadAll(t)
	checked := 0
	for key, pod := range podSpecs(objs) {
		for _, c := range pod.Spec.Containers {
			if !strings.HasPrefix(c.Image, "petmesh:") {
				continue
			}
			env := map[string]string{}
			for _, e := range c.Env {
				env[e.Name] = e.Value
			}
			for _, p := range c.Ports {
				if !listensOn(env, strconv.Itoa(int(p.ContainerPort))) {
					t.Errorf("%s container %s: port %s (%d) is not one of its listen addresses bound to 0.0.0.0", key, c.Name, p.Name, p.ContainerPort)
				}
				checked++
			}
		}
	}
	if checked < 12 {
		t.Errorf("only %d container ports checked", checked)
	}
}
