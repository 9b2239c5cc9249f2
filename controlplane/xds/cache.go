package xds

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// encodedType is one type's resources of a node class, encoded once. The
// anys (and their bytes) are shared, read-only, by every response of
// every node of the class: a change is serialised once per class, not
// once per stream.
type encodedType struct {
	version  string
	names    []string     // sorted
	anys     []*anypb.Any // in names order
	index    map[string]int
	returned map[string]string // every name at version: cloned for wildcard responses
}

// sharedCache is the server's cache.Cache: go-control-plane's state of
// the world watch protocol over per-node snapshots of pre-encoded
// resources. It behaves like cache.SnapshotCache in non-ADS mode (a
// request by name is answered with the named resources it finds; a
// wildcard request with every resource of the type) with three
// differences that matter at a thousand proxies:
//
//   - Responses carry the class's pre-encoded Any values; SnapshotCache
//     marshals every resource again for every response.
//   - A snapshot change answers the node's open watches in ADS order
//     (clusters, endpoints, listeners, routes), so a proxy never sees a
//     route to a cluster it has not been sent.
//   - No snapshot object is copied per node: a node's snapshot is a
//     pointer to its class's *built.
//
// Delta xDS and REST fetch are not served.
type sharedCache struct {
	log *slog.Logger

	nodes   sync.Map // node id → *cacheNode
	nextID  atomic.Int64
	dropped atomic.Int64 // responses that found a full stream channel (never expected)
}

// cacheNode is one node's snapshot and open watches, under its own lock:
// streams of different nodes never wait for each other.
type cacheNode struct {
	mu      sync.Mutex
	gone    bool // removed by ClearSnapshot: look the node up again
	snap    *built
	watches map[int64]*sotwWatch
}

type sotwWatch struct {
	req *discovery.DiscoveryRequest
	sub cache.Subscription
	out chan cache.Response
	// complete is the version of the type's resources that the stream
	// was found to have been sent in full (nothing unsent): while the
	// watch is open its subscription does not change, and equal versions
	// have equal names, so the check is not repeated at every snapshot.
	complete string
}

var _ cache.Cache = (*sharedCache)(nil)

func newSharedCache(log *slog.Logger) *sharedCache {
	return &sharedCache{log: log}
}

// lockNode returns the node's entry, created if needed, locked.
func (c *sharedCache) lockNode(id string) *cacheNode {
	for {
		v, ok := c.nodes.Load(id)
		if !ok {
			v, _ = c.nodes.LoadOrStore(id, &cacheNode{watches: map[int64]*sotwWatch{}})
		}
		n := v.(*cacheNode)
		n.mu.Lock()
		if !n.gone {
			return n
		}
		n.mu.Unlock()
	}
}

// SetSnapshot makes b the node's snapshot and answers every open watch
// whose type's version differs, or whose stream has not been sent some of
// the resources it subscribes to (a proxy that reconnected with the
// version it had, before the server had a snapshot for it: it is sent
// the resources again, so that its status shows what it runs), in ADS
// order. b must not be modified afterwards.
func (c *sharedCache) SetSnapshot(nodeID string, b *built) {
	n := c.lockNode(nodeID)
	defer n.mu.Unlock()
	n.snap = b
	// A stream has at most one watch per type; a node rarely has more
	// than one stream. Answer in ADS order.
	for _, t := range Types {
		et := b.encoded[t]
		for id, w := range n.watches {
			if w.req.GetTypeUrl() != t || et.version == w.complete {
				continue
			}
			if et.version == w.req.GetVersionInfo() && !unsent(et, w.sub) {
				w.complete = et.version
				continue
			}
			c.respond(w, et)
			delete(n.watches, id)
		}
	}
}

// ClearSnapshot forgets a node: its snapshot and open watches.
func (c *sharedCache) ClearSnapshot(nodeID string) {
	v, ok := c.nodes.Load(nodeID)
	if !ok {
		return
	}
	n := v.(*cacheNode)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.gone, n.snap, n.watches = true, nil, nil
	c.nodes.CompareAndDelete(nodeID, n)
}

// CreateWatch implements cache.ConfigWatcher: it answers at once when the
// node's snapshot has a different version of the type, or resources the
// subscription has not been sent yet; otherwise it keeps the watch open
// until SetSnapshot.
func (c *sharedCache) CreateWatch(req *cache.Request, sub cache.Subscription, out chan cache.Response) (func(), error) {
	n := c.lockNode(req.GetNode().GetId())
	defer n.mu.Unlock()
	w := &sotwWatch{req: req, sub: sub, out: out}
	if n.snap != nil {
		if et := n.snap.encoded[req.GetTypeUrl()]; et != nil {
			if et.version != req.GetVersionInfo() || unsent(et, sub) {
				c.respond(w, et)
				return func() {}, nil
			}
			w.complete = et.version
		}
	}
	id := c.nextID.Add(1)
	n.watches[id] = w
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.watches, id) // no-op once gone (nil map)
	}, nil
}

// unsent reports whether the subscription covers a resource of et that
// the stream has not been sent (a new name, or a new wildcard).
func unsent(et *encodedType, sub cache.Subscription) bool {
	returned := sub.ReturnedResources()
	if sub.IsWildcard() {
		for _, name := range et.names {
			if _, ok := returned[name]; !ok {
				return true
			}
		}
		return false
	}
	for name := range sub.SubscribedResources() {
		if _, ok := returned[name]; ok {
			continue
		}
		if _, ok := et.index[name]; ok {
			return true
		}
	}
	return false
}

// respond sends et to the watch's stream; the watch's node must be
// locked.
func (c *sharedCache) respond(w *sotwWatch, et *encodedType) {
	r := &sharedResponse{req: w.req, version: et.version}
	if w.sub.IsWildcard() || len(w.req.GetResourceNames()) == 0 {
		r.anys = et.anys
		r.returned = maps.Clone(et.returned)
	} else {
		r.returned = make(map[string]string, len(w.req.GetResourceNames()))
		idx := make([]int, 0, len(w.req.GetResourceNames()))
		for _, name := range w.req.GetResourceNames() {
			i, ok := et.index[name]
			if !ok {
				continue
			}
			if _, dup := r.returned[name]; dup {
				continue
			}
			r.returned[name] = et.version
			idx = append(idx, i)
		}
		slices.Sort(idx)
		r.anys = make([]*anypb.Any, len(idx))
		for j, i := range idx {
			r.anys[j] = et.anys[i]
		}
	}
	// The stream's channel has room for one response per type, and a
	// stream has at most one watch per type, so this never blocks; never
	// block the cache on a stream anyway.
	select {
	case w.out <- r:
	default:
		c.dropped.Add(1)
		c.log.Error("xds: stream response channel full, response dropped", "node", w.req.GetNode().GetId(), "type", ShortType(w.req.GetTypeUrl()))
	}
}

// CreateDeltaWatch implements cache.ConfigWatcher: delta xDS is refused
// (the server callbacks refuse delta streams before this is reached).
func (c *sharedCache) CreateDeltaWatch(*cache.DeltaRequest, cache.Subscription, chan cache.DeltaResponse) (func(), error) {
	return nil, errors.New("delta xDS is not supported")
}

// Fetch implements cache.ConfigFetcher: REST fetch is refused.
func (c *sharedCache) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errors.New("fetch is not supported")
}

// sharedResponse is a state of the world response over shared encoded
// resources.
type sharedResponse struct {
	req      *discovery.DiscoveryRequest
	version  string
	anys     []*anypb.Any
	returned map[string]string
}

var _ cache.Response = (*sharedResponse)(nil)

// GetDiscoveryResponse returns a new response message each time (the
// server sets its nonce on it) sharing the encoded resources.
func (r *sharedResponse) GetDiscoveryResponse() (*discovery.DiscoveryResponse, error) {
	return &discovery.DiscoveryResponse{VersionInfo: r.version, Resources: r.anys, TypeUrl: r.req.GetTypeUrl()}, nil
}

func (r *sharedResponse) GetRequest() *discovery.DiscoveryRequest { return r.req }

// GetVersion implements cache.Response (deprecated there).
func (r *sharedResponse) GetVersion() (string, error) { return r.version, nil }

func (r *sharedResponse) GetResponseVersion() string { return r.version }

// GetReturnedResources is a map per response: the stream's subscription
// takes ownership of it and deletes names the client unsubscribes from.
func (r *sharedResponse) GetReturnedResources() map[string]string { return r.returned }

func (r *sharedResponse) GetContext() context.Context { return context.Background() }
