package dashboards_test

//lint:file-ignore SA1019 Grafana file provisioning loads the classic (v1) dashboard JSON; the SDK marks its v1 types deprecated in favour of the v2 API resources.

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/petmesh/petmesh/observability/dashboards"
)

const dir = "../grafana/dashboards"

// TestCommittedJSONIsGenerated fails when the committed dashboards differ
// from the generator's output: run `go run ./observability/dashboards/cmd/gen`.
func TestCommittedJSONIsGenerated(t *testing.T) {
	want, err := dashboards.Render()
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	committed, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range committed {
		names = append(names, filepath.Base(p))
	}
	var wantNames []string
	for n := range want {
		wantNames = append(wantNames, n)
	}
	sort.Strings(wantNames)
	if strings.Join(names, ",") != strings.Join(wantNames, ",") {
		t.Fatalf("committed dashboards %v, generator writes %v; run go run ./observability/dashboards/cmd/gen", names, wantNames)
	}
	for _, n := range wantNames {
		t.Run(n, func(t *testing.T) {
			got, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[n]) {
				t.Errorf("%s differs from the generator output; run go run ./observability/dashboards/cmd/gen", n)
			}
		})
	}
}

// TestCommittedJSONDecodesStrictly decodes every committed dashboard with
// the SDK's strict decoder (unknown fields and wrong types are errors),
// validates it, and checks the petmesh conventions.
func TestCommittedJSONDecodesStrictly(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("want at least 4 dashboards, found %v", files)
	}
	uids := map[string]string{}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			d, err := dashboards.DecodeStrict(raw)
			if err != nil {
				t.Fatal(err)
			}
			// Nothing is lost in decoding: the model re-encodes to the file.
			again, err := dashboards.Encode(d)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, raw) {
				t.Errorf("decoded dashboard does not re-encode to the committed file")
			}
			if d.Uid == nil || *d.Uid+".json" != filepath.Base(f) {
				t.Errorf("uid %v does not match the file name", d.Uid)
			} else if prev, dup := uids[*d.Uid]; dup {
				t.Errorf("uid %s also used by %s", *d.Uid, prev)
			} else {
				uids[*d.Uid] = f
			}
			ids := map[uint32]bool{}
			panels := 0
			for _, p := range d.Panels {
				switch {
				case p.RowPanel != nil:
					if ids[p.RowPanel.Id] {
						t.Errorf("duplicate panel id %d", p.RowPanel.Id)
					}
					ids[p.RowPanel.Id] = true
				case p.Panel != nil:
					panels++
					pn := p.Panel
					if pn.Id == nil || ids[*pn.Id] {
						t.Errorf("panel %q: missing or duplicate id", deref(pn.Title))
					} else {
						ids[*pn.Id] = true
					}
					if deref(pn.Title) == "" {
						t.Errorf("panel %d has no title", deref(pn.Id))
					}
					if pn.Datasource == nil || deref(pn.Datasource.Uid) != dashboards.DatasourceUID {
						t.Errorf("panel %q: datasource %+v, want uid %s", deref(pn.Title), pn.Datasource, dashboards.DatasourceUID)
					}
					if len(pn.Targets) == 0 {
						t.Errorf("panel %q has no query", deref(pn.Title))
					}
					if pn.GridPos == nil || pn.GridPos.W == 0 || pn.GridPos.H == 0 || pn.GridPos.X+pn.GridPos.W > 24 {
						t.Errorf("panel %q: bad grid position %+v", deref(pn.Title), pn.GridPos)
					}
				}
			}
			if panels == 0 {
				t.Error("no panels")
			}
			qs, err := dashboards.BoardQueries(d)
			if err != nil {
				t.Fatalf("queries of the decoded dashboard: %v", err)
			}
			for _, q := range qs {
				if strings.TrimSpace(q.Expr) == "" {
					t.Errorf("%s: empty expression", q)
				}
			}
		})
	}
}

// TestQueriesCoverTheRequiredMetrics checks that the dashboards show what
// the observability issue asks for.
func TestQueriesCoverTheRequiredMetrics(t *testing.T) {
	qs, err := dashboards.Queries()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc, dashboard, contains string
	}{
		{desc: "mesh RED rate per service", dashboard: "petmesh-mesh-overview", contains: "sum by (cluster) (rate(petmesh_dataplane_requests_total"},
		{desc: "mesh RED per route", dashboard: "petmesh-mesh-overview", contains: "sum by (listener, route) (rate(petmesh_dataplane_requests_total"},
		{desc: "mesh duration", dashboard: "petmesh-mesh-overview", contains: "petmesh_dataplane_request_duration_seconds_bucket"},
		{desc: "edge auth failures", dashboard: "petmesh-edge", contains: `code="401"`},
		{desc: "edge rate limited", dashboard: "petmesh-edge", contains: `code="429"`},
		{desc: "edge latency", dashboard: "petmesh-edge", contains: "histogram_quantile(0.99"},
		{desc: "control plane proxies", dashboard: "petmesh-controlplane", contains: "petmesh_controlplane_connected_proxies"},
		{desc: "control plane versions", dashboard: "petmesh-controlplane", contains: "petmesh_xds_version_info"},
		{desc: "control plane convergence", dashboard: "petmesh-controlplane", contains: "petmesh_xds_convergence_seconds_bucket"},
		{desc: "control plane nacks", dashboard: "petmesh-controlplane", contains: "petmesh_xds_nacks_total"},
		{desc: "sync runs", dashboard: "petmesh-sync", contains: "petmesh_sync_runs_total"},
		{desc: "sync duration", dashboard: "petmesh-sync", contains: "petmesh_sync_run_duration_seconds_bucket"},
		{desc: "sync upserted", dashboard: "petmesh-sync", contains: "petmesh_sync_pets_upserted_total"},
		{desc: "sync errors", dashboard: "petmesh-sync", contains: "petmesh_sync_petfinder_errors_total"},
		{desc: "sync last success", dashboard: "petmesh-sync", contains: "petmesh_sync_last_success_timestamp_seconds"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			for _, q := range qs {
				if q.Dashboard == tc.dashboard && strings.Contains(q.Expr, tc.contains) {
					return
				}
			}
			t.Errorf("no query of %s contains %q", tc.dashboard, tc.contains)
		})
	}
}

func TestExpand(t *testing.T) {
	tests := []struct {
		desc, in, want string
	}{
		{desc: "rate interval", in: "rate(x[$__rate_interval])", want: "rate(x[1m])"},
		{desc: "interval", in: "avg_over_time(x[$__interval])", want: "avg_over_time(x[1m])"},
		{desc: "nothing to expand", in: "sum(up)", want: "sum(up)"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			if got := dashboards.Expand(tc.in, "1m"); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// TestDecodeStrictRejects shows that the strict decoding used above can
// fail: unknown or mistyped fields anywhere in the document are errors.
func TestDecodeStrictRejects(t *testing.T) {
	files, err := dashboards.Render()
	if err != nil {
		t.Fatal(err)
	}
	good := files["petmesh-edge.json"]
	if _, err := dashboards.DecodeStrict(good); err != nil {
		t.Fatalf("generated dashboard: %v", err)
	}
	tests := []struct {
		desc     string
		old, new string
	}{
		{desc: "unknown top-level field", old: `"uid": "petmesh-edge",`, new: `"uid": "petmesh-edge", "bogus": 1,`},
		{desc: "mistyped field", old: `"refresh": "10s"`, new: `"refresh": 10`},
		{desc: "unknown panel field", old: `"title": "Requests per second",`, new: `"title": "Requests per second", "bogus": true,`},
		{desc: "unknown query field", old: `"refId": "A"`, new: `"refId": "A", "exprr": "up"`},
		{desc: "not json", old: `{`, new: `[`},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			bad := strings.Replace(string(good), tc.old, tc.new, 1)
			if bad == string(good) {
				t.Fatalf("mutation %q not applied", tc.old)
			}
			if _, err := dashboards.DecodeStrict([]byte(bad)); err == nil {
				t.Errorf("decoded a dashboard with %s", tc.desc)
			}
		})
	}
}
