package dataplane

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// graph is one immutable configuration: listener handlers over cluster
// runtimes. Only the health checkers own goroutines (started by start,
// stopped by release).
type graph struct {
	res       *Resources
	listeners map[string]*listenerRT
	clusters  map[string]*clusterRT
	missing   []string
	builtAt   time.Time
}

func (g *graph) start() {
	for _, c := range g.clusters {
		c.start()
	}
}

// release stops the clusters of g that none of keep uses any more and
// closes the idle connections of transports nobody reuses.
func (g *graph) release(keep ...*graph) {
	for name, c := range g.clusters {
		inUse, transportInUse := false, false
		for _, k := range keep {
			if k == nil {
				continue
			}
			if kc := k.clusters[name]; kc != nil {
				inUse = inUse || kc == c
				transportInUse = transportInUse || kc.base == c.base
			}
		}
		if inUse {
			continue
		}
		c.stop()
		if !transportInUse {
			c.base.CloseIdleConnections()
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// build compiles res into a graph. prev is the active graph whose cluster
// runtimes and endpoint states are reused where unchanged. Errors name the
// resource and the field path.
func (d *DataPlane) build(res *Resources, prev *graph) (g *graph, err error) {
	defer func() {
		// The build step must reject, never crash, whatever it is fed.
		if v := recover(); v != nil {
			g, err = nil, fmt.Errorf("dataplane: internal error building config: %v", v)
		}
	}()
	if res == nil {
		res = &Resources{}
	}
	g = &graph{res: res, listeners: map[string]*listenerRT{}, clusters: map[string]*clusterRT{}, builtAt: d.opts.Now()}

	for _, name := range sortedKeys(res.Endpoints) {
		cla := res.Endpoints[name]
		if cla == nil || cla.GetClusterName() != name {
			return nil, fmt.Errorf("load assignment %q: cluster_name must equal the resource name", name)
		}
		if err := checkFields(cla.ProtoReflect(), ""); err != nil {
			return nil, fmt.Errorf("load assignment %q: %w", name, err)
		}
	}
	for _, name := range sortedKeys(res.Clusters) {
		c := res.Clusters[name]
		if c == nil || c.GetName() != name {
			return nil, fmt.Errorf("cluster %q: name must equal the resource name", name)
		}
		if err := checkFields(c.ProtoReflect(), ""); err != nil {
			return nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		var cla *endpoint.ClusterLoadAssignment
		if c.GetType() == cluster.Cluster_EDS {
			n := c.GetEdsClusterConfig().GetServiceName()
			if n == "" {
				n = name
			}
			if cla = res.Endpoints[n]; cla == nil {
				g.missing = append(g.missing, "load assignment "+n)
			}
		} else {
			cla = c.GetLoadAssignment()
		}
		var pc *clusterRT
		if prev != nil {
			pc = prev.clusters[name]
		}
		cl, err := buildCluster(c, cla, pc, &d.opts, d.metrics)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		g.clusters[name] = cl
	}
	// Route configurations are compiled with each listener's filters;
	// compile each once without filters too, so that an unreferenced one
	// is validated as well.
	for _, name := range sortedKeys(res.Routes) {
		rc := res.Routes[name]
		if rc == nil || rc.GetName() != name {
			return nil, fmt.Errorf("route configuration %q: name must equal the resource name", name)
		}
		if err := checkFields(rc.ProtoReflect(), ""); err != nil {
			return nil, fmt.Errorf("route configuration %q: %w", name, err)
		}
		lc := &listenerCtx{d: d, g: g, name: ""}
		if _, err := lc.compileRoutes(rc); err != nil {
			return nil, fmt.Errorf("route configuration %q: %w", name, err)
		}
	}
	for _, name := range sortedKeys(res.Listeners) {
		l := res.Listeners[name]
		if l == nil || l.GetName() != name {
			return nil, fmt.Errorf("listener %q: name must equal the resource name", name)
		}
		lr, err := d.buildListener(g, l)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", name, err)
		}
		g.listeners[name] = lr
	}
	slices.Sort(g.missing)
	g.missing = slices.Compact(g.missing)
	return g, nil
}

// defaultRouteTimeout is Envoy's RouteAction.timeout when the field is
// absent: no request waits forever on a silent upstream. An explicit 0
// disables the route timeout. A variable only so that a test can shorten it.
var defaultRouteTimeout = 15 * time.Second

type filterKind int

const (
	filterRouter filterKind = iota
	filterFault
	filterRateLimit
	filterJwt
	filterRBAC
	filterBuffer
)

type httpFilter struct {
	name string
	kind filterKind
	cfg  proto.Message
	auth Authenticator
	// jwt: compiled rules shared by every route of the listener.
	rules []authRule
	// rbac: the listener-level roles (nil: no rules, every request passes).
	roles []string
	// local_ratelimit: the listener-level limiter, shared by every route
	// without a per-route config (one set of buckets per filter, as Envoy).
	limiter *rateLimiter
	// buffer: the listener-level max_request_bytes.
	maxBody int64
}

// listenerCtx carries what compiling a listener's routes needs.
type listenerCtx struct {
	d           *DataPlane
	g           *graph
	name        string
	filters     []*httpFilter
	trustedHops int
}

func (d *DataPlane) buildListener(g *graph, l *listener.Listener) (*listenerRT, error) {
	if err := checkFields(l.ProtoReflect(), ""); err != nil {
		return nil, err
	}
	if len(l.GetFilterChains()) != 1 {
		return nil, fmt.Errorf("filter_chains: exactly one filter chain is supported, got %d", len(l.GetFilterChains()))
	}
	fs := l.GetFilterChains()[0].GetFilters()
	if len(fs) != 1 || fs[0].GetTypedConfig().GetTypeUrl() != typeHCM {
		return nil, errors.New("filter_chains[0].filters: exactly one envoy.filters.network.http_connection_manager filter is supported")
	}
	var hcm hcmv3.HttpConnectionManager
	if err := fs[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		return nil, fmt.Errorf("filter_chains[0].filters[0].typed_config: %w", err)
	}
	const hp = "filter_chains[0].filters[0].typed_config"
	if err := checkFields(hcm.ProtoReflect(), hp); err != nil {
		return nil, err
	}
	lc := &listenerCtx{d: d, g: g, name: l.GetName(), trustedHops: int(hcm.GetXffNumTrustedHops())}
	routers := 0
	for i, hf := range hcm.GetHttpFilters() {
		path := fmt.Sprintf("%s.http_filters[%d]", hp, i)
		f, err := d.compileFilter(hf, path)
		if err != nil {
			return nil, err
		}
		if f.kind == filterRBAC && !slices.ContainsFunc(lc.filters, func(f *httpFilter) bool { return f.kind == filterJwt }) {
			return nil, fmt.Errorf("%s: the rbac filter checks roles verified by jwt_authn: put an envoy.filters.http.jwt_authn filter before it", path)
		}
		if f.kind == filterRouter {
			routers++
			if i != len(hcm.GetHttpFilters())-1 {
				return nil, fmt.Errorf("%s: the router filter must be the last one", path)
			}
		}
		if f.kind == filterRateLimit {
			if f.limiter, err = compileLimiter(f.cfg.(*lrlv3.LocalRateLimit), "", lc.trustedHops, &d.opts); err != nil {
				return nil, fmt.Errorf("%s.typed_config.%w", path, err)
			}
		}
		lc.filters = append(lc.filters, f)
	}
	if routers != 1 {
		return nil, fmt.Errorf("%s.http_filters: exactly one envoy.filters.http.router filter is required, last", hp)
	}
	var rc *route.RouteConfiguration
	switch {
	case hcm.GetRds() != nil:
		if hcm.GetRds().GetConfigSource().GetAds() == nil {
			return nil, fmt.Errorf("%s.rds.config_source: only ads is supported", hp)
		}
		n := hcm.GetRds().GetRouteConfigName()
		if rc = g.res.Routes[n]; rc == nil {
			g.missing = append(g.missing, "route configuration "+n)
			rc = &route.RouteConfiguration{Name: n}
		}
	case hcm.GetRouteConfig() != nil:
		rc = hcm.GetRouteConfig()
	default:
		return nil, fmt.Errorf("%s: rds or route_config is required", hp)
	}
	table, err := lc.compileRoutes(rc)
	if err != nil {
		return nil, fmt.Errorf("route configuration %q: %w", rc.GetName(), err)
	}
	lr := &listenerRT{
		name: l.GetName(), table: table, trustedHops: lc.trustedHops,
		genID:     hcm.GetGenerateRequestId() == nil || hcm.GetGenerateRequestId().GetValue(),
		accessLog: d.opts.AccessLog, now: d.opts.Now,
		notFound: d.metrics.rc(l.GetName(), "", ""),
		tr:       d.tracing,
	}
	if lr.tr != nil {
		lr.spanNames = newServerSpanNames(l.GetName())
	}
	return lr, nil
}

func (d *DataPlane) compileFilter(hf *hcmv3.HttpFilter, path string) (*httpFilter, error) {
	tc := hf.GetTypedConfig()
	if tc == nil {
		return nil, fmt.Errorf("%s.typed_config: required", path)
	}
	f := &httpFilter{name: hf.GetName()}
	var msg proto.Message
	switch tc.GetTypeUrl() {
	case typeRouter:
		f.kind, msg = filterRouter, &routerv3.Router{}
	case typeFault:
		f.kind, msg = filterFault, &faultv3.HTTPFault{}
	case typeRateLimit:
		f.kind, msg = filterRateLimit, &lrlv3.LocalRateLimit{}
	case typeJwt:
		f.kind, msg = filterJwt, &jwtv3.JwtAuthentication{}
	case typeRBAC:
		f.kind, msg = filterRBAC, &rbacv3.RBAC{}
	case typeBuffer:
		f.kind, msg = filterBuffer, &bufferv3.Buffer{}
	default:
		return nil, fmt.Errorf("%s.typed_config: unsupported http filter %s", path, tc.GetTypeUrl())
	}
	if err := tc.UnmarshalTo(msg); err != nil {
		return nil, fmt.Errorf("%s.typed_config: %w", path, err)
	}
	if err := checkFields(msg.ProtoReflect(), path+".typed_config"); err != nil {
		return nil, err
	}
	f.cfg = msg
	if f.kind == filterBuffer {
		n, err := maxRequestBytes(msg.(*bufferv3.Buffer))
		if err != nil {
			return nil, fmt.Errorf("%s.typed_config.%w", path, err)
		}
		f.maxBody = n
	}
	if f.kind == filterRBAC {
		roles, err := rbacRoles(msg.(*rbacv3.RBAC))
		if err != nil {
			return nil, fmt.Errorf("%s.typed_config.%w", path, err)
		}
		f.roles = roles
	}
	if f.kind == filterJwt {
		cfg := msg.(*jwtv3.JwtAuthentication)
		if d.opts.Auth == nil {
			return nil, fmt.Errorf("%s: jwt_authn is configured but this proxy has no authenticator", path)
		}
		a, err := d.opts.Auth(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s.typed_config: %w", path, err)
		}
		f.auth = a
		for i, r := range cfg.GetRules() {
			pm, hs, err := compileRouteMatch(r.GetMatch())
			if err != nil {
				return nil, fmt.Errorf("%s.typed_config.rules[%d].match.%w", path, i, err)
			}
			req := &AuthRequirement{Name: fmt.Sprintf("rules[%d]", i), Requirement: r.GetRequires()}
			if n := r.GetRequirementName(); n != "" {
				rq, ok := cfg.GetRequirementMap()[n]
				if !ok {
					return nil, fmt.Errorf("%s.typed_config.rules[%d].requirement_name: %q is not in requirement_map", path, i, n)
				}
				req = &AuthRequirement{Name: n, Requirement: rq}
			}
			if req.Requirement == nil {
				req = nil // a rule without a requirement: no authentication
			}
			f.rules = append(f.rules, authRule{match: pm, headers: hs, req: req})
		}
	}
	return f, nil
}

type routeMeta struct {
	roles         []string
	rateLimitKey  string
	nonIdempotent bool
}

func parseMeta(r *route.Route) (routeMeta, error) {
	m := routeMeta{}
	s := r.GetMetadata().GetFilterMetadata()[MetadataNamespace]
	if s == nil {
		return m, nil
	}
	path := fmt.Sprintf("metadata.filter_metadata[%q]", MetadataNamespace)
	for k, v := range s.GetFields() {
		switch k {
		case MetaRoles:
			lv, ok := v.GetKind().(*structpb.Value_ListValue)
			if !ok {
				return m, fmt.Errorf("%s.%s: want a list of strings", path, k)
			}
			for _, e := range lv.ListValue.GetValues() {
				sv, ok := e.GetKind().(*structpb.Value_StringValue)
				if !ok || sv.StringValue == "" {
					return m, fmt.Errorf("%s.%s: want a list of strings", path, k)
				}
				m.roles = append(m.roles, sv.StringValue)
			}
		case MetaRateLimitKey:
			sv := v.GetStringValue()
			if sv != "ip" && sv != "subject" {
				return m, fmt.Errorf("%s.%s: want \"ip\" or \"subject\"", path, k)
			}
			m.rateLimitKey = sv
		case MetaRouteName:
			if _, ok := v.GetKind().(*structpb.Value_StringValue); !ok {
				return m, fmt.Errorf("%s.%s: want a string", path, k)
			}
		case MetaRetryNonIdempotent:
			bv, ok := v.GetKind().(*structpb.Value_BoolValue)
			if !ok {
				return m, fmt.Errorf("%s.%s: want a bool", path, k)
			}
			m.nonIdempotent = bv.BoolValue
		default:
			return m, fmt.Errorf("%s.%s: unsupported key", path, k)
		}
	}
	return m, nil
}

func (lc *listenerCtx) compileRoutes(rc *route.RouteConfiguration) (*routeTable, error) {
	t := &routeTable{exact: map[string]*vhostRT{}}
	for vi, vh := range rc.GetVirtualHosts() {
		vpath := fmt.Sprintf("virtual_hosts[%d]", vi)
		v := &vhostRT{name: vh.GetName()}
		if len(vh.GetDomains()) == 0 {
			return nil, fmt.Errorf("%s.domains: at least one domain is required", vpath)
		}
		for _, dom := range vh.GetDomains() {
			dl := toLower(dom)
			switch {
			case dl == "*":
				if t.any != nil {
					return nil, fmt.Errorf("%s.domains: \"*\" appears in more than one virtual host", vpath)
				}
				t.any = v
			case len(dl) > 1 && dl[0] == '*':
				t.suffixes = append(t.suffixes, domainVH{s: dl[1:], vh: v})
			case len(dl) > 1 && dl[len(dl)-1] == '*':
				t.prefixes = append(t.prefixes, domainVH{s: dl[:len(dl)-1], vh: v})
			default:
				if _, dup := t.exact[dl]; dup {
					return nil, fmt.Errorf("%s.domains: %q appears twice", vpath, dom)
				}
				t.exact[dl] = v
			}
		}
		for ri, r := range vh.GetRoutes() {
			rt, err := lc.compileRoute(vh, r, vi, ri)
			if err != nil {
				return nil, fmt.Errorf("%s.routes[%d].%w", vpath, ri, err)
			}
			v.routes = append(v.routes, rt)
		}
	}
	// Longest suffix/prefix first, as Envoy does.
	slices.SortStableFunc(t.suffixes, func(a, b domainVH) int { return len(b.s) - len(a.s) })
	slices.SortStableFunc(t.prefixes, func(a, b domainVH) int { return len(b.s) - len(a.s) })
	return t, nil
}

func toLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func (lc *listenerCtx) compileRoute(vh *route.VirtualHost, r *route.Route, vi, ri int) (*routeRT, error) {
	pm, hs, err := compileRouteMatch(r.GetMatch())
	if err != nil {
		return nil, fmt.Errorf("match.%w", err)
	}
	meta, err := parseMeta(r)
	if err != nil {
		return nil, err
	}
	name := r.GetName()
	if name == "" {
		name = fmt.Sprintf("%s/%d", vh.GetName(), ri)
	}
	rt := &routeRT{name: name, match: pm, headers: hs, timeout: routeTimeout{d: int64(defaultRouteTimeout)},
		stats: lc.d.metrics.rc(lc.name, name, "")}
	opts := &lc.d.opts
	var terminal http.Handler
	switch a := r.GetAction().(type) {
	case *route.Route_DirectResponse:
		st := a.DirectResponse.GetStatus()
		if st < 200 || st > 599 {
			return nil, errors.New("direct_response.status: want 200-599")
		}
		dr := &directResponse{status: int(st)}
		if b := a.DirectResponse.GetBody(); b != nil {
			dr.body = append([]byte(b.GetInlineString()), b.GetInlineBytes()...)
		}
		terminal = &statsHandler{next: dr, stats: lc.d.metrics.rc(lc.name, name, "")}
		rt.timeout = routeTimeout{}
	case *route.Route_Route:
		ra := a.Route
		if ra.GetTimeout() != nil {
			d := ra.GetTimeout().AsDuration()
			if d < 0 {
				return nil, errors.New("route.timeout: must not be negative")
			}
			rt.timeout = routeTimeout{d: int64(d), set: true}
		}
		policy, err := compileRetry(ra.GetRetryPolicy(), vh.GetRetryPolicy(), meta.nonIdempotent)
		if err != nil {
			return nil, fmt.Errorf("route.retry_policy.%w", err)
		}
		rw := rewriteCfg{prefixRewrite: ra.GetPrefixRewrite(), host: ra.GetHostRewriteLiteral(), trustedHops: lc.trustedHops}
		if rw.prefixRewrite != "" {
			switch pm.kind {
			case pathPrefix, pathExact:
				rw.prefix = pm.s
			default:
				return nil, errors.New("route.prefix_rewrite: needs a prefix or path match")
			}
		}
		rtr := &router{rand: opts.Rand}
		add := func(c string, w uint64) {
			t := &target{clusterName: c, weight: w, stats: lc.d.metrics.rc(lc.name, name, c)}
			if h := opts.LocalClusters[c]; h != nil {
				t.local, t.rw = h, rw
				t.cl = lc.g.clusters[c] // for max_requests, when present
			} else if cl := lc.g.clusters[c]; cl != nil {
				t.cl = cl
				t.proxy = newProxy(cl, policy, rw, opts.MaxRetryBody, lc.d.tracing)
			} else if lc.name != "" {
				lc.g.missing = append(lc.g.missing, "cluster "+c)
			}
			rtr.targets = append(rtr.targets, t)
			rtr.totalWeight += w
		}
		switch cs := ra.GetClusterSpecifier().(type) {
		case *route.RouteAction_Cluster:
			if cs.Cluster == "" {
				return nil, errors.New("route.cluster: empty")
			}
			add(cs.Cluster, 1)
		case *route.RouteAction_WeightedClusters:
			for i, c := range cs.WeightedClusters.GetClusters() {
				if c.GetName() == "" {
					return nil, fmt.Errorf("route.weighted_clusters.clusters[%d].name: empty", i)
				}
				if w := uint64(c.GetWeight().GetValue()); w > 0 {
					add(c.GetName(), w)
				}
			}
			if rtr.totalWeight == 0 {
				return nil, errors.New("route.weighted_clusters: the weights sum to 0")
			}
		default:
			return nil, errors.New("route: cluster or weighted_clusters is required")
		}
		terminal = rtr
	default:
		return nil, errors.New("action: route or direct_response is required")
	}

	// Wrap the filters around the terminal handler, last filter innermost.
	h := terminal
	perRoute := func(name string) (*anypb.Any, string) {
		if a := r.GetTypedPerFilterConfig()[name]; a != nil {
			return a, fmt.Sprintf("typed_per_filter_config[%q]", name)
		}
		if a := vh.GetTypedPerFilterConfig()[name]; a != nil {
			return a, fmt.Sprintf("(virtual host) typed_per_filter_config[%q]", name)
		}
		return nil, ""
	}
	known := map[string]bool{}
	for _, f := range lc.filters {
		known[f.name] = true
	}
	for k := range r.GetTypedPerFilterConfig() {
		if !known[k] && lc.name != "" {
			return nil, fmt.Errorf("typed_per_filter_config[%q]: no http filter of that name on listener %s", k, lc.name)
		}
	}
	for k := range vh.GetTypedPerFilterConfig() {
		if !known[k] && lc.name != "" {
			return nil, fmt.Errorf("(virtual host) typed_per_filter_config[%q]: no http filter of that name on listener %s", k, lc.name)
		}
	}
	for i := len(lc.filters) - 1; i >= 0; i-- {
		f := lc.filters[i]
		over, opath := perRoute(f.name)
		switch f.kind {
		case filterFault:
			cfg := f.cfg.(*faultv3.HTTPFault)
			if over != nil {
				cfg = &faultv3.HTTPFault{}
				if err := unpack(over, cfg, opath); err != nil {
					return nil, err
				}
			}
			ff, err := compileFault(h, cfg, opts.Rand)
			if err != nil {
				return nil, err
			}
			h = ff
		case filterRateLimit:
			lim := f.limiter // shared by the listener's routes, as Envoy's filter-level bucket
			if over != nil || meta.rateLimitKey != "" {
				cfg := f.cfg.(*lrlv3.LocalRateLimit)
				if over != nil {
					cfg = &lrlv3.LocalRateLimit{}
					if err := unpack(over, cfg, opath); err != nil {
						return nil, err
					}
				}
				var err error
				if lim, err = compileLimiter(cfg, meta.rateLimitKey, lc.trustedHops, opts); err != nil {
					if over != nil {
						return nil, fmt.Errorf("%s.%w", opath, err)
					}
					return nil, err
				}
			}
			h = lc.compileRateLimit(h, lim, name)
		case filterJwt:
			af := &authFilter{next: h, auth: f.auth, rules: f.rules, roles: meta.roles}
			if over != nil {
				var pr jwtv3.PerRouteConfig
				if err := unpack(over, &pr, opath); err != nil {
					return nil, err
				}
				if pr.GetDisabled() {
					if len(meta.roles) > 0 {
						return nil, fmt.Errorf("%s.disabled: the route requires roles", opath)
					}
					continue
				}
				n := pr.GetRequirementName()
				rq, ok := f.cfg.(*jwtv3.JwtAuthentication).GetRequirementMap()[n]
				if !ok {
					return nil, fmt.Errorf("%s.requirement_name: %q is not in requirement_map", opath, n)
				}
				af.fixed = &AuthRequirement{Name: n, Requirement: rq, Roles: meta.roles}
			} else if len(meta.roles) > 0 {
				return nil, fmt.Errorf("metadata.filter_metadata[%q].roles: the route requires roles but has no jwt_authn requirement (typed_per_filter_config[%q])", MetadataNamespace, f.name)
			}
			h = af
		case filterBuffer:
			n := f.maxBody
			if over != nil {
				var pr bufferv3.BufferPerRoute
				if err := unpack(over, &pr, opath); err != nil {
					return nil, err
				}
				if pr.GetDisabled() {
					continue // as Envoy: the filter is off on this route
				}
				if pr.GetBuffer() == nil {
					return nil, fmt.Errorf("%s: disabled or buffer is required", opath)
				}
				var err error
				if n, err = maxRequestBytes(pr.GetBuffer()); err != nil {
					return nil, fmt.Errorf("%s.buffer.%w", opath, err)
				}
			}
			h = &bufferFilter{next: h, max: n}
		case filterRBAC:
			roles := f.roles
			if over != nil {
				var pr rbacv3.RBACPerRoute
				if err := unpack(over, &pr, opath); err != nil {
					return nil, err
				}
				if pr.GetRbac() == nil {
					continue // as Envoy: an RBACPerRoute without rbac disables the filter on the route
				}
				r, err := rbacRoles(pr.GetRbac())
				if err != nil {
					return nil, fmt.Errorf("%s.rbac.%w", opath, err)
				}
				roles = r
			}
			if len(roles) > 0 {
				h = &rbacFilter{next: h, roles: roles}
			}
		}
	}
	if len(meta.roles) > 0 && !slices.ContainsFunc(lc.filters, func(f *httpFilter) bool { return f.kind == filterJwt }) && lc.name != "" {
		return nil, fmt.Errorf("metadata.filter_metadata[%q].roles: listener %s has no jwt_authn filter", MetadataNamespace, lc.name)
	}
	rt.handler = h
	return rt, nil
}

// statsHandler records the (route, no cluster) stats of a direct response.
type statsHandler struct {
	next  http.Handler
	stats *rcStats
}

func (s *statsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if st := stateOf(w); st != nil {
		st.stats = s.stats
	}
	s.next.ServeHTTP(w, r)
}

func unpack(a *anypb.Any, m proto.Message, path string) error {
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("%s: want %s: %w", path, m.ProtoReflect().Descriptor().FullName(), err)
	}
	return checkFields(m.ProtoReflect(), path)
}

// maxRequestBytes reads the buffer filter's required max_request_bytes.
func maxRequestBytes(b *bufferv3.Buffer) (int64, error) {
	v := b.GetMaxRequestBytes()
	if v == nil || v.GetValue() == 0 {
		return 0, errors.New("max_request_bytes: required and positive")
	}
	return int64(v.GetValue()), nil
}

func compileFault(next http.Handler, cfg *faultv3.HTTPFault, rnd func(uint64) uint64) (http.Handler, error) {
	f := &faultFilter{next: next, rand: rnd}
	if dl := cfg.GetDelay(); dl != nil {
		if dl.GetFixedDelay() == nil {
			return nil, errors.New("fault.delay.fixed_delay: required")
		}
		f.delay = dl.GetFixedDelay().AsDuration()
		if f.delay < 0 {
			return nil, errors.New("fault.delay.fixed_delay: must not be negative")
		}
		p, err := perMillion(dl.GetPercentage())
		if err != nil {
			return nil, fmt.Errorf("fault.delay.percentage.%w", err)
		}
		f.delayPct = p
	}
	if ab := cfg.GetAbort(); ab != nil {
		st := ab.GetHttpStatus()
		if st < 200 || st > 599 {
			return nil, errors.New("fault.abort.http_status: want 200-599")
		}
		f.abortStatus = int(st)
		p, err := perMillion(ab.GetPercentage())
		if err != nil {
			return nil, fmt.Errorf("fault.abort.percentage.%w", err)
		}
		f.abortPct = p
	}
	if (f.delay == 0 || f.delayPct == 0) && (f.abortStatus == 0 || f.abortPct == 0) {
		return next, nil
	}
	return f, nil
}

func (lc *listenerCtx) compileRateLimit(next http.Handler, l *rateLimiter, routeName string) http.Handler {
	if l == nil {
		return next
	}
	return &rateLimitHandler{next: next, l: l, limited: lc.d.metrics.rateLimited.WithLabelValues(lc.name, routeName)}
}

func compileRetry(rp, vhDefault *route.RetryPolicy, nonIdempotent bool) (*retryPolicy, error) {
	if rp == nil {
		rp = vhDefault
	}
	if rp == nil {
		return nil, nil
	}
	p := &retryPolicy{num: 1, base: 25 * time.Millisecond, nonIdempotent: nonIdempotent}
	if v := rp.GetNumRetries(); v != nil {
		p.num = int(min(v.GetValue(), 10))
	}
	if d := rp.GetPerTryTimeout(); d != nil {
		p.perTry = d.AsDuration()
		if p.perTry < 0 {
			return nil, errors.New("per_try_timeout: must not be negative")
		}
	}
	if bo := rp.GetRetryBackOff(); bo != nil {
		if bo.GetBaseInterval() == nil || bo.GetBaseInterval().AsDuration() <= 0 {
			return nil, errors.New("retry_back_off.base_interval: must be positive")
		}
		p.base = bo.GetBaseInterval().AsDuration()
		if bo.GetMaxInterval() != nil {
			p.max = bo.GetMaxInterval().AsDuration()
			if p.max < p.base {
				return nil, errors.New("retry_back_off.max_interval: must not be below base_interval")
			}
		}
	}
	if p.max == 0 {
		p.max = 10 * p.base
	}
	for i, hp := range rp.GetRetryHostPredicate() {
		path := fmt.Sprintf("retry_host_predicate[%d]", i)
		tc := hp.GetTypedConfig()
		if tc.GetTypeUrl() != typePreviousHosts {
			return nil, fmt.Errorf("%s.typed_config: unsupported retry host predicate %q (only %s)", path, tc.GetTypeUrl(), typePreviousHosts)
		}
		var ph previoushostsv3.PreviousHostsPredicate
		if err := unpack(tc, &ph, path+".typed_config"); err != nil {
			return nil, err
		}
		p.avoidPrevious = true
	}
	if rp.GetHostSelectionRetryMaxAttempts() < 0 {
		return nil, errors.New("host_selection_retry_max_attempts: must not be negative")
	}
	for _, tok := range splitComma(rp.GetRetryOn()) {
		switch tok {
		case "5xx":
			p.on5xx = true
		case "gateway-error":
			p.onGw = true
		case "reset":
			p.onReset = true
		case "connect-failure":
			p.onCF = true
		case "retriable-status-codes":
		default:
			return nil, fmt.Errorf("retry_on: unsupported condition %q", tok)
		}
	}
	if slices.Contains(splitComma(rp.GetRetryOn()), "retriable-status-codes") {
		for i, c := range rp.GetRetriableStatusCodes() {
			if c < 100 || c > 599 {
				return nil, fmt.Errorf("retriable_status_codes[%d]: want 100-599", i)
			}
			p.codes = append(p.codes, int(c))
		}
	} else if len(rp.GetRetriableStatusCodes()) > 0 {
		return nil, errors.New("retriable_status_codes: needs retry_on retriable-status-codes")
	}
	return p, nil
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			tok := s[start:i]
			for len(tok) > 0 && tok[0] == ' ' {
				tok = tok[1:]
			}
			for len(tok) > 0 && tok[len(tok)-1] == ' ' {
				tok = tok[:len(tok)-1]
			}
			if tok != "" {
				out = append(out, tok)
			}
			start = i + 1
		}
	}
	return out
}
