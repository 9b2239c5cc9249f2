// Package dashboards generates petmesh's Grafana dashboards with the
// Grafana Foundation SDK. `go run ./observability/dashboards/cmd/gen`
// writes them as JSON under observability/grafana/dashboards/, where
// Grafana's file provisioning picks them up; a test fails when the
// committed JSON differs from what this package generates.
//
// Every panel queries the Prometheus datasource provisioned with uid
// DatasourceUID. Queries lists every panel's PromQL so that tests can run
// each one against a real Prometheus scraping the mesh.
//
// Panels that count rare events (errors, 401s, 429s, retries, NACKs) fall
// back to the same aggregation of a metric that always exists, times
// zero, so that they show 0 rather than "No data" when nothing happened:
// a counter with labels has no series until its first increment.
package dashboards

//lint:file-ignore SA1019 Grafana file provisioning loads the classic (v1) dashboard JSON; the SDK marks its v1 types deprecated in favour of the v2 API resources.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// DatasourceUID is the uid of the Prometheus datasource that
// observability/grafana/provisioning/datasources/datasources.yml creates.
const DatasourceUID = "petmesh-prometheus"

// JaegerDatasourceUID is the uid of the provisioned Jaeger datasource
// (exemplars on latency panels link to it).
const JaegerDatasourceUID = "petmesh-jaeger"

// Board is one generated dashboard and the file it is written to.
type Board struct {
	// File is the file name under observability/grafana/dashboards/.
	File      string
	Dashboard dashboard.Dashboard
}

// Query is the PromQL of one panel target.
type Query struct {
	Dashboard string // dashboard uid
	Panel     string // panel title
	RefID     string
	// Expr is the expression as Grafana sends it, with Grafana's macros
	// ($__rate_interval) in place; see Expand.
	Expr string
}

// String names the query for test output.
func (q Query) String() string {
	return fmt.Sprintf("%s / %s / %s", q.Dashboard, q.Panel, q.RefID)
}

// Expand replaces Grafana's interval macros with rateInterval (e.g.
// "1m") so that expr can be sent to Prometheus directly.
func Expand(expr, rateInterval string) string {
	return strings.NewReplacer("$__rate_interval", rateInterval, "$__interval", rateInterval).Replace(expr)
}

// Build builds every dashboard, in file-name order.
func Build() ([]Board, error) {
	specs := []boardSpec{meshOverview(), edge(), controlPlane(), syncJob()}
	out := make([]Board, 0, len(specs))
	for _, s := range specs {
		d, err := s.build()
		if err != nil {
			return nil, fmt.Errorf("dashboard %s: %w", s.uid, err)
		}
		out = append(out, Board{File: s.uid + ".json", Dashboard: d})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].File < out[j].File })
	return out, nil
}

// Render returns every dashboard as indented JSON with a trailing newline,
// keyed by file name: the exact bytes committed under
// observability/grafana/dashboards/.
func Render() (map[string][]byte, error) {
	boards, err := Build()
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(boards))
	for _, b := range boards {
		j, err := Encode(b.Dashboard)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b.File, err)
		}
		out[b.File] = j
	}
	return out, nil
}

// Encode renders one dashboard as the committed files are: indented JSON
// with a trailing newline.
func Encode(d dashboard.Dashboard) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep PromQL's > and & readable where the SDK lets us
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("marshal dashboard: %w", err)
	}
	return buf.Bytes(), nil
}

// Queries returns the PromQL of every panel target of every dashboard.
func Queries() ([]Query, error) {
	boards, err := Build()
	if err != nil {
		return nil, err
	}
	var out []Query
	for _, b := range boards {
		qs, err := BoardQueries(b.Dashboard)
		if err != nil {
			return nil, err
		}
		out = append(out, qs...)
	}
	return out, nil
}

// BoardQueries extracts the Prometheus queries of one dashboard, including
// panels nested in rows. A target that is not a Prometheus query is an
// error: every petmesh panel reads Prometheus.
func BoardQueries(d dashboard.Dashboard) ([]Query, error) {
	uid := ""
	if d.Uid != nil {
		uid = *d.Uid
	}
	var panels []dashboard.Panel
	for _, p := range d.Panels {
		switch {
		case p.Panel != nil:
			panels = append(panels, *p.Panel)
		case p.RowPanel != nil:
			panels = append(panels, p.RowPanel.Panels...)
		}
	}
	var out []Query
	for _, p := range panels {
		title := ""
		if p.Title != nil {
			title = *p.Title
		}
		for _, t := range p.Targets {
			var q prometheus.Dataquery
			switch v := t.(type) {
			case prometheus.Dataquery:
				q = v
			case *prometheus.Dataquery:
				q = *v
			default:
				return nil, fmt.Errorf("dashboard %s, panel %q: target %T is not a Prometheus query", uid, title, t)
			}
			ref := ""
			if q.RefId != nil {
				ref = *q.RefId
			}
			out = append(out, Query{Dashboard: uid, Panel: title, RefID: ref, Expr: q.Expr})
		}
	}
	return out, nil
}

// --- specs -----------------------------------------------------------------

type boardSpec struct {
	uid, title, description string
	tags                    []string
	rows                    []rowSpec
}

type rowSpec struct {
	title  string
	panels []panelSpec
}

type panelKind int

const (
	timeSeries panelKind = iota
	statPanel
)

type panelSpec struct {
	kind        panelKind
	title, desc string
	unit        string
	width       uint32 // grid columns out of 24; default 8
	targets     []target
}

type target struct {
	expr, legend string
	exemplar     bool
}

func (s boardSpec) build() (dashboard.Dashboard, error) {
	b := dashboard.NewDashboardBuilder(s.title).
		Uid(s.uid).
		Description(s.description).
		Tags(append([]string{"petmesh"}, s.tags...)).
		Refresh("10s").
		Time("now-30m", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Link(dashboard.NewDashboardLinkBuilder("petmesh dashboards").
			Type(dashboard.DashboardLinkTypeDashboards).
			Tags([]string{"petmesh"}).
			AsDropdown(true).
			KeepTime(true))
	var id uint32
	for _, r := range s.rows {
		id++
		b = b.WithRow(dashboard.NewRowBuilder(r.title).Id(id))
		for _, p := range r.panels {
			id++
			b = b.WithPanel(p.builder(id))
		}
	}
	return b.Build()
}

func datasource() common.DataSourceRef {
	return common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr(DatasourceUID)}
}

func (p panelSpec) builder(id uint32) cog.Builder[dashboard.Panel] {
	w := p.width
	if w == 0 {
		w = 8
	}
	switch p.kind {
	case statPanel:
		sb := stat.NewPanelBuilder().Id(id).Title(p.title).Description(p.desc).Unit(p.unit).
			Datasource(datasource()).Height(6).Span(w).
			GraphMode(common.BigValueGraphModeArea).
			ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}))
		for i, t := range p.targets {
			sb = sb.WithTarget(t.builder(i))
		}
		return sb
	default:
		tb := timeseries.NewPanelBuilder().Id(id).Title(p.title).Description(p.desc).Unit(p.unit).
			Datasource(datasource()).Height(8).Span(w).
			Min(0).FillOpacity(10).LineWidth(1).
			Legend(common.NewVizLegendOptionsBuilder().
				DisplayMode(common.LegendDisplayModeList).
				Placement(common.LegendPlacementBottom).
				ShowLegend(true))
		for i, t := range p.targets {
			tb = tb.WithTarget(t.builder(i))
		}
		return tb
	}
}

func (t target) builder(i int) *prometheus.DataqueryBuilder {
	q := prometheus.NewDataqueryBuilder().
		RefId(string(rune('A' + i))).
		Datasource(datasource()).
		Expr(t.expr).
		LegendFormat(t.legend).
		Range()
	if t.exemplar {
		q = q.Exemplar(true)
	}
	return q
}

// DecodeStrict decodes a dashboard JSON document with the SDK's strict
// decoder (unknown fields, wrong types and missing required fields are
// errors, in panels and queries too), validates it, and returns the
// decoded model.
//
// In SDK v0.0.18 the strict decoders return an empty but typed error list
// on success; nested decoders take it for a failure and leave the panels
// out of the strict result (while real errors are still reported). So the
// strict pass is used for the errors only, and the model comes from the
// SDK's regular decoder.
func DecodeStrict(raw []byte) (dashboard.Dashboard, error) {
	plugins.RegisterDefaultPlugins()
	var strict dashboard.Dashboard
	if err := strict.UnmarshalJSONStrict(raw); err != nil {
		var be cog.BuildErrors
		if !errors.As(err, &be) || len(be) > 0 {
			return dashboard.Dashboard{}, fmt.Errorf("strict decode: %w", err)
		}
	}
	var d dashboard.Dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		return dashboard.Dashboard{}, fmt.Errorf("decode: %w", err)
	}
	if err := d.Validate(); err != nil {
		return dashboard.Dashboard{}, fmt.Errorf("validate: %w", err)
	}
	return d, nil
}
