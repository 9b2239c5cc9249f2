package observability_test

import (
	"strings"
	"testing"

	"github.com/petmesh/petmesh/observability"
)

func TestSplitThreshold(t *testing.T) {
	tests := []struct {
		desc, expr, base, threshold string
		ok                          bool
	}{
		{desc: "gauge equals", expr: `up{job=~"edge|sidecar"} == 0`, base: `up{job=~"edge|sidecar"}`, threshold: "== 0", ok: true},
		{desc: "ratio above", expr: "sum(rate(a{code=~\"5..\"}[5m]))\n  /\nsum(rate(a[5m]))\n  > 0.05\n", base: "sum(rate(a{code=~\"5..\"}[5m]))\n  /\nsum(rate(a[5m]))", threshold: "> 0.05", ok: true},
		{desc: "constant arithmetic", expr: "time() - (max(x > 0) or min(y)) > 26 * 3600", base: "time() - (max(x > 0) or min(y))", threshold: "> 26 * 3600", ok: true},
		{desc: "greater or equal", expr: "x >= 1e3", base: "x", threshold: ">= 1e3", ok: true},
		{desc: "comparisons chain: the last one is the top", expr: "x > 1 < 5", base: "x > 1", threshold: "< 5", ok: true},
		{desc: "no comparison", expr: "sum(rate(x[1m]))", ok: false},
		{desc: "comparison inside parentheses", expr: "count(x == 1)", ok: false},
		{desc: "comparison inside a matcher or string", expr: `x{a!="b>c", d=~"<"}`, ok: false},
		{desc: "bool comparison is never empty", expr: "x > bool 1", ok: false},
		{desc: "series on the right", expr: "x > y", ok: false},
		{desc: "set operator at the top", expr: "x > 1 or y", ok: false},
		{desc: "unless at the top", expr: "x > 1 unless y == 0", ok: false},
		{desc: "metric named like an operator", expr: "order_total > 1", base: "order_total", threshold: "> 1", ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			base, threshold, ok := observability.SplitThreshold(tc.expr)
			if ok != tc.ok || base != tc.base || threshold != tc.threshold {
				t.Fatalf("SplitThreshold(%q) = %q, %q, %v; want %q, %q, %v", tc.expr, base, threshold, ok, tc.base, tc.threshold, tc.ok)
			}
		})
	}
}

// TestEveryAlertHasAThreshold: every alert rule is a threshold over an
// expression, so the end-to-end test can check that expression for data.
// A rule of another shape must return data as it is, which an alert that
// fires only on trouble cannot; this test makes such a rule a conscious
// change here rather than a surprise there.
func TestEveryAlertHasAThreshold(t *testing.T) {
	rules, err := observability.AlertRules()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Alert == "" {
			continue
		}
		if _, _, ok := observability.SplitThreshold(r.Expr); !ok {
			t.Errorf("alert %s: not of the form <expr> <comparison> <constant>: %s", r.Alert, r.Expr)
		}
	}
}

func TestGroupingLabels(t *testing.T) {
	tests := []struct{ expr, want string }{
		{expr: "sum(rate(x[1m]))", want: ""},
		{expr: "sum by (cluster) (rate(x[1m]))", want: "cluster"},
		{expr: "histogram_quantile(0.99, sum by (route, le) (rate(x[5m]))) > 1", want: "le,route"},
		{expr: "sum without(code,instance)(x) / on (job) group_left(version) y", want: "code,instance,job,version"},
		{expr: "max by (job, instance, cluster) (a) or sum by (cluster) (b) * 0", want: "cluster,instance,job"},
		{expr: `x{by="a"}`, want: ""},
	}
	for _, tc := range tests {
		if got := strings.Join(observability.GroupingLabels(tc.expr), ","); got != tc.want {
			t.Errorf("GroupingLabels(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}
