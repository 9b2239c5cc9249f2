package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"

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
// immutable once made and shared by every node of the class: the snapshot
// cache only reads snapshots.
type built struct {
	snap      *cache.Snapshot
	resources *translate.Resources
	versions  map[string]string // per type URL
	err       error
}

// build translates one node class and checks the result. A translation
// error or an inconsistent result is returned in built.err and must not be
// published.
func build(in *inputs, node translate.Node) *built {
	res, err := translate.Translate(in.table, in.instances, node, in.opts)
	if err != nil {
		return &built{err: fmt.Errorf("translate: %w", err)}
	}
	if err := translate.Consistent(res); err != nil {
		return &built{err: fmt.Errorf("%w: %w", ErrInconsistent, err)}
	}
	byType := res.ByType()
	snap := &cache.Snapshot{}
	versions := make(map[string]string, len(byType))
	for _, t := range Types {
		items := byType[t]
		v, err := hashResources(items)
		if err != nil {
			return &built{err: fmt.Errorf("hash %s: %w", ShortType(t), err)}
		}
		versions[t] = v
		snap.Resources[cache.GetResponseType(t)] = cache.NewResources(v, items)
	}
	return &built{snap: snap, resources: res, versions: versions}
}

// hashResources is the version of one type's resources: a hash of their
// deterministic encoding (the translator sorts them by name). Equal
// content gives an equal version, so a type whose resources did not change
// is not resent to the node.
func hashResources(items []types.Resource) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	for _, it := range items {
		var err error
		buf, err = opts.MarshalAppend(buf[:0], it)
		if err != nil {
			return "", err
		}
		h.Write([]byte(strconv.Itoa(len(buf))))
		h.Write([]byte{0})
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// classKey identifies nodes that receive identical resources: the
// translator looks only at the kind, the service and the metadata (the
// instance name appears in error messages only).
func classKey(n translate.Node) string {
	m := n.Meta
	return fmt.Sprintf("%s|%s|%s|%s|%d|%d|%d|%d|%t", n.ID.Kind, n.ID.Service, m.Service, m.Version,
		m.ListenPort, m.InboundPort, m.OutboundPort, m.AppPort, m.Proxyless)
}
