package promtest_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/promtest"
)

func TestScrapeAndQuery(t *testing.T) {
	reg := prometheus.NewRegistry()
	widgets := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petmesh_test_widgets_total", Help: "Widgets made."}, []string{"color"})
	temp := prometheus.NewGauge(prometheus.GaugeOpts{Name: "petmesh_test_temperature_celsius", Help: "Temperature."})
	reg.MustRegister(widgets, temp)
	widgets.WithLabelValues("red").Add(3)
	widgets.WithLabelValues("blue").Add(5)
	temp.Set(21.5)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")

	p := promtest.Start(t, map[string][]string{"widgets": {addr}})
	ctx := testutil.Context(t)
	p.WaitForTargetsUp(ctx, 30*time.Second)

	// The first scrape may land just before WaitForTargetsUp returns; wait
	// until the series is queryable.
	testutil.Eventually(t, 30*time.Second, func() error {
		r, err := p.Query(ctx, `petmesh_test_widgets_total`)
		if err != nil {
			return err
		}
		if len(r.Vector) != 2 {
			return fmt.Errorf("want 2 series, got %+v", r)
		}
		return nil
	})

	tests := []struct {
		desc     string
		promql   string
		wantType string
		wantData bool
		// want is checked against the single vector sample when non-nil.
		want   *float64
		labels map[string]string
	}{
		{desc: "counter by label", promql: `petmesh_test_widgets_total{color="blue"}`, wantType: "vector", wantData: true, want: ptr(5), labels: map[string]string{"job": "widgets", "instance": addr, "color": "blue"}},
		{desc: "aggregation", promql: `sum(petmesh_test_widgets_total)`, wantType: "vector", wantData: true, want: ptr(8)},
		{desc: "gauge", promql: `petmesh_test_temperature_celsius`, wantType: "vector", wantData: true, want: ptr(21.5)},
		{desc: "up", promql: `up{job="widgets"}`, wantType: "vector", wantData: true, want: ptr(1)},
		{desc: "range selector", promql: `up{job="widgets"}[1m]`, wantType: "matrix", wantData: true},
		{desc: "scalar", promql: `scalar(sum(petmesh_test_widgets_total))`, wantType: "scalar", wantData: true},
		{desc: "absent series", promql: `petmesh_test_does_not_exist`, wantType: "vector", wantData: false},
		{desc: "label filter excludes all", promql: `petmesh_test_widgets_total{color="green"}`, wantType: "vector", wantData: false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r, err := p.Query(ctx, tc.promql)
			if err != nil {
				t.Fatalf("query: %v", err)
			}
			if r.ResultType != tc.wantType {
				t.Errorf("result type: got %q, want %q", r.ResultType, tc.wantType)
			}
			if r.HasData() != tc.wantData {
				t.Errorf("HasData: got %v, want %v (%+v)", r.HasData(), tc.wantData, r)
			}
			if tc.want != nil {
				if len(r.Vector) != 1 {
					t.Fatalf("want one sample, got %+v", r.Vector)
				}
				if r.Vector[0].Value != *tc.want {
					t.Errorf("value: got %v, want %v", r.Vector[0].Value, *tc.want)
				}
				for k, v := range tc.labels {
					if got := r.Vector[0].Metric[k]; got != v {
						t.Errorf("label %s: got %q, want %q", k, got, v)
					}
				}
			}
		})
	}

	t.Run("bad promql is an error naming the expression", func(t *testing.T) {
		_, err := p.Query(ctx, `sum(`)
		if err == nil || !strings.Contains(err.Error(), "sum(") {
			t.Fatalf("got %v, want an error naming the expression", err)
		}
	})

	t.Run("targets", func(t *testing.T) {
		ts, err := p.Targets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) != 1 || ts[0].Job != "widgets" || ts[0].Health != "up" {
			t.Errorf("targets: got %+v", ts)
		}
	})
}

func TestDownTargetIsReported(t *testing.T) {
	srv := httptest.NewServer(promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{}))
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close() // nothing listens there any more
	p := promtest.Start(t, map[string][]string{"gone": {addr}})
	ctx, cancel := context.WithTimeout(testutil.Context(t), 30*time.Second)
	defer cancel()
	testutil.Eventually(t, 30*time.Second, func() error {
		r, err := p.Query(ctx, `up{job="gone"} == 0`)
		if err != nil {
			return err
		}
		if !r.HasData() {
			return fmt.Errorf("up is not 0 yet: %+v", r)
		}
		return nil
	})
}

func TestConfigRejectsBadTargets(t *testing.T) {
	tests := []struct {
		desc    string
		targets map[string][]string
		wantErr string
	}{
		{desc: "no port", targets: map[string][]string{"a": {"localhost"}}, wantErr: `target "localhost"`},
		{desc: "empty job", targets: map[string][]string{"": {"127.0.0.1:1"}}, wantErr: `job ""`},
		{desc: "no targets", targets: map[string][]string{"a": nil}, wantErr: `job "a"`},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := promtest.Config(promtest.Options{Targets: tc.targets})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
	b, err := promtest.Config(promtest.Options{Targets: map[string][]string{"b": {"127.0.0.1:2"}, "a": {"127.0.0.1:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Index(s, "job_name: a") > strings.Index(s, "job_name: b") || !strings.Contains(s, "scrape_interval: 1s") {
		t.Errorf("config not sorted by job or missing 1s interval:\n%s", s)
	}
}

func ptr(f float64) *float64 { return &f }
