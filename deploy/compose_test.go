package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/petmesh/petmesh/deploy"
)

const composeFile = "../docker-compose.yml"

// dockerCompose returns the docker-compose binary, skipping the test when
// it is missing unless PETMESH_REQUIRE_REAL=1.
func dockerCompose(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("docker-compose")
	if err != nil {
		if os.Getenv("PETMESH_REQUIRE_REAL") == "1" {
			t.Fatalf("docker-compose not on PATH and PETMESH_REQUIRE_REAL=1; install it with scripts/deps.sh (make deps)")
		}
		t.Skip("docker-compose not on PATH; skipping compose validation")
	}
	return p
}

type composeService struct {
	Image       string                       `yaml:"image"`
	Build       any                          `yaml:"build"`
	Command     []string                     `yaml:"command"`
	NetworkMode string                       `yaml:"network_mode"`
	Environment map[string]string            `yaml:"environment"`
	DependsOn   map[string]map[string]string `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	Volumes []string `yaml:"volumes"`
	// Ports come back as "host:container/proto" strings or long-form maps.
	Ports []any `yaml:"ports"`
}

type composeProject struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

// resolvedCompose returns the resolved project (anchors and merges
// applied) as `docker-compose config` prints it.
func resolvedCompose(t *testing.T, file string) composeProject {
	t.Helper()
	bin := dockerCompose(t)
	cmd := exec.Command(bin, "-f", file, "config")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker-compose config: %v", err)
	}
	var p composeProject
	dec := yaml.NewDecoder(strings.NewReader(string(out)))
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("decode resolved compose file: %v\n%s", err, out)
	}
	return p
}

func TestComposeConfigIsValid(t *testing.T) {
	dockerCompose(t)
	// A broken file must fail the same check, or the check proves nothing.
	bad := filepath.Join(t.TempDir(), "docker-compose.yml")
	if err := os.WriteFile(bad, []byte("services:\n  x:\n    image: a\n    depends_on:\n      y: {condition: service_healthy}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("docker-compose", "-f", bad, "config", "-q").CombinedOutput(); err == nil {
		t.Fatalf("docker-compose accepted a dependency on an undefined service:\n%s", out)
	}
	if out, err := exec.Command("docker-compose", "-f", composeFile, "config", "-q").CombinedOutput(); err != nil {
		t.Fatalf("docker-compose -f docker-compose.yml config -q: %v\n%s", err, out)
	}
}

func TestComposeTopology(t *testing.T) {
	p := resolvedCompose(t, composeFile)

	apps := map[string]string{ // app service -> its binary
		"controlplane": "controlplane", "edge": "edge",
		"pets-1": "pets", "pets-2": "pets", "sync": "sync", "stats": "stats",
		"petfinder-standin": "petfinder-standin",
	}
	sidecars := map[string]string{ // sidecar service -> app whose namespace it shares
		"pets-1-sidecar": "pets-1", "pets-2-sidecar": "pets-2", "sync-sidecar": "sync", "stats-sidecar": "stats",
	}
	infra := map[string]string{ // service -> image prefix
		"consul": "hashicorp/consul:", "jaeger": "jaegertracing/jaeger:2.", "prometheus": "prom/prometheus:", "grafana": "grafana/grafana:",
	}

	for name, bin := range apps {
		t.Run("app "+name, func(t *testing.T) {
			s, ok := p.Services[name]
			if !ok {
				t.Fatalf("service %s missing", name)
			}
			if s.Image != "petmesh:dev" || s.Build == nil {
				t.Errorf("image %q build %v: want the petmesh image built from the Dockerfile", s.Image, s.Build)
			}
			if len(s.Command) == 0 || s.Command[0] != bin {
				t.Errorf("command %v, want %s", s.Command, bin)
			}
			if _, ok := deploy.Binaries()[bin]; !ok {
				t.Errorf("binary %s is not in the image", bin)
			}
			if s.Healthcheck == nil || len(s.Healthcheck.Test) < 2 {
				t.Errorf("no health check")
			}
			if s.Environment["OTEL_EXPORTER_OTLP_ENDPOINT"] != "http://jaeger:4318" {
				t.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT = %q", s.Environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
			}
		})
	}
	for name, app := range sidecars {
		t.Run("sidecar "+name, func(t *testing.T) {
			s, ok := p.Services[name]
			if !ok {
				t.Fatalf("service %s missing", name)
			}
			if s.NetworkMode != "service:"+app {
				t.Errorf("network_mode %q, want service:%s", s.NetworkMode, app)
			}
			if len(s.Command) == 0 || s.Command[0] != "sidecar" {
				t.Errorf("command %v, want sidecar", s.Command)
			}
			if len(s.Ports) > 0 {
				t.Errorf("a sidecar sharing %s's namespace cannot publish ports: %v", app, s.Ports)
			}
			// Joining the namespace needs the app's container started;
			// waiting for it to be healthy is optional.
			if c := s.DependsOn[app]["condition"]; c != "service_healthy" && c != "service_started" {
				t.Errorf("depends_on %v: want %s service_started or service_healthy", s.DependsOn, app)
			}
			for _, k := range []string{"SIDECAR_XDS_ADDR", "SIDECAR_SERVICE", "SIDECAR_APP_ADDR"} {
				if s.Environment[k] == "" {
					t.Errorf("%s not set", k)
				}
			}
			// The app's public listener is reachable only through its sidecar.
			appAddr := strings.ToUpper(strings.SplitN(app, "-", 2)[0]) + "_ADDR" // PETS_ADDR, SYNC_ADDR, ...
			if got := p.Services[app].Environment[appAddr]; !strings.HasPrefix(got, "127.0.0.1:") || got != s.Environment["SIDECAR_APP_ADDR"] {
				t.Errorf("%s=%q: want a loopback address equal to SIDECAR_APP_ADDR %q", appAddr, got, s.Environment["SIDECAR_APP_ADDR"])
			}
		})
	}
	for name, image := range infra {
		t.Run("infra "+name, func(t *testing.T) {
			s, ok := p.Services[name]
			if !ok {
				t.Fatalf("service %s missing", name)
			}
			if !strings.HasPrefix(s.Image, image) {
				t.Errorf("image %q, want %s*", s.Image, image)
			}
			if s.Healthcheck == nil {
				t.Errorf("no health check")
			}
		})
	}

	t.Run("depends_on conditions", func(t *testing.T) {
		for name, s := range p.Services {
			for dep, cond := range s.DependsOn {
				d, ok := p.Services[dep]
				if !ok {
					t.Errorf("%s depends on undefined %s", name, dep)
					continue
				}
				switch cond["condition"] {
				case "service_healthy":
					if d.Healthcheck == nil {
						t.Errorf("%s waits for %s to be healthy, but %s has no health check", name, dep, dep)
					}
				case "service_started", "service_completed_successfully":
				default:
					t.Errorf("%s -> %s: no condition (%v)", name, dep, cond)
				}
			}
		}
	})

	t.Run("observability mounts", func(t *testing.T) {
		mounts := func(svc string) string { return strings.Join(p.Services[svc].Volumes, "\n") }
		for svc, want := range map[string][]string{
			"prometheus": {"observability/prometheus:/etc/prometheus", "prometheus-data:/prometheus"},
			"grafana":    {"observability/grafana/provisioning:/etc/grafana/provisioning", "observability/grafana/dashboards:/var/lib/grafana/dashboards/petmesh", "grafana-data:"},
			"jaeger":     {"observability/jaeger/config.yaml:/etc/jaeger/config.yaml"},
		} {
			for _, w := range want {
				if !strings.Contains(mounts(svc), w) {
					t.Errorf("%s: no mount containing %q in\n%s", svc, w, mounts(svc))
				}
			}
		}
		for _, v := range []string{"prometheus-data", "grafana-data", "consul-data"} {
			if _, ok := p.Volumes[v]; !ok {
				t.Errorf("named volume %s missing", v)
			}
		}
	})

	t.Run("prometheus scrapes every compose process", func(t *testing.T) {
		raw, err := os.ReadFile("../observability/prometheus/prometheus.yml")
		if err != nil {
			t.Fatal(err)
		}
		for _, host := range []string{"edge:", "controlplane:", "pets-1:", "pets-2:", "sync:", "stats:", "jaeger:", "consul:"} {
			svc := strings.TrimSuffix(host, ":")
			if _, ok := p.Services[svc]; !ok {
				t.Errorf("prometheus.yml scrapes %s, which is not a compose service", svc)
			}
			if !strings.Contains(string(raw), `"`+host) {
				t.Errorf("prometheus.yml does not scrape %s", svc)
			}
		}
	})
}

func TestDockerfileBuildsEveryBinary(t *testing.T) {
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	for bin, pkg := range deploy.Binaries() {
		if !strings.Contains(df, bin+"="+pkg) {
			t.Errorf("Dockerfile does not build %s from %s", bin, pkg)
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "FROM golang:", "distroless/static", "USER 65532"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
