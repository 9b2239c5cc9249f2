package observability_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/petmesh/petmesh/internal/testutil/promtest"
	"github.com/petmesh/petmesh/observability"
	"github.com/petmesh/petmesh/observability/dashboards"
)

// promtool runs promtool with args in dir and returns its output; it fails
// the test when wantOK and promtool fails, and vice versa.
func promtool(t *testing.T, dir string, wantOK bool, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtest.PromtoolBin(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if wantOK && err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if !wantOK && err == nil {
		t.Fatalf("promtool %s succeeded, want a failure\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

func TestAlertRulesCheck(t *testing.T) {
	promtool(t, "prometheus", true, "check", "rules", "alerts.yml")
}

func TestAlertRulesUnitTests(t *testing.T) {
	promtool(t, "prometheus", true, "test", "rules", "alerts_test.yml")
}

func TestAlertRulesCoverTheIssue(t *testing.T) {
	rules, err := observability.AlertRules()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]observability.Rule{}
	for _, r := range rules {
		byName[r.Alert] = r
	}
	tests := []struct {
		desc, alert, metric string
	}{
		{desc: "edge 5xx ratio", alert: "PetmeshEdgeHigh5xxRatio", metric: "petmesh_dataplane_requests_total"},
		{desc: "edge p99 latency", alert: "PetmeshEdgeHighLatencyP99", metric: "petmesh_dataplane_request_duration_seconds_bucket"},
		{desc: "circuit open", alert: "PetmeshCircuitOpen", metric: "petmesh_dataplane_circuit_open"},
		{desc: "proxy nacking", alert: "PetmeshProxyNACKing", metric: "petmesh_xds_nacks_total"},
		{desc: "proxy out of date", alert: "PetmeshProxyStale", metric: "petmesh_controlplane_proxy_stale"},
		{desc: "no sync success for 26h", alert: "PetmeshSyncNoSuccess", metric: "petmesh_sync_last_success_timestamp_seconds"},
		{desc: "instance down", alert: "PetmeshInstanceDown", metric: "up{"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r, ok := byName[tc.alert]
			if !ok {
				t.Fatalf("alert %s missing from alerts.yml", tc.alert)
			}
			if !strings.Contains(r.Expr, tc.metric) {
				t.Errorf("alert %s does not use %s: %s", tc.alert, tc.metric, r.Expr)
			}
		})
	}
	unit, err := os.ReadFile(filepath.Join("prometheus", "alerts_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if !strings.Contains(string(unit), "alertname: "+r.Alert+"\n") {
			t.Errorf("alert %s has no unit test in alerts_test.yml", r.Alert)
		}
	}
}

// TestPrometheusConfigs checks both scrape configurations with promtool
// (with the rule file beside them, as Prometheus would load it) and that
// each scrapes every petmesh job the rules and dashboards rely on.
func TestPrometheusConfigs(t *testing.T) {
	wantJobs := []string{"controlplane", "edge", "pets", "sidecar", "stats", "sync"}
	tests := []struct {
		desc, file string
		// targets that must be scraped (a sample, not all).
		targets []string
	}{
		{desc: "compose", file: "prometheus.yml", targets: []string{"edge:8081", "controlplane:18080", "pets-1:15000", "pets-2:7101", "sync:7102", "stats:7103", "stats:15000"}},
		{desc: "local", file: "prometheus.local.yml", targets: []string{"127.0.0.1:8081", "127.0.0.1:18080", "127.0.0.1:7101", "127.0.0.1:7111", "127.0.0.1:7102", "127.0.0.1:7103", "127.0.0.1:15010", "127.0.0.1:15020", "127.0.0.1:15030", "127.0.0.1:15040", "127.0.0.1:8500", "127.0.0.1:8888"}},
	}
	alerts, err := os.ReadFile(filepath.Join("prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("prometheus", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			var cfg struct {
				RuleFiles     []string `yaml:"rule_files"`
				ScrapeConfigs []struct {
					JobName       string `yaml:"job_name"`
					StaticConfigs []struct {
						Targets []string          `yaml:"targets"`
						Labels  map[string]string `yaml:"labels"`
					} `yaml:"static_configs"`
				} `yaml:"scrape_configs"`
			}
			if err := yaml.Unmarshal(raw, &cfg); err != nil {
				t.Fatalf("parse: %v", err)
			}
			// The dashboards group sidecar and app series by these target
			// labels (the e2e test checks every other grouping label on
			// the binaries' own series).
			for _, sc := range cfg.ScrapeConfigs {
				switch sc.JobName {
				case "sidecar", "pets", "sync", "stats":
					for _, st := range sc.StaticConfigs {
						if st.Labels["service"] == "" || st.Labels["petmesh_instance"] == "" {
							t.Errorf("job %s targets %v: want labels service and petmesh_instance, got %v", sc.JobName, st.Targets, st.Labels)
						}
					}
				}
			}
			jobs := map[string]bool{}
			targets := map[string]bool{}
			for _, sc := range cfg.ScrapeConfigs {
				jobs[sc.JobName] = true
				for _, s := range sc.StaticConfigs {
					for _, tg := range s.Targets {
						targets[tg] = true
					}
				}
			}
			for _, j := range wantJobs {
				if !jobs[j] {
					t.Errorf("job %s not scraped", j)
				}
			}
			for _, tg := range tc.targets {
				if !targets[tg] {
					t.Errorf("target %s not scraped", tg)
				}
			}
			if len(cfg.RuleFiles) != 1 || filepath.Base(cfg.RuleFiles[0]) != "alerts.yml" {
				t.Errorf("rule_files = %v, want alerts.yml", cfg.RuleFiles)
			}

			// promtool resolves rule files relative to the config; point
			// the compose path (/etc/prometheus/...) at a copy.
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), alerts, 0o600); err != nil {
				t.Fatal(err)
			}
			fixed := strings.ReplaceAll(string(raw), "/etc/prometheus/alerts.yml", "alerts.yml")
			if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(fixed), 0o600); err != nil {
				t.Fatal(err)
			}
			promtool(t, dir, true, "check", "config", tc.file)
		})
	}
}

// TestEveryExprParses runs promtool over a rule file that records every
// dashboard query and alert expression, which parses each with
// Prometheus's own PromQL parser.
func TestEveryExprParses(t *testing.T) {
	exprs, err := observability.Exprs()
	if err != nil {
		t.Fatal(err)
	}
	qs, err := dashboards.Queries()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := observability.AlertRules()
	if err != nil {
		t.Fatal(err)
	}
	if len(exprs) != len(qs)+len(rules) || len(qs) < 30 || len(rules) < 7 {
		t.Fatalf("Exprs: got %d, want %d panel queries (>= 30) + %d rules (>= 7)", len(exprs), len(qs), len(rules))
	}
	for _, e := range exprs {
		if strings.Contains(e.Query("1m"), "$") {
			t.Errorf("%s: unexpanded macro in %q", e.Source, e.Query("1m"))
		}
	}

	write := func(t *testing.T, exprs []observability.Expr) string {
		t.Helper()
		type rule struct {
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		}
		var f struct {
			Groups []struct {
				Name  string `yaml:"name"`
				Rules []rule `yaml:"rules"`
			} `yaml:"groups"`
		}
		f.Groups = append(f.Groups, struct {
			Name  string `yaml:"name"`
			Rules []rule `yaml:"rules"`
		}{Name: "petmesh-exprs"})
		for i, e := range exprs {
			f.Groups[0].Rules = append(f.Groups[0].Rules, rule{Record: fmt.Sprintf("petmesh:expr_check:%d", i), Expr: e.Query("1m")})
		}
		b, err := yaml.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "exprs.yml"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}

	t.Run("all expressions", func(t *testing.T) {
		out := promtool(t, write(t, exprs), true, "check", "rules", "exprs.yml")
		if want := fmt.Sprintf("%d rules found", len(exprs)); !strings.Contains(out, want) {
			t.Errorf("promtool: want %q in\n%s", want, out)
		}
	})
	t.Run("a broken expression is caught", func(t *testing.T) {
		bad := append([]observability.Expr{}, exprs[:3]...)
		bad = append(bad, observability.Expr{Source: "broken", PromQL: `sum by (cluster) (rate(x[$__rate_interval])`})
		promtool(t, write(t, bad), false, "check", "rules", "exprs.yml")
	})
}

func TestGrafanaProvisioning(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("grafana", "provisioning", "datasources", "datasources.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name     string         `yaml:"name"`
			UID      string         `yaml:"uid"`
			Type     string         `yaml:"type"`
			URL      string         `yaml:"url"`
			JSONData map[string]any `yaml:"jsonData"`
		} `yaml:"datasources"`
	}
	if err := yaml.Unmarshal(raw, &ds); err != nil {
		t.Fatalf("datasources.yml: %v", err)
	}
	got := map[string]string{}
	for _, d := range ds.Datasources {
		got[d.UID] = d.Type
		if d.URL == "" {
			t.Errorf("datasource %s has no url", d.Name)
		}
	}
	if ds.APIVersion != 1 || got[dashboards.DatasourceUID] != "prometheus" || got[dashboards.JaegerDatasourceUID] != "jaeger" {
		t.Errorf("datasources: apiVersion %d, uid→type %v; want %s=prometheus and %s=jaeger", ds.APIVersion, got, dashboards.DatasourceUID, dashboards.JaegerDatasourceUID)
	}

	raw, err = os.ReadFile(filepath.Join("grafana", "provisioning", "dashboards", "dashboards.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var dp struct {
		Providers []struct {
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal(raw, &dp); err != nil {
		t.Fatalf("dashboards.yml: %v", err)
	}
	if len(dp.Providers) != 1 || dp.Providers[0].Type != "file" || dp.Providers[0].Options.Path == "" {
		t.Errorf("dashboard providers: %+v", dp.Providers)
	}
}

func TestJaegerConfig(t *testing.T) {
	var cfg struct {
		Service struct {
			Extensions []string `yaml:"extensions"`
			Pipelines  map[string]struct {
				Receivers []string `yaml:"receivers"`
				Exporters []string `yaml:"exporters"`
			} `yaml:"pipelines"`
		} `yaml:"service"`
		Receivers struct {
			OTLP struct {
				Protocols map[string]struct {
					Endpoint string `yaml:"endpoint"`
				} `yaml:"protocols"`
			} `yaml:"otlp"`
		} `yaml:"receivers"`
		Extensions struct {
			Storage struct {
				Backends map[string]map[string]any `yaml:"backends"`
			} `yaml:"jaeger_storage"`
		} `yaml:"extensions"`
	}
	if err := yaml.Unmarshal(observability.JaegerConfig(), &cfg); err != nil {
		t.Fatal(err)
	}
	ext := append([]string{}, cfg.Service.Extensions...)
	sort.Strings(ext)
	if strings.Join(ext, ",") != "healthcheckv2,jaeger_query,jaeger_storage" {
		t.Errorf("extensions %v", ext)
	}
	if p := cfg.Service.Pipelines["traces"]; len(p.Receivers) != 1 || p.Receivers[0] != "otlp" {
		t.Errorf("traces pipeline %+v", p)
	}
	for _, proto := range []string{"grpc", "http"} {
		if !strings.Contains(cfg.Receivers.OTLP.Protocols[proto].Endpoint, "${env:JAEGER_OTLP_") {
			t.Errorf("otlp %s endpoint %q is not configurable", proto, cfg.Receivers.OTLP.Protocols[proto].Endpoint)
		}
	}
	for name, b := range cfg.Extensions.Storage.Backends {
		if _, ok := b["memory"]; !ok {
			t.Errorf("storage backend %s is not in memory", name)
		}
	}
}
