package xds

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// The ADS service: state of the world (StreamAggregatedResources) and
// incremental (DeltaAggregatedResources) streams served straight from the
// nodes' snapshots.
//
// Why not go-control-plane's stream server and cache: at a thousand
// proxies, what a change costs is per stream. Its server hands every
// request from a receiving goroutine to a processing goroutine, rebuilds
// the subscription's maps and opens a watch object for every ACK, and its
// cache interface answers one watch at a time. Here a stream is two
// goroutines and a little state per type:
//
//   - the receiving goroutine handles a request where it arrives (ACK or
//     NACK bookkeeping, subscription changes) and wakes the sender only
//     when something is due;
//   - publishing a snapshot to a node is a pointer store and a
//     non-blocking wake per stream (a one-slot channel: pushes that
//     arrive while the sender is busy merge, the sender always sends the
//     latest snapshot, so no queue grows);
//   - the sender builds responses from the class's pre-encoded resources
//     (shared by every stream of the class, never copied or re-encoded),
//     in ADS order (clusters, endpoints, listeners, routes), at most one
//     response per type in flight: a type that has a newer version for the
//     stream while its previous response still awaits the ACK holds back
//     the types after it, so that a proxy is never sent a route to a
//     cluster it has not been sent.
//
// Protocol rules (as go-control-plane's): a request whose response_nonce
// is not the type's latest nonce is stale and ignored; a first request
// without resource names subscribes to everything (legacy wildcard) until
// names are given; "*" subscribes to everything explicitly; a NACKed
// version is not resent, the next different one is.

// numTypes is len(Types).
const numTypes = 4

// typeIndex is t's index in Types, or -1.
func typeIndex(t string) int {
	for i, x := range Types {
		if x == t {
			return i
		}
	}
	return -1
}

// request is one request of either ADS variant.
type request struct {
	node    *core.Node
	typeURL string
	nonce   string
	errMsg  *rpcstatus.Status
	// state of the world
	version string
	names   []string
	// delta
	subscribe, unsubscribe []string
	initial                map[string]string
}

// response is one response of either variant, built under the stream's
// lock and sent outside it.
type response struct {
	typeURL, version, nonce string
	anys                    []*anypb.Any          // state of the world
	resources               []*discovery.Resource // delta
	removed                 []string              // delta
}

// transport is a gRPC ADS stream of either variant.
type transport interface {
	recv() (*request, error)
	send(*response) error
}

type sotwTransport struct {
	grpc.BidiStreamingServer[discovery.DiscoveryRequest, discovery.DiscoveryResponse]
}

func (t sotwTransport) recv() (*request, error) {
	r, err := t.Recv()
	if err != nil {
		return nil, err
	}
	return &request{node: r.GetNode(), typeURL: r.GetTypeUrl(), nonce: r.GetResponseNonce(), errMsg: r.GetErrorDetail(),
		version: r.GetVersionInfo(), names: r.GetResourceNames()}, nil
}

func (t sotwTransport) send(r *response) error {
	return t.Send(&discovery.DiscoveryResponse{VersionInfo: r.version, Resources: r.anys, TypeUrl: r.typeURL, Nonce: r.nonce})
}

type deltaTransport struct {
	grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]
}

func (t deltaTransport) recv() (*request, error) {
	r, err := t.Recv()
	if err != nil {
		return nil, err
	}
	return &request{node: r.GetNode(), typeURL: r.GetTypeUrl(), nonce: r.GetResponseNonce(), errMsg: r.GetErrorDetail(),
		subscribe: r.GetResourceNamesSubscribe(), unsubscribe: r.GetResourceNamesUnsubscribe(), initial: r.GetInitialResourceVersions()}, nil
}

func (t deltaTransport) send(r *response) error {
	return t.Send(&discovery.DeltaDiscoveryResponse{SystemVersionInfo: r.version, Resources: r.resources, RemovedResources: r.removed, TypeUrl: r.typeURL, Nonce: r.nonce})
}

// adsService is the gRPC service; ctx is Serve's (its end closes every
// stream).
type adsService struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	s   *Server
	ctx context.Context
}

func (a *adsService) StreamAggregatedResources(gs grpc.BidiStreamingServer[discovery.DiscoveryRequest, discovery.DiscoveryResponse]) error {
	return a.s.serveStream(a.ctx, gs.Context(), sotwTransport{gs}, false)
}

func (a *adsService) DeltaAggregatedResources(gs grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
	return a.s.serveStream(a.ctx, gs.Context(), deltaTransport{gs}, true)
}

// stream is one ADS stream.
//
// Locking: st.mu guards the fields below it. Order: Server.mu, node.mu,
// stream.mu (publishLocked holds the first two when it hands a stream a
// snapshot); the receiving goroutine and the sender never hold st.mu
// while they take node.mu.
type stream struct {
	id    int64
	delta bool
	wake  chan struct{}   // one slot: something may be due
	sctx  context.Context // the gRPC stream's: carries its token's node patterns

	mu    sync.Mutex
	n     *node  // bound by the first request
	snap  *built // the node's latest snapshot
	subs  [numTypes]*typeSub
	nonce uint64
}

// typeSub is a stream's subscription to one type.
type typeSub struct {
	legacy   bool                // no name given yet: everything (legacy wildcard)
	wildcard bool                // "*"
	names    map[string]struct{} // explicit names; replaced, never modified, when they change
	gen      uint64              // bumped when the subscription changes

	nonce       string // of the latest response ("" before the first)
	inflight    bool   // the latest response awaits its ACK or NACK
	sentVersion string // type version of the latest response
	sentGen     uint64 // gen of the latest response
	nacked      string // type version last rejected: not resent
	nackedGen   uint64

	// state of the world
	clientVersion string // version_info of the latest request: what the client runs

	// delta
	have      map[string]string // resource versions the client holds
	pending   map[string]string // changes of the in-flight response ("" = removed)
	confirmed string            // type version found in sync without a response
}

func (sub *typeSub) all() bool { return sub.legacy || sub.wildcard }

// setNames applies a state-of-the-world request's resource names.
func (sub *typeSub) setNames(names []string) {
	if sub.legacy {
		if len(names) == 0 {
			return
		}
		sub.legacy = false
		sub.gen++
	}
	wildcard := slices.Contains(names, "*")
	same := wildcard == sub.wildcard
	if same {
		n := 0
		for _, name := range names {
			if name == "*" {
				continue
			}
			if _, ok := sub.names[name]; !ok {
				same = false
				break
			}
			n++
		}
		same = same && n == len(sub.names) && !hasDuplicates(names)
	}
	if same {
		return
	}
	m := make(map[string]struct{}, len(names))
	for _, name := range names {
		if name != "*" {
			m[name] = struct{}{}
		}
	}
	sub.names, sub.wildcard = m, wildcard
	sub.gen++
}

func hasDuplicates(names []string) bool {
	if len(names) < 2 {
		return false
	}
	if len(names) <= 16 { // the usual case: no allocation
		for i := 1; i < len(names); i++ {
			if slices.Contains(names[:i], names[i]) {
				return true
			}
		}
		return false
	}
	seen := make(map[string]struct{}, len(names))
	for _, n := range names {
		if _, ok := seen[n]; ok {
			return true
		}
		seen[n] = struct{}{}
	}
	return false
}

// update applies a delta request's subscription changes.
func (sub *typeSub) update(subscribe, unsubscribe []string) {
	if sub.legacy {
		if len(subscribe) == 0 {
			return
		}
		sub.legacy = false
		// A legacy wildcard stream stays wildcard until "*" is
		// unsubscribed (xDS protocol, "How the client specifies what
		// resources to return").
		sub.wildcard = true
	}
	if len(subscribe) == 0 && len(unsubscribe) == 0 {
		return
	}
	m := make(map[string]struct{}, len(sub.names)+len(subscribe))
	for n := range sub.names {
		m[n] = struct{}{}
	}
	for _, n := range subscribe {
		if n == "*" {
			sub.wildcard = true
		} else {
			m[n] = struct{}{}
		}
	}
	for _, n := range unsubscribe {
		if n == "*" {
			sub.wildcard = false
			continue
		}
		delete(m, n)
		if !sub.wildcard {
			delete(sub.have, n) // the client forgets it
		}
	}
	sub.names = m
	sub.gen++
}

// namesAll reports whether the explicit names are exactly et's (the usual
// case: a proxy subscribes to the load assignments of all its EDS
// clusters, to the route configurations of all its listeners), so that
// the shared list is sent as is.
func (sub *typeSub) namesAll(et *encodedType) bool {
	if len(sub.names) != len(et.names) {
		return false
	}
	for _, name := range et.names {
		if _, ok := sub.names[name]; !ok {
			return false
		}
	}
	return true
}

// subscribed reports whether name is subscribed.
func (sub *typeSub) subscribed(name string) bool {
	if sub.all() {
		return true
	}
	_, ok := sub.names[name]
	return ok
}

// sotwResponse returns the response the stream needs for et, or nil.
// blocked reports a needed response that must wait for the in-flight one.
func (sub *typeSub) sotwResponse(et *encodedType) (r *response, blocked bool) {
	if sub.inflight {
		return nil, et.version != sub.sentVersion || sub.gen != sub.sentGen
	}
	need := et.version != sub.clientVersion && !(et.version == sub.nacked && sub.gen == sub.nackedGen)
	// The same version, but not sent on this stream with this
	// subscription: a new name, or a reconnected proxy.
	need = need || (et.version != sub.nacked && (et.version != sub.sentVersion || sub.gen != sub.sentGen))
	if !need {
		return nil, false
	}
	r = &response{typeURL: et.typeURL, version: et.version}
	if sub.all() || sub.namesAll(et) {
		r.anys = et.anys
	} else {
		idx := make([]int, 0, len(sub.names))
		for name := range sub.names {
			if i, ok := et.index[name]; ok {
				idx = append(idx, i)
			}
		}
		slices.Sort(idx)
		r.anys = make([]*anypb.Any, len(idx))
		for j, i := range idx {
			r.anys[j] = et.anys[i]
		}
	}
	sub.sentVersion, sub.sentGen = et.version, sub.gen
	return r, false
}

// deltaResponse returns the response the stream needs for et (changed and
// removed resources), or nil; confirmed reports a client found in sync
// with et without a response (its status is then updated).
func (sub *typeSub) deltaResponse(et *encodedType) (r *response, blocked, confirmed bool) {
	if sub.inflight {
		return nil, et.version != sub.sentVersion || sub.gen != sub.sentGen, false
	}
	if (et.version == sub.nacked && sub.gen == sub.nackedGen) || (et.version == sub.sentVersion && sub.gen == sub.sentGen) {
		return nil, false, false
	}
	r = &response{typeURL: et.typeURL, version: et.version}
	pending := map[string]string{}
	consider := func(i int) {
		name := et.names[i]
		if v := et.rversions[i]; sub.have[name] != v {
			r.resources = append(r.resources, et.resources[i])
			pending[name] = v
		}
	}
	if sub.all() {
		for i := range et.names {
			consider(i)
		}
	} else {
		idx := make([]int, 0, len(sub.names))
		for name := range sub.names {
			if i, ok := et.index[name]; ok {
				idx = append(idx, i)
			}
		}
		slices.Sort(idx)
		for _, i := range idx {
			consider(i)
		}
	}
	for name := range sub.have {
		if _, ok := et.index[name]; !ok || !sub.subscribed(name) {
			r.removed = append(r.removed, name)
			pending[name] = ""
		}
	}
	slices.Sort(r.removed)
	sub.sentVersion, sub.sentGen = et.version, sub.gen
	if len(r.resources) == 0 && len(r.removed) == 0 {
		confirmed = sub.confirmed != et.version
		sub.confirmed = et.version
		return nil, false, confirmed
	}
	sub.pending = pending
	return r, false, false
}

// due builds the responses the stream needs now, in ADS order, and
// marks them in flight. It also returns the types found in sync without
// a response (delta).
func (st *stream) due() (out []*response, confirmed []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.snap == nil {
		return nil, nil
	}
	for i, t := range Types {
		sub := st.subs[i]
		if sub == nil {
			continue
		}
		et := st.snap.encoded[t]
		var r *response
		var blocked, ok bool
		if st.delta {
			r, blocked, ok = sub.deltaResponse(et)
			if ok {
				confirmed = append(confirmed, t)
			}
		} else {
			r, blocked = sub.sotwResponse(et)
		}
		if blocked {
			break // keep ADS order: later types wait for this one's ACK
		}
		if r == nil {
			continue
		}
		st.nonce++
		r.nonce = strconv.FormatUint(st.nonce, 10)
		sub.nonce, sub.inflight = r.nonce, true
		out = append(out, r)
	}
	return out, confirmed
}

// signal wakes the sender; it never blocks.
func (st *stream) signal() {
	select {
	case st.wake <- struct{}{}:
	default: // already awake: it reads the latest state
	}
}

// serveStream runs one ADS stream until it ends, ctx (Serve's) is done or
// a request is invalid.
func (s *Server) serveStream(ctx, sctx context.Context, tr transport, delta bool) error {
	st := &stream{id: s.nextStream.Add(1), delta: delta, wake: make(chan struct{}, 1), sctx: sctx}
	defer s.detach(st)
	// The receiving goroutine ends when Recv fails, which it does once
	// this handler has returned (gRPC then cancels the stream); Serve
	// waits for it after the gRPC server stopped.
	recvErr := make(chan error, 1)
	s.streamGoroutines.Go(func() {
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("xds: panic handling a request", "stream", st.id, "panic", p)
				recvErr <- status.Error(codes.Internal, "petmesh control plane: internal error")
			}
		}()
		for {
			req, err := tr.recv()
			if err != nil {
				recvErr <- nil // the client ended the stream, or the stream was cancelled
				return
			}
			if err := s.handle(st, req); err != nil {
				recvErr <- err
				return
			}
		}
	})
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sctx.Done():
			return nil
		case err := <-recvErr:
			return err
		case <-st.wake:
			out, confirmed := st.due()
			st.mu.Lock()
			n := st.n
			st.mu.Unlock()
			now := s.now()
			for _, t := range confirmed {
				s.recordConfirmed(n, t, now)
			}
			for _, r := range out {
				s.recordSent(n, r.typeURL, r.version, now)
				if err := tr.send(r); err != nil {
					return err
				}
			}
		}
	}
}

// handle processes one request on the receiving goroutine.
func (s *Server) handle(st *stream, req *request) error {
	now := s.now()
	st.mu.Lock()
	n := st.n
	st.mu.Unlock()
	if n == nil {
		if id := req.node.GetId(); req.node != nil && !nodeAllowed(st.sctx, id) {
			s.log.Warn("xds: token may not serve this node", "node", id, "stream", st.id)
			return status.Errorf(codes.PermissionDenied, "petmesh control plane: this xds token may not serve node %q", id)
		}
		var err error
		s.mu.Lock()
		n, err = s.attachLocked(st, req.node, now)
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	if req.typeURL == "" {
		return status.Error(codes.InvalidArgument, "petmesh control plane: type_url is required on ADS")
	}
	i := typeIndex(req.typeURL)
	if i < 0 {
		return nil // a type this server does not publish: never answered
	}

	st.mu.Lock()
	sub := st.subs[i]
	first := sub == nil
	if first {
		sub = &typeSub{names: map[string]struct{}{}}
		st.subs[i] = sub
	}
	answered := !first && sub.inflight && req.nonce == sub.nonce
	if !first && req.nonce != sub.nonce && (!st.delta || req.nonce != "") {
		// Stale: an answer to an older response (or, in the state of the
		// world, a request that does not name the latest response).
		st.mu.Unlock()
		return nil
	}
	var acked, nacked string
	if answered {
		sub.inflight = false
		if req.errMsg != nil {
			nacked = sub.sentVersion
			sub.nacked, sub.nackedGen = sub.sentVersion, sub.sentGen
			sub.pending = nil
		} else if st.delta {
			acked = sub.sentVersion
			for name, v := range sub.pending {
				if v == "" {
					delete(sub.have, name)
				} else {
					sub.have[name] = v
				}
			}
			sub.pending = nil
		}
	}
	if st.delta {
		if first {
			sub.legacy = len(req.subscribe) == 0
			sub.have = map[string]string{}
			for name, v := range req.initial {
				sub.have[name] = v
			}
		}
		sub.update(req.subscribe, req.unsubscribe)
	} else {
		if first {
			sub.legacy = len(req.names) == 0
		}
		sub.setNames(req.names)
		if req.errMsg == nil {
			sub.clientVersion = req.version
			acked = req.version
		} else {
			sub.clientVersion = req.version // the version it still runs
		}
	}
	wake := st.mayNeedLocked()
	st.mu.Unlock()

	s.recordRequest(n, req.typeURL, acked, nacked, req.errMsg, now)
	if wake {
		st.signal()
	}
	return nil
}

// mayNeedLocked reports whether a type may need a response (the sender
// decides): an ACK of the latest version wakes nobody. st.mu must be
// held.
func (st *stream) mayNeedLocked() bool {
	if st.snap == nil {
		return false
	}
	for i, sub := range st.subs {
		if sub == nil || sub.inflight {
			continue
		}
		v := st.snap.encoded[Types[i]].version
		if v == sub.nacked && sub.gen == sub.nackedGen {
			continue
		}
		if v != sub.sentVersion || sub.gen != sub.sentGen || (!st.delta && v != sub.clientVersion) {
			return true
		}
	}
	return false
}

// attachLocked binds stream st to the node named in its first request,
// creating the node, and builds the node's snapshot when it has none.
// s.mu must be held.
func (s *Server) attachLocked(st *stream, pn *core.Node, now time.Time) (*node, error) {
	n, err := s.nodeLocked(pn, now)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	if n.streams == nil {
		n.streams = map[*stream]struct{}{}
	}
	n.streams[st] = struct{}{}
	if len(n.streams) == 1 {
		n.connectedSince = now
		s.log.Info("xds: proxy connected", "node", n.id, "kind", kindOf(n.tn), "service", n.tn.Meta.Service, "delta", st.delta)
	}
	st.mu.Lock()
	st.n, st.snap = n, n.published
	st.mu.Unlock()
	unpublished := n.published == nil
	n.mu.Unlock()
	if unpublished {
		s.publishLocked(n, now)
	}
	return n, nil
}

// detach unbinds a finished stream from its node.
func (s *Server) detach(st *stream) {
	st.mu.Lock()
	n := st.n
	st.mu.Unlock()
	if n == nil {
		return
	}
	now := s.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.streams, st)
	if len(n.streams) == 0 {
		n.disconnectedAt = now
		s.log.Info("xds: proxy disconnected", "node", n.id)
	}
}

// recordRequest updates the node's status with a request's ACK or NACK.
func (s *Server) recordRequest(n *node, t, acked, nacked string, errMsg *rpcstatus.Status, now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ts := n.typ(t)
	if errMsg != nil {
		s.metrics.nacks.WithLabelValues(ShortType(t)).Inc()
		v := nacked
		if v == "" {
			v = ts.Sent
		}
		ts.Nack = &Nack{Version: v, Message: errMsg.GetMessage(), At: now}
		s.log.Warn("xds: proxy rejected config (NACK)", "node", n.id, "type", ShortType(t), "version", v, "error", errMsg.GetMessage())
		return
	}
	if acked != "" {
		s.ackLocked(n, ts, t, acked, now)
	}
}

// recordConfirmed: a delta client found holding every resource of
// version v (a reconnect with its initial resource versions).
func (s *Server) recordConfirmed(n *node, t string, now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if v := n.typ(t).Latest; v != "" {
		s.ackLocked(n, n.typ(t), t, v, now)
	}
}

// ackLocked records that the node runs version v of type t, and the
// convergence time when v is the latest. n.mu must be held.
func (s *Server) ackLocked(n *node, ts *typeState, t, v string, now time.Time) {
	ts.Acked, ts.AckedAt = v, now
	if v == ts.Latest && !ts.PendingSince.IsZero() {
		d := now.Sub(ts.PendingSince)
		ts.Convergence = d
		ts.PendingSince = time.Time{}
		s.metrics.convergence.WithLabelValues(ShortType(t)).Observe(d.Seconds())
	}
}

// recordSent records a response about to be sent.
func (s *Server) recordSent(n *node, t, v string, now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ts := n.typ(t)
	ts.Sent, ts.SentAt = v, now
}

// String names a stream in logs.
func (st *stream) String() string { return fmt.Sprintf("stream %d", st.id) }
