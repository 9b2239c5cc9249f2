package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Types are the type URLs the server publishes, in ADS order.
var Types = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

// ShortType names a type URL in metrics and logs: listener, route,
// cluster, endpoint.
func ShortType(t string) string {
	switch t {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "endpoint"
	}
	return t
}

// encodedType is one type's resources of a node class, encoded once. The
// anys (and their bytes) and the delta resources are shared, read-only,
// by every response of every node of the class: a change is serialised
// once per class, not once per stream.
type encodedType struct {
	typeURL   string
	version   string                // hash of every resource's encoding
	names     []string              // sorted
	anys      []*anypb.Any          // in names order
	rversions []string              // per resource: hash of its encoding (delta)
	resources []*discovery.Resource // in names order (delta)
	index     map[string]int
}

// built is the outcome of translating one node class (every node with the
// same kind, service and metadata gets the same resources). It is
// immutable once made and shared by every node of the class, and so are
// its encoded resources: each resource is serialised once per class and
// the same bytes are sent on every stream.
type built struct {
	encoded   map[string]*encodedType // per type URL
	resources *translate.Resources
	versions  map[string]string // per type URL
	err       error
}

// build translates one node class, checks the result and encodes it. A
// translation error or an inconsistent result is returned in built.err
// and must not be published.
func build(in *inputs, node translate.Node) *built {
	res, err := translate.Translate(in.table, in.instances, node, in.opts)
	if err != nil {
		return &built{err: fmt.Errorf("translate: %w", err)}
	}
	if err := translate.Consistent(res); err != nil {
		return &built{err: fmt.Errorf("%w: %w", ErrInconsistent, err)}
	}
	byType := res.ByType()
	b := &built{resources: res, encoded: make(map[string]*encodedType, len(Types)), versions: make(map[string]string, len(Types))}
	for _, t := range Types {
		et, err := encode(t, byType[t])
		if err != nil {
			return &built{err: fmt.Errorf("encode %s: %w", ShortType(t), err)}
		}
		b.encoded[t] = et
		b.versions[t] = et.version
	}
	return b
}

// encode serialises one type's resources (deterministically; the
// translator sorts them by name) and versions each with a hash of its
// encoding, and the type with a hash of those: equal content gives an
// equal version, so a type whose resources did not change is not resent
// to the node.
func encode(typeURL string, items []types.Resource) (*encodedType, error) {
	et := &encodedType{
		typeURL:   typeURL,
		names:     make([]string, len(items)),
		anys:      make([]*anypb.Any, len(items)),
		rversions: make([]string, len(items)),
		resources: make([]*discovery.Resource, len(items)),
		index:     make(map[string]int, len(items)),
	}
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for i, it := range items {
		buf, err := opts.Marshal(canonical(it))
		if err != nil {
			return nil, err
		}
		name := cache.GetResourceName(it)
		if _, dup := et.index[name]; dup {
			return nil, fmt.Errorf("duplicate resource name %q", name)
		}
		// Each resource is hashed once: its own version (delta) is its
		// hash, the type's version a hash of the resources' hashes.
		sum := sha256.Sum256(buf)
		a := &anypb.Any{TypeUrl: typeURL, Value: buf}
		et.names[i], et.anys[i], et.index[name] = name, a, i
		et.rversions[i] = hex.EncodeToString(sum[:8])
		et.resources[i] = &discovery.Resource{Name: name, Version: et.rversions[i], Resource: a}
		h.Write([]byte(strconv.Itoa(len(buf))))
		h.Write([]byte{0})
		h.Write(sum[:])
	}
	et.version = hex.EncodeToString(h.Sum(nil))[:16]
	return et, nil
}

// classKey identifies nodes that receive identical resources: the
// translator looks only at the kind, the service and the metadata (the
// instance name appears in error messages only).
func classKey(n translate.Node) string {
	m := n.Meta
	return fmt.Sprintf("%s|%s|%s|%s|%d|%d|%d|%d|%t", n.ID.Kind, n.ID.Service, m.Service, m.Version,
		m.ListenPort, m.InboundPort, m.OutboundPort, m.AppPort, m.Proxyless)
}
