package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

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
// translator sorts them by name) and versions them with a hash of that
// encoding: equal content gives an equal version, so a type whose
// resources did not change is not resent to the node.
func encode(typeURL string, items []types.Resource) (*encodedType, error) {
	et := &encodedType{
		names:    make([]string, len(items)),
		anys:     make([]*anypb.Any, len(items)),
		index:    make(map[string]int, len(items)),
		returned: make(map[string]string, len(items)),
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
		et.names[i], et.anys[i], et.index[name] = name, &anypb.Any{TypeUrl: typeURL, Value: buf}, i
		h.Write([]byte(strconv.Itoa(len(buf))))
		h.Write([]byte{0})
		h.Write(buf)
	}
	et.version = hex.EncodeToString(h.Sum(nil))[:16]
	for _, name := range et.names {
		et.returned[name] = et.version
	}
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
