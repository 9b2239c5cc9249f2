package xds

import (
	"sort"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/petmesh/petmesh/controlplane/translate"
)

// node is the server's state of one node id (possibly several streams).
//
// Locking: Server.mu guards the node maps and the inputs; n.mu guards the
// node's fields below it, so that the streams (a send, an ACK) lock only
// their own node. tn and class are written with both held and read with
// either. Order: Server.mu before n.mu before a stream's lock.
type node struct {
	id string

	mu             sync.Mutex
	tn             translate.Node
	class          string // classKey(tn)
	streams        map[*stream]struct{}
	connectedSince time.Time
	disconnectedAt time.Time
	published      *built
	routeVersion   int64
	buildErr       string
	types          map[string]*typeState
}

// typeState tracks one type URL of one node.
type typeState struct {
	Latest       string    // published to the node
	LatestAt     time.Time // when Latest was published
	PendingSince time.Time // acceptance of the oldest change not yet ACKed (zero: none)
	Sent         string
	SentAt       time.Time
	Acked        string
	AckedAt      time.Time
	Nack         *Nack
	Convergence  time.Duration // last measured
}

func (n *node) typ(t string) *typeState {
	if n.types == nil {
		n.types = map[string]*typeState{}
	}
	ts, ok := n.types[t]
	if !ok {
		ts = &typeState{}
		n.types[t] = ts
	}
	return ts
}

// Nack is a rejected version.
type Nack struct {
	Version string    `json:"version"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

// TypeStatus is one type URL of one proxy.
type TypeStatus struct {
	TypeURL string `json:"type_url"`
	Type    string `json:"type"`
	// Latest is the version published for the proxy; Sent the last
	// version sent on its stream; Acked the last version it accepted.
	Latest  string     `json:"latest"`
	Sent    string     `json:"sent"`
	SentAt  *time.Time `json:"sent_at,omitempty"`
	Acked   string     `json:"acked"`
	AckedAt *time.Time `json:"acked_at,omitempty"`
	// LastNack is the last rejection (kept after later ACKs, for operators).
	LastNack *Nack `json:"last_nack,omitempty"`
	// ConvergenceSeconds is the last measured time from a change's
	// acceptance to the proxy's ACK of the version carrying it.
	ConvergenceSeconds float64 `json:"convergence_seconds,omitempty"`
}

// ProxyStatus is one proxy (node id) as the control plane sees it.
type ProxyStatus struct {
	ID             string     `json:"id"`
	Kind           string     `json:"kind"` // edge, sidecar, proxyless
	Service        string     `json:"service,omitempty"`
	VersionTag     string     `json:"version_tag,omitempty"`
	Connected      bool       `json:"connected"`
	Streams        int        `json:"streams"`
	ConnectedSince *time.Time `json:"connected_since,omitempty"`
	DisconnectedAt *time.Time `json:"disconnected_at,omitempty"`
	// RouteVersion is the route table version of the latest snapshot.
	RouteVersion int64 `json:"route_version"`
	// Synced: every type's latest version is ACKed.
	Synced bool `json:"synced"`
	// Stale: connected, and not synced for longer than StaleAfter.
	Stale bool `json:"stale"`
	// Error says why the proxy's snapshot cannot be built (it keeps its
	// previous configuration).
	Error string       `json:"error,omitempty"`
	Types []TypeStatus `json:"types"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// kindOf names the flavour a node is served.
func kindOf(tn translate.Node) string {
	if tn.Meta.Proxyless || tn.ID.Kind == "grpc" {
		return "proxyless"
	}
	return string(tn.ID.Kind)
}

// Status returns every known proxy (connected, or disconnected within
// NodeGrace), sorted by id. It locks one node at a time: streams keep
// sending meanwhile.
func (s *Server) Status() []ProxyStatus {
	now := s.now()
	s.mu.Lock()
	nodes := make([]*node, 0, len(s.nodes))
	for _, n := range s.nodes {
		nodes = append(nodes, n)
	}
	s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(nodes))
	for _, n := range nodes {
		n.mu.Lock()
		out = append(out, s.statusLocked(n, now))
		n.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Proxy returns one proxy's status.
func (s *Server) Proxy(id string) (ProxyStatus, bool) {
	now := s.now()
	s.mu.Lock()
	n, ok := s.nodes[id]
	s.mu.Unlock()
	if !ok {
		return ProxyStatus{}, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return s.statusLocked(n, now), true
}

// statusLocked: n.mu must be held.
func (s *Server) statusLocked(n *node, now time.Time) ProxyStatus {
	p := ProxyStatus{
		ID: n.id, Kind: kindOf(n.tn), Service: n.tn.Meta.Service, VersionTag: n.tn.Meta.Version,
		Connected: len(n.streams) > 0, Streams: len(n.streams), RouteVersion: n.routeVersion, Error: n.buildErr,
		Synced: n.published != nil, Types: []TypeStatus{},
	}
	if p.Connected {
		p.ConnectedSince = timePtr(n.connectedSince)
	} else {
		p.DisconnectedAt = timePtr(n.disconnectedAt)
	}
	for _, t := range Types {
		ts, ok := n.types[t]
		if !ok {
			if n.published != nil {
				p.Synced = false
			}
			continue
		}
		if ts.Acked != ts.Latest {
			p.Synced = false
		}
		p.Types = append(p.Types, TypeStatus{
			TypeURL: t, Type: ShortType(t), Latest: ts.Latest, Sent: ts.Sent, SentAt: timePtr(ts.SentAt),
			Acked: ts.Acked, AckedAt: timePtr(ts.AckedAt), LastNack: ts.Nack,
			ConvergenceSeconds: ts.Convergence.Seconds(),
		})
	}
	p.Stale = p.Connected && s.staleLocked(n, now)
	return p
}

// staleLocked: some type's latest version has waited for an ACK longer
// than StaleAfter. n.mu must be held.
func (s *Server) staleLocked(n *node, now time.Time) bool {
	for _, ts := range n.types {
		if ts.Latest != "" && ts.Acked != ts.Latest && now.Sub(ts.LatestAt) > s.opts.StaleAfter {
			return true
		}
	}
	return false
}

// nodeLocked returns the node named in a stream's first request,
// created if needed. s.mu must be held.
func (s *Server) nodeLocked(pn *core.Node, now time.Time) (*node, error) {
	if pn.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "petmesh control plane: the first request must carry node.id")
	}
	tn, err := translate.NodeFromProto(pn)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "petmesh control plane: node %q: %v", pn.GetId(), err)
	}
	n, ok := s.nodes[pn.GetId()]
	if !ok {
		n = &node{id: pn.GetId(), tn: tn, class: classKey(tn), disconnectedAt: now}
		s.nodes[n.id] = n
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if key := classKey(tn); n.class != key {
		n.tn, n.class = tn, key // metadata changed (a restarted proxy): rebuild
		n.published = nil
	}
	return n, nil
}
