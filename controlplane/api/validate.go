package api

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/store"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// SampleRequest is a request to route in a dry run.
type SampleRequest struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Headers map[string]string `json:"headers,omitempty"`
}

// SampleResult says where a sample request would go.
type SampleResult struct {
	// Matched is false when no route matches (the edge answers 404).
	Matched bool   `json:"matched"`
	Route   string `json:"route,omitempty"`
	// Auth: "public", "authenticated" or "roles: a, b".
	Auth           string           `json:"auth,omitempty"`
	Clusters       []WeightedTarget `json:"clusters,omitempty"`
	DirectResponse int              `json:"direct_response,omitempty"`
}

// WeightedTarget is a cluster with its share of the traffic.
type WeightedTarget struct {
	Cluster string `json:"cluster"`
	Weight  int    `json:"weight"`
}

// ResourceChange is one Envoy resource that a change adds, removes or
// changes for a node.
type ResourceChange struct {
	Type   string `json:"type"`
	Name   string `json:"name"`
	Change string `json:"change"` // added, removed, changed
	// Diff is a unified diff of the resource's JSON (changed only).
	Diff string `json:"diff,omitempty"`
}

// NodeDiff is the resource diff for one representative node.
type NodeDiff struct {
	Node    string           `json:"node"`
	Kind    string           `json:"kind"`
	Service string           `json:"service,omitempty"`
	Error   string           `json:"error,omitempty"`
	Changes []ResourceChange `json:"changes"`
}

// ValidateResponse is the body of a successful POST /v1/routes:validate.
type ValidateResponse struct {
	Valid bool `json:"valid"`
	// BaseVersion is the current version the candidate is compared with.
	BaseVersion int64      `json:"base_version"`
	Diff        store.Diff `json:"diff"`
	Resources   []NodeDiff `json:"resources"`
	// Sample is present when the request carried one.
	Sample *SampleResult `json:"sample,omitempty"`
}

func (h *handler) validate(w http.ResponseWriter, r *http.Request) error {
	return wrap(func(w http.ResponseWriter, r *http.Request) error {
		req, err := h.readTable(w, r)
		if err != nil {
			return err
		}
		if req.Sample != nil {
			if req.Sample.Path == "" || !strings.HasPrefix(req.Sample.Path, "/") {
				return httpx.BadRequest("sample.path", "must start with /, got %q", req.Sample.Path)
			}
		}
		cur, err := h.opts.Store.Current(r.Context())
		if err != nil {
			return h.storeError("read current version", err)
		}
		if cur.Table == nil {
			cur.Table = &routes.Table{}
		}
		cand := store.Entry{Version: store.Version{Number: cur.Number + 1}, Table: req.Table}
		resp := ValidateResponse{
			Valid:       true,
			BaseVersion: cur.Number,
			Diff:        store.Compare(cur, cand),
			Resources:   ResourceDiff(cur.Table, req.Table, h.opts.Proxies.Instances(), h.opts.Proxies.TranslateOptions()),
		}
		if req.Sample != nil {
			res := Route(req.Table, *req.Sample)
			resp.Sample = &res
		}
		httpx.WriteJSON(w, http.StatusOK, resp)
		return nil
	})(w, r)
}

// representativeNodes are the nodes a dry run translates for: the edge,
// a sidecar of every service either table mentions, and a proxyless
// client.
func representativeNodes(tables ...*routes.Table) []translate.Node {
	svcs := map[string]bool{}
	for _, t := range tables {
		for _, rt := range t.Routes {
			for _, tg := range rt.Targets {
				if tg.Service != routes.EdgeService {
					svcs[tg.Service] = true
				}
			}
		}
		for s := range t.Services {
			svcs[s] = true
		}
	}
	names := make([]string, 0, len(svcs))
	for s := range svcs {
		names = append(names, s)
	}
	sort.Strings(names)
	nodes := []translate.Node{{ID: resource.NodeID{Kind: resource.KindEdge, Instance: "dry-run"}, Meta: resource.NodeMeta{ListenPort: translate.DefaultEdgePort}}}
	for _, s := range names {
		nodes = append(nodes, translate.Node{
			ID:   resource.NodeID{Kind: resource.KindSidecar, Service: s, Instance: "dry-run"},
			Meta: resource.NodeMeta{Service: s, InboundPort: translate.DefaultInboundPort, OutboundPort: translate.DefaultOutboundPort, AppPort: 8080},
		})
	}
	nodes = append(nodes, translate.Node{ID: resource.NodeID{Kind: resource.KindGRPC, Service: "dry-run", Instance: "dry-run"}, Meta: resource.NodeMeta{Proxyless: true}})
	return nodes
}

// ResourceDiff translates both tables for representative nodes (with the
// current instances) and lists the resources that differ.
func ResourceDiff(from, to *routes.Table, instances []translate.Instance, opts translate.Options) []NodeDiff {
	var out []NodeDiff
	for _, n := range representativeNodes(from, to) {
		nd := NodeDiff{Node: n.ID.String(), Kind: string(n.ID.Kind), Service: n.ID.Service, Changes: []ResourceChange{}}
		if n.Meta.Proxyless {
			nd.Kind, nd.Service = "proxyless", ""
		}
		after, err := translate.Translate(to, instances, n, opts)
		if err != nil {
			nd.Error = err.Error()
			out = append(out, nd)
			continue
		}
		if err := translate.Consistent(after); err != nil {
			nd.Error = fmt.Sprintf("inconsistent resources: %v", err)
		}
		before, err := translate.Translate(from, instances, n, opts)
		if err != nil {
			before = &translate.Resources{}
		}
		nd.Changes = compareResources(before, after)
		out = append(out, nd)
	}
	return out
}

func compareResources(a, b *translate.Resources) []ResourceChange {
	changes := []ResourceChange{}
	ra, rb := a.ByType(), b.ByType()
	for _, t := range xds.Types {
		am, bm := render(ra[t]), render(rb[t])
		names := make([]string, 0, len(am)+len(bm))
		for n := range am {
			names = append(names, n)
		}
		for n := range bm {
			if _, ok := am[n]; !ok {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			x, inA := am[n]
			y, inB := bm[n]
			switch {
			case !inA:
				changes = append(changes, ResourceChange{Type: xds.ShortType(t), Name: n, Change: store.Added})
			case !inB:
				changes = append(changes, ResourceChange{Type: xds.ShortType(t), Name: n, Change: store.Removed})
			case x != y:
				changes = append(changes, ResourceChange{Type: xds.ShortType(t), Name: n, Change: store.Changed,
					Diff: store.Unified("current/"+n, "candidate/"+n, x, y)})
			}
		}
	}
	return changes
}

type named interface {
	proto.Message
	GetName() string
}

type clusterNamed interface {
	proto.Message
	GetClusterName() string
}

// render returns each resource's JSON by name.
func render(items []types.Resource) map[string]string {
	m := make(map[string]string, len(items))
	mo := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}
	for _, it := range items {
		var name string
		switch x := it.(type) {
		case named:
			name = x.GetName()
		case clusterNamed:
			name = x.GetClusterName()
		}
		b, err := mo.Marshal(it)
		if err != nil {
			b = []byte(err.Error())
		}
		m[name] = string(b) + "\n"
	}
	return m
}

// Route returns where req would go with table t: the first route whose
// match accepts it, as the edge evaluates them.
func Route(t *routes.Table, req SampleRequest) SampleResult {
	method := strings.ToUpper(req.Method)
	if method == "" {
		method = http.MethodGet
	}
	headers := map[string]string{}
	for k, v := range req.Headers {
		headers[strings.ToLower(k)] = v
	}
	for _, rt := range t.Routes {
		if !matches(rt.Match, method, req.Path, headers) {
			continue
		}
		res := SampleResult{Matched: true, Route: rt.Name, Auth: authOf(rt.Auth)}
		if rt.DirectResponse != nil {
			res.DirectResponse = rt.DirectResponse.Status
			return res
		}
		for _, tg := range rt.Targets {
			c := resource.Cluster(tg.Service, tg.Subset)
			if tg.Service == routes.EdgeService {
				c = resource.ClusterEdgeLocal
			}
			w := tg.Weight
			if len(rt.Targets) == 1 && w == 0 {
				w = 100
			}
			res.Clusters = append(res.Clusters, WeightedTarget{Cluster: c, Weight: w})
		}
		return res
	}
	return SampleResult{}
}

func authOf(a *routes.Auth) string {
	switch {
	case a == nil:
		return "authenticated"
	case a.Public:
		return "public"
	case len(a.Roles) > 0:
		return "roles: " + strings.Join(a.Roles, ", ")
	}
	return "authenticated"
}

func matches(m routes.Match, method, path string, headers map[string]string) bool {
	switch {
	case m.Prefix != "":
		if !strings.HasPrefix(path, m.Prefix) {
			return false
		}
	case m.Path != "":
		if path != m.Path {
			return false
		}
	case m.Regex != "":
		re, err := regexp.Compile("^(?:" + m.Regex + ")$")
		if err != nil || !re.MatchString(path) {
			return false
		}
	}
	if len(m.Methods) > 0 && !slices.ContainsFunc(m.Methods, func(x string) bool { return strings.EqualFold(x, method) }) {
		return false
	}
	for _, hm := range m.Headers {
		v, ok := headers[strings.ToLower(hm.Name)]
		switch {
		case hm.Present != nil:
			if ok != *hm.Present {
				return false
			}
		case !ok:
			return false
		case hm.Exact != "":
			if v != hm.Exact {
				return false
			}
		case hm.Prefix != "":
			if !strings.HasPrefix(v, hm.Prefix) {
				return false
			}
		case hm.Regex != "":
			re, err := regexp.Compile("^(?:" + hm.Regex + ")$")
			if err != nil || !re.MatchString(v) {
				return false
			}
		}
	}
	return true
}
