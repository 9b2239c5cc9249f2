package translate

import (
	"errors"
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Validator is what every generated Envoy message implements
// (protoc-gen-validate).
type Validator interface{ ValidateAll() error }

// Consistent checks r before it is published: names are unique per type;
// every route configuration a listener (or API listener) names exists and
// every route configuration is named by a listener; every EDS name a
// cluster uses has a load assignment and every load assignment belongs to
// a cluster; every cluster a route or a JWKS fetch names exists; and every
// resource passes its proto's validation rules. It returns all problems
// joined. The xDS server calls it before setting a snapshot.
func Consistent(r *Resources) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	msgs := make([]proto.Message, 0, len(r.Listeners)+len(r.Routes)+len(r.Clusters)+len(r.Endpoints))
	for _, x := range r.Listeners {
		msgs = append(msgs, x)
	}
	for _, x := range r.Routes {
		msgs = append(msgs, x)
	}
	for _, x := range r.Clusters {
		msgs = append(msgs, x)
	}
	for _, x := range r.Endpoints {
		msgs = append(msgs, x)
	}
	for _, m := range msgs {
		if err := validateDeep(m); err != nil {
			bad("%T %s: %w", m, nameOf(m), err)
		}
	}

	names(r.Listeners, (*listenerv3.Listener).GetName, "listener", bad)
	routeNames := names(r.Routes, (*routev3.RouteConfiguration).GetName, "route configuration", bad)
	clusterNames := names(r.Clusters, (*clusterv3.Cluster).GetName, "cluster", bad)
	eds := map[string]bool{}
	for _, e := range r.Endpoints {
		if eds[e.GetClusterName()] {
			bad("duplicate load assignment %q", e.GetClusterName())
		}
		eds[e.GetClusterName()] = true
	}

	referencedRoutes := map[string]bool{}
	referencedClusters := map[string]bool{}
	for _, l := range r.Listeners {
		var managers []*hcm.HttpConnectionManager
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if m := resource.HCMOf(f.GetTypedConfig()); m != nil {
					managers = append(managers, m)
				}
			}
		}
		if a := l.GetApiListener().GetApiListener(); a != nil {
			m := resource.HCMOf(a)
			if m == nil {
				bad("listener %q: api listener is not an http connection manager", l.GetName())
			} else {
				managers = append(managers, m)
			}
		}
		if len(managers) == 0 {
			bad("listener %q: no http connection manager", l.GetName())
		}
		for _, m := range managers {
			name := m.GetRds().GetRouteConfigName()
			if name == "" {
				bad("listener %q: http connection manager without rds", l.GetName())
				continue
			}
			referencedRoutes[name] = true
			if !routeNames[name] {
				bad("listener %q: route configuration %q does not exist", l.GetName(), name)
			}
			for _, hf := range m.GetHttpFilters() {
				if hf.GetName() != resource.FilterJWTAuthn {
					continue
				}
				var ja jwtv3.JwtAuthentication
				if err := hf.GetTypedConfig().UnmarshalTo(&ja); err != nil {
					bad("listener %q: jwt_authn: %w", l.GetName(), err)
					continue
				}
				for pn, p := range ja.GetProviders() {
					if c := p.GetRemoteJwks().GetHttpUri().GetCluster(); c != "" {
						referencedClusters[c] = true
						if !clusterNames[c] {
							bad("listener %q: jwt provider %q: cluster %q does not exist", l.GetName(), pn, c)
						}
					}
				}
			}
		}
	}
	for n := range routeNames {
		if !referencedRoutes[n] {
			bad("route configuration %q is not used by any listener", n)
		}
	}
	for _, rc := range r.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				a := rt.GetRoute()
				if a == nil {
					continue
				}
				var cs []string
				if c := a.GetCluster(); c != "" {
					cs = append(cs, c)
				}
				for _, w := range a.GetWeightedClusters().GetClusters() {
					cs = append(cs, w.GetName())
				}
				if len(cs) == 0 {
					bad("route configuration %q: route %q: no cluster", rc.GetName(), rt.GetName())
				}
				for _, c := range cs {
					referencedClusters[c] = true
					if !clusterNames[c] {
						bad("route configuration %q: route %q: cluster %q does not exist", rc.GetName(), rt.GetName(), c)
					}
				}
			}
		}
	}
	edsNames := map[string]bool{}
	for _, c := range r.Clusters {
		if c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		n := c.GetEdsClusterConfig().GetServiceName()
		if n == "" {
			n = c.GetName()
		}
		edsNames[n] = true
		if !eds[n] {
			bad("cluster %q: load assignment %q does not exist", c.GetName(), n)
		}
	}
	for n := range eds {
		if !edsNames[n] {
			bad("load assignment %q belongs to no EDS cluster", n)
		}
	}
	slices.SortFunc(errs, func(a, b error) int {
		switch {
		case a.Error() < b.Error():
			return -1
		case a.Error() > b.Error():
			return 1
		}
		return 0
	})
	return errors.Join(errs...)
}

func names[T any](xs []T, name func(T) string, kind string, bad func(string, ...any)) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		n := name(x)
		if m[n] {
			bad("duplicate %s %q", kind, n)
		}
		m[n] = true
	}
	return m
}

func nameOf(m proto.Message) string {
	switch x := m.(type) {
	case *listenerv3.Listener:
		return x.GetName()
	case *routev3.RouteConfiguration:
		return x.GetName()
	case *clusterv3.Cluster:
		return x.GetName()
	}
	if x, ok := m.(interface{ GetClusterName() string }); ok {
		return x.GetClusterName()
	}
	return ""
}

// validateDeep runs m's validation rules and those of every message packed
// in an Any inside it (typed filter configs, per-route configs), which
// ValidateAll alone does not look into.
func validateDeep(m proto.Message) error {
	var errs []error
	if v, ok := m.(Validator); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, err)
		}
	}
	var walk func(protoreflect.Message)
	walk = func(pm protoreflect.Message) {
		if a, ok := pm.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
				return
			}
			if v, ok := inner.(Validator); ok {
				if err := v.ValidateAll(); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
				}
			}
			walk(inner.ProtoReflect())
			return
		}
		pm.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if !fieldCanHoldAny(fd) {
				return true // no Any below: its rules were checked by ValidateAll
			}
			switch {
			case fd.IsList() && fd.Message() != nil:
				l := v.List()
				for i := range l.Len() {
					walk(l.Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	return errors.Join(errs...)
}
