package dataplane

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Sentinel upstream errors, mapped to responses in one place (errorStatus).
var (
	errOverloaded        = errors.New("upstream overloaded")
	errNoHealthyUpstream = errors.New("no healthy upstream")
	errClusterNotFound   = errors.New("cluster not found")
)

// endpointRT is one upstream address with its health state. Endpoint
// states are shared between the cluster objects of consecutive graphs
// while the address and health-check settings stay the same, so a swap
// neither forgets an ejection nor resets health.
type endpointRT struct {
	addr         string
	edsHealthy   bool // from health_status in the load assignment
	degraded     bool // health_status DEGRADED: used only when no healthy endpoint is available
	healthy      atomic.Bool
	active       atomic.Int64
	ejectedUntil atomic.Int64 // unix nanos; 0 when not ejected
	ejections    atomic.Int32
	cons5xx      atomic.Int32
	consGw       atomic.Int32
	hcOK, hcFail atomic.Int32
}

type lbKind int

const (
	lbRoundRobin lbKind = iota
	lbLeastRequest
	lbRandom
)

type outlierCfg struct {
	consecutive5xx, consecutiveGw int32
	enforce5xx, enforceGw         uint64 // percent
	base, max                     time.Duration
	maxPercent                    int
}

type hcCfg struct {
	interval, timeout  time.Duration
	healthy, unhealthy int32
	path, host         string
	expected           [][2]int64 // [start, end)
}

// clusterRT is the runtime of one cluster: endpoints, load balancing,
// circuit breakers, outlier detection, active health checks and the
// upstream transport.
type clusterRT struct {
	name string
	cfg  *cluster.Cluster
	cla  *endpoint.ClusterLoadAssignment

	eps         []*endpointRT
	hasDegraded bool
	lb          lbKind
	rr          atomic.Uint64
	opts        *Options
	stats       *metrics

	transport    http.RoundTripper
	base         *upstreamTransport
	transportKey string
	conns        atomic.Int64
	maxConns     int64

	// Circuit breakers.
	maxReq        int64
	connSlots     chan struct{} // max_connections slots (HTTP/1.1: one request per connection); nil for h2c
	pending       atomic.Int64  // requests waiting for a connection slot
	maxPending    int64
	activeRq      atomic.Int64
	activeRetries atomic.Int64
	maxRetries    int64 // used when there is no retry budget
	budgetPct     float64
	minRetryConc  int64
	hasBudget     bool
	overflowing   atomic.Bool // max_requests
	pendingFull   atomic.Bool // max_pending_requests

	outlier *outlierCfg
	ejectMu sync.Mutex

	// panicPct is common_lb_config.healthy_panic_threshold (default 50;
	// 0 disables panic mode); panicCtr counts the picks made in panic.
	panicPct float64
	panicCtr prometheus.Counter
	// availGen counts changes of endpoint availability (health check
	// transitions, ejections and their end); panicCache holds inPanic's
	// last answer, valid for that generation until its deadline.
	availGen   atomic.Uint64
	panicCache atomic.Pointer[panicState]

	// cacheTTL (cluster metadata petmesh.cache_ttl) enables the GET
	// response cache; 0 disables it.
	cacheTTL time.Duration
	cache    *respCache

	hc      *hcCfg
	hcStop  context.CancelFunc
	hcDone  chan struct{}
	started bool
}

func durOr(d interface{ AsDuration() time.Duration }, isNil bool, def time.Duration) time.Duration {
	if isNil {
		return def
	}
	return d.AsDuration()
}

// buildCluster compiles c with its load assignment. prev is the cluster of
// the same name in the active graph (nil if none).
func buildCluster(c *cluster.Cluster, cla *endpoint.ClusterLoadAssignment, prev *clusterRT, opts *Options, m *metrics) (*clusterRT, error) {
	if prev != nil && proto.Equal(prev.cfg, c) && proto.Equal(prev.cla, cla) {
		return prev, nil
	}
	cl := &clusterRT{name: c.GetName(), cfg: c, cla: cla, opts: opts, stats: m}
	switch c.GetLbPolicy() {
	case cluster.Cluster_ROUND_ROBIN:
		cl.lb = lbRoundRobin
	case cluster.Cluster_LEAST_REQUEST:
		cl.lb = lbLeastRequest
	case cluster.Cluster_RANDOM:
		cl.lb = lbRandom
	default:
		return nil, fmt.Errorf("lb_policy: unsupported value %s", c.GetLbPolicy())
	}
	switch c.GetType() {
	case cluster.Cluster_STATIC, cluster.Cluster_EDS, cluster.Cluster_STRICT_DNS, cluster.Cluster_LOGICAL_DNS:
	default:
		return nil, fmt.Errorf("type: unsupported value %s", c.GetType())
	}
	if err := cl.parseMeta(c); err != nil {
		return nil, err
	}
	cl.panicPct = 50
	if p := c.GetCommonLbConfig().GetHealthyPanicThreshold(); p != nil {
		if v := p.GetValue(); v < 0 || v > 100 || v != v {
			return nil, errors.New("common_lb_config.healthy_panic_threshold.value: must be within [0, 100]")
		}
		cl.panicPct = p.GetValue()
	}
	cl.panicCtr = m.lbPanic.WithLabelValues(cl.name)
	connectTimeout := 5 * time.Second
	if c.GetConnectTimeout() != nil {
		connectTimeout = c.GetConnectTimeout().AsDuration()
		if connectTimeout <= 0 {
			return nil, errors.New("connect_timeout: must be positive")
		}
	}

	// Circuit breakers (Envoy defaults: 1024 connections, pending and
	// requests; retry budget 20% with a minimum of 3 concurrent retries).
	maxConns, maxPending, maxReq := int64(1024), int64(1024), int64(1024)
	cl.maxRetries, cl.budgetPct, cl.minRetryConc, cl.hasBudget = 3, 20, 3, true
	for i, t := range c.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != core.RoutingPriority_DEFAULT {
			return nil, fmt.Errorf("circuit_breakers.thresholds[%d].priority: only DEFAULT is supported", i)
		}
		if v := t.GetMaxConnections(); v != nil {
			maxConns = int64(v.GetValue())
		}
		if v := t.GetMaxPendingRequests(); v != nil {
			maxPending = int64(v.GetValue())
		}
		if v := t.GetMaxRequests(); v != nil {
			maxReq = int64(v.GetValue())
		}
		if v := t.GetMaxRetries(); v != nil {
			cl.maxRetries, cl.hasBudget = int64(v.GetValue()), false
		}
		if rb := t.GetRetryBudget(); rb != nil {
			cl.hasBudget = true
			if p := rb.GetBudgetPercent(); p != nil {
				if p.GetValue() < 0 || p.GetValue() > 100 {
					return nil, fmt.Errorf("circuit_breakers.thresholds[%d].retry_budget.budget_percent: must be within [0, 100]", i)
				}
				cl.budgetPct = p.GetValue()
			}
			if v := rb.GetMinRetryConcurrency(); v != nil {
				cl.minRetryConc = int64(v.GetValue())
			}
		}
	}
	if maxReq < 1 {
		return nil, errors.New("circuit_breakers.thresholds.max_requests: must be at least 1")
	}
	if maxReq > 1<<20 {
		maxReq = 1 << 20
	}
	if maxConns < 1 {
		return nil, errors.New("circuit_breakers.thresholds.max_connections: must be at least 1")
	}
	cl.maxReq, cl.maxPending, cl.maxConns = maxReq, maxPending, min(maxConns, 1<<20)

	// Upstream protocol.
	h2c := false
	for k, v := range c.GetTypedExtensionProtocolOptions() {
		if k != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
			return nil, fmt.Errorf("typed_extension_protocol_options[%q]: unsupported extension", k)
		}
		var po upstreamhttp.HttpProtocolOptions
		if err := v.UnmarshalTo(&po); err != nil {
			return nil, fmt.Errorf("typed_extension_protocol_options[%q]: %w", k, err)
		}
		if err := checkFields(po.ProtoReflect(), fmt.Sprintf("typed_extension_protocol_options[%q]", k)); err != nil {
			return nil, err
		}
		h2c = po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
	}
	if !h2c {
		cl.connSlots = make(chan struct{}, cl.maxConns)
	}

	// Outlier detection.
	if od := c.GetOutlierDetection(); od != nil {
		o := &outlierCfg{consecutive5xx: 5, consecutiveGw: 5, enforce5xx: 100, enforceGw: 0, base: 30 * time.Second, max: 300 * time.Second, maxPercent: 10}
		if v := od.GetConsecutive_5Xx(); v != nil {
			o.consecutive5xx = int32(min(v.GetValue(), 1<<30))
		}
		if v := od.GetConsecutiveGatewayFailure(); v != nil {
			o.consecutiveGw = int32(min(v.GetValue(), 1<<30))
		}
		if v := od.GetEnforcingConsecutive_5Xx(); v != nil {
			o.enforce5xx = uint64(min(v.GetValue(), 100))
		}
		if v := od.GetEnforcingConsecutiveGatewayFailure(); v != nil {
			o.enforceGw = uint64(min(v.GetValue(), 100))
		}
		if d := od.GetBaseEjectionTime(); d != nil {
			o.base = d.AsDuration()
		}
		if d := od.GetMaxEjectionTime(); d != nil {
			o.max = d.AsDuration()
		}
		if v := od.GetMaxEjectionPercent(); v != nil {
			o.maxPercent = int(min(v.GetValue(), 100))
		}
		if o.base <= 0 || o.max < o.base {
			return nil, errors.New("outlier_detection: base_ejection_time must be positive and not above max_ejection_time")
		}
		cl.outlier = o
	}

	// Active health checks.
	switch hcs := c.GetHealthChecks(); {
	case len(hcs) > 1:
		return nil, errors.New("health_checks: at most one health check is supported")
	case len(hcs) == 1:
		h := hcs[0]
		if h.GetHttpHealthCheck() == nil {
			return nil, errors.New("health_checks[0]: only http_health_check is supported")
		}
		hc := &hcCfg{
			interval: durOr(h.GetInterval(), h.GetInterval() == nil, 10*time.Second),
			timeout:  durOr(h.GetTimeout(), h.GetTimeout() == nil, time.Second),
			healthy:  1, unhealthy: 2,
			path: h.GetHttpHealthCheck().GetPath(), host: h.GetHttpHealthCheck().GetHost(),
		}
		if hc.host == "" {
			hc.host = c.GetName()
		}
		if v := h.GetHealthyThreshold(); v != nil && v.GetValue() > 0 {
			hc.healthy = int32(min(v.GetValue(), 1000))
		}
		if v := h.GetUnhealthyThreshold(); v != nil && v.GetValue() > 0 {
			hc.unhealthy = int32(min(v.GetValue(), 1000))
		}
		if hc.interval <= 0 || hc.timeout <= 0 {
			return nil, errors.New("health_checks[0]: interval and timeout must be positive")
		}
		if hc.path == "" || hc.path[0] != '/' {
			return nil, errors.New("health_checks[0].http_health_check.path: must start with /")
		}
		for i, r := range h.GetHttpHealthCheck().GetExpectedStatuses() {
			if r.GetStart() < 100 || r.GetEnd() > 600 || r.GetEnd() <= r.GetStart() {
				return nil, fmt.Errorf("health_checks[0].http_health_check.expected_statuses[%d]: want 100 <= start < end <= 600", i)
			}
			hc.expected = append(hc.expected, [2]int64{r.GetStart(), r.GetEnd()})
		}
		if len(hc.expected) == 0 {
			hc.expected = [][2]int64{{200, 201}}
		}
		cl.hc = hc
	}

	// Endpoints: inline load_assignment for STATIC and DNS clusters, the
	// EDS assignment otherwise.
	prevEps := map[string]*endpointRT{}
	if prev != nil {
		for _, ep := range prev.eps {
			prevEps[ep.addr] = ep
		}
	}
	for li, lle := range cla.GetEndpoints() {
		for ei, le := range lle.GetLbEndpoints() {
			sa := le.GetEndpoint().GetAddress().GetSocketAddress()
			path := fmt.Sprintf("endpoints[%d].lb_endpoints[%d].endpoint.address", li, ei)
			if sa == nil {
				return nil, fmt.Errorf("%s: socket_address required", path)
			}
			if sa.GetProtocol() != core.SocketAddress_TCP {
				return nil, fmt.Errorf("%s.socket_address.protocol: only TCP is supported", path)
			}
			port := sa.GetPortValue()
			if port == 0 || port > 65535 || sa.GetAddress() == "" {
				return nil, fmt.Errorf("%s.socket_address: address and port_value (1-65535) required", path)
			}
			addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(port)))
			edsOK, degraded := true, false
			switch le.GetHealthStatus() {
			case core.HealthStatus_UNKNOWN, core.HealthStatus_HEALTHY:
			case core.HealthStatus_DEGRADED:
				degraded = true
			default:
				edsOK = false
			}
			ep := prevEps[addr]
			if ep == nil || ep.edsHealthy != edsOK || ep.degraded != degraded {
				ep = &endpointRT{addr: addr, edsHealthy: edsOK, degraded: degraded}
				if old := prevEps[addr]; old != nil {
					ep.healthy.Store(old.healthy.Load())
					ep.ejectedUntil.Store(old.ejectedUntil.Load())
					ep.ejections.Store(old.ejections.Load())
				} else {
					ep.healthy.Store(true)
				}
			}
			cl.eps = append(cl.eps, ep)
			cl.hasDegraded = cl.hasDegraded || degraded
		}
	}

	if cl.cacheTTL > 0 {
		if prev != nil && prev.cache != nil && prev.cacheTTL == cl.cacheTTL {
			cl.cache = prev.cache // keep the cached responses across endpoint changes
		} else {
			cl.cache = newRespCache(cl.cacheTTL, opts.Now)
		}
	}

	// Transport: reuse the previous one while its settings are unchanged,
	// so that a change of endpoints keeps the warm connections.
	cl.transportKey = fmt.Sprintf("%v/%v/%d", connectTimeout, h2c, maxConns)
	if prev != nil && prev.transportKey == cl.transportKey {
		cl.base, cl.transport = prev.base, prev.transport
		cl.conns.Store(0)
	} else {
		cl.base = newTransport(cl, connectTimeout, h2c)
		cl.transport = cl.base
	}
	return cl, nil
}

// newTransport returns the tuned upstream transport: bodyless idempotent
// HTTP/1.1 requests go through the synchronous h1Pool (see h1.go), the
// rest through an http.Transport with many idle connections per host (the
// default of 2 halves a proxy's throughput), keep-alives and no
// compression. Both dial through one dialer that applies the connect
// timeout and counts connections against max_connections. The connection
// buffers keep Go's 4 KiB default: bodies bypass them (the proxy copies
// through its own pooled 32 KiB buffer and bufio passes reads and writes
// that large straight through), while every idle keep-alive connection
// holds them, so larger buffers only cost memory (64 KiB per connection at
// 32 KiB each).
func newTransport(cl *clusterRT, connectTimeout time.Duration, h2c bool) *upstreamTransport {
	d := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	conns := &cl.conns
	maxConns := cl.maxConns
	u := &upstreamTransport{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if conns.Add(1) > maxConns {
			conns.Add(-1)
			// Idle connections to other endpoints count against
			// max_connections too: drop them, then try once more.
			u.CloseIdleConnections()
			if conns.Add(1) > maxConns {
				conns.Add(-1)
				return nil, errOverloaded
			}
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			conns.Add(-1)
			return nil, err
		}
		return &countedConn{Conn: c, n: conns}, nil
	}
	u.std = &http.Transport{
		DialContext:           dial,
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
	}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		u.std.Protocols = &p
	} else {
		u.h1 = newH1Pool(dial)
	}
	return u
}

type countedConn struct {
	net.Conn
	n    *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.n.Add(-1) })
	return c.Conn.Close()
}

// available reports whether ep may receive traffic at now (unix nanos):
// EDS health, active health checks and outlier ejection.
func (c *clusterRT) available(ep *endpointRT, now int64) bool {
	if !ep.edsHealthy || !ep.healthy.Load() {
		return false
	}
	until := ep.ejectedUntil.Load()
	if until == 0 {
		return true
	}
	if now < until {
		return false
	}
	// The ejection is over: bring the host back with fresh counters.
	if ep.ejectedUntil.CompareAndSwap(until, 0) {
		c.availGen.Add(1)
		ep.cons5xx.Store(0)
		ep.consGw.Store(0)
	}
	return true
}

// pickMode selects the endpoints a pick considers.
type pickMode int

const (
	pickHealthy  pickMode = iota // available, not DEGRADED
	pickDegraded                 // available DEGRADED endpoints
	pickAll                      // panic mode: every endpoint of the cluster
)

// eligible reports whether ep may be picked in mode and is not in avoid
// (the hosts a retry with the previous_hosts predicate already tried).
func (c *clusterRT) eligible(ep *endpointRT, mode pickMode, avoid []*endpointRT, now int64) bool {
	for _, a := range avoid {
		if a == ep {
			return false
		}
	}
	switch mode {
	case pickAll:
		return true
	case pickDegraded:
		return ep.degraded && c.available(ep, now)
	default:
		return !ep.degraded && c.available(ep, now)
	}
}

// pick chooses an endpoint, or nil when none is available. As in Envoy,
// DEGRADED endpoints take traffic only when no healthy one is available,
// and while the available (healthy or degraded) share of the endpoints is
// below healthy_panic_threshold the cluster is in panic mode: every
// endpoint is balanced over, whatever its health. avoid lists the hosts
// already tried by this request (retry_host_predicate previous_hosts):
// they are skipped when another eligible host exists.
func (c *clusterRT) pick(avoid []*endpointRT) *endpointRT {
	now := c.opts.Now().UnixNano()
	if c.panicPct > 0 && c.inPanic(now) {
		c.panicCtr.Inc()
		if ep := c.pickAmong(pickAll, avoid, now); ep != nil || len(avoid) == 0 {
			return ep
		}
		return c.pickAmong(pickAll, nil, now)
	}
	ep := c.pickAvailable(avoid, now)
	if ep == nil && len(avoid) > 0 {
		ep = c.pickAvailable(nil, now)
	}
	return ep
}

func (c *clusterRT) pickAvailable(avoid []*endpointRT, now int64) *endpointRT {
	ep := c.pickAmong(pickHealthy, avoid, now)
	if ep == nil && c.hasDegraded {
		ep = c.pickAmong(pickDegraded, avoid, now)
	}
	return ep
}

// panicState is a cached inPanic answer.
type panicState struct {
	gen   uint64 // availGen it was computed at
	until int64  // unix nanos: recompute from then on
	panic bool
}

// panicRecheck bounds how long an inPanic answer is reused without an
// availability change.
const panicRecheck = int64(time.Second)

// inPanic reports whether fewer than healthy_panic_threshold percent of
// the endpoints are available (healthy or degraded), as Envoy's
// isHostSetInPanic. Like Envoy, which decides it when the host set
// changes rather than per request, it counts only after an availability
// change (availGen) or once the answer is older than panicRecheck or an
// ejection it saw has ended: a pick no longer walks the endpoints (5.5 µs
// at 10,000 endpoints before).
func (c *clusterRT) inPanic(now int64) bool {
	gen := c.availGen.Load()
	if st := c.panicCache.Load(); st != nil && st.gen == gen && now < st.until {
		return st.panic
	}
	p, until := c.countPanic(now)
	c.panicCache.Store(&panicState{gen: gen, until: until, panic: p})
	return p
}

// countPanic is inPanic's count. Out of panic it stops as soon as the
// threshold is met (the end of an ejection can only make more endpoints
// available); in panic it has seen every endpoint, and the answer holds
// until the first ejection among them ends.
func (c *clusterRT) countPanic(now int64) (panic bool, until int64) {
	until = now + panicRecheck
	n := len(c.eps)
	if n == 0 {
		return false, until // nothing to balance over either way: 503
	}
	need := c.panicPct * float64(n) / 100 // available endpoints needed to stay out of panic
	avail := 0
	for _, ep := range c.eps {
		if c.available(ep, now) {
			avail++
			if float64(avail) >= need {
				return false, until
			}
		} else if e := ep.ejectedUntil.Load(); e > now && e < until {
			until = e
		}
	}
	return float64(avail) < need, until
}

// pickAmong picks an endpoint eligible in mode by the load-balancing policy.
func (c *clusterRT) pickAmong(mode pickMode, avoid []*endpointRT, now int64) *endpointRT {
	n := uint64(len(c.eps))
	if n == 0 {
		return nil
	}
	switch c.lb {
	case lbLeastRequest:
		// Power of two choices among eligible endpoints.
		a := c.eps[c.opts.Rand(n)]
		b := c.eps[c.opts.Rand(n)]
		aok, bok := c.eligible(a, mode, avoid, now), c.eligible(b, mode, avoid, now)
		switch {
		case aok && bok:
			if b.active.Load() < a.active.Load() {
				return b
			}
			return a
		case aok:
			return a
		case bok:
			return b
		}
		return c.scan(c.opts.Rand(n), mode, avoid, now)
	case lbRandom:
		return c.scan(c.opts.Rand(n), mode, avoid, now)
	default:
		return c.scan(c.rr.Add(1), mode, avoid, now)
	}
}

func (c *clusterRT) scan(start uint64, mode pickMode, avoid []*endpointRT, now int64) *endpointRT {
	n := uint64(len(c.eps))
	for i := uint64(0); i < n; i++ {
		if ep := c.eps[(start+i)%n]; c.eligible(ep, mode, avoid, now) {
			return ep
		}
	}
	return nil
}

// admit applies the circuit breakers as Envoy does: a request beyond
// max_requests active ones overflows at once; over HTTP/1.1 (one request
// per connection) a request also needs one of max_connections connection
// slots, and waits for one (a pending request) while fewer than
// max_pending_requests wait already, else overflows. Overflow is
// errOverloaded (503 with x-petmesh-overloaded). release must be called
// after a nil error.
func (c *clusterRT) admit(ctx context.Context) error {
	if c.activeRq.Add(1) > c.maxReq {
		c.activeRq.Add(-1)
		c.setOverflow(&c.overflowing, "requests", true)
		return errOverloaded
	}
	if c.overflowing.Load() {
		c.setOverflow(&c.overflowing, "requests", false)
	}
	if c.connSlots == nil {
		return nil
	}
	select {
	case c.connSlots <- struct{}{}:
		return nil
	default:
	}
	if c.pending.Add(1) > c.maxPending {
		c.pending.Add(-1)
		c.activeRq.Add(-1)
		c.setOverflow(&c.pendingFull, "pending", true)
		return errOverloaded
	}
	defer c.pending.Add(-1)
	select {
	case c.connSlots <- struct{}{}:
		if c.pendingFull.Load() {
			c.setOverflow(&c.pendingFull, "pending", false)
		}
		return nil
	case <-ctx.Done():
		c.activeRq.Add(-1)
		return ctx.Err()
	}
}

func (c *clusterRT) release() {
	if c.connSlots != nil {
		<-c.connSlots
	}
	c.activeRq.Add(-1)
}

func (c *clusterRT) setOverflow(flag *atomic.Bool, resource string, on bool) {
	if flag.Swap(on) != on {
		v := 0.0
		if on {
			v = 1
		}
		c.stats.circuitOpen.WithLabelValues(c.name, resource).Set(v)
	}
}

// retryAllowed applies the retry budget (or max_retries without one) and
// takes a retry slot; the caller calls retryDone afterwards.
func (c *clusterRT) retryAllowed() bool {
	limit := c.maxRetries
	if c.hasBudget {
		limit = max(c.minRetryConc, int64(c.budgetPct*float64(c.activeRq.Load())/100))
	}
	if c.activeRetries.Add(1) > limit {
		c.activeRetries.Add(-1)
		c.stats.retryOverflow.WithLabelValues(c.name).Inc()
		return false
	}
	return true
}

func (c *clusterRT) retryDone() { c.activeRetries.Add(-1) }

// outcome classes reported to outlier detection.
type outcome int

const (
	outcomeOK outcome = iota
	outcome5xx
	outcomeGateway // 502/503/504, connect failures, resets, timeouts
	outcomeNone    // not the endpoint's doing (the client's body failed)
)

func (c *clusterRT) report(ep *endpointRT, o outcome) {
	od := c.outlier
	if od == nil || o == outcomeNone {
		return
	}
	switch o {
	case outcomeOK:
		if ep.cons5xx.Load() != 0 {
			ep.cons5xx.Store(0)
		}
		if ep.consGw.Load() != 0 {
			ep.consGw.Store(0)
		}
		return
	case outcomeGateway:
		if ep.consGw.Add(1) >= od.consecutiveGw && c.enforced(od.enforceGw) {
			c.eject(ep)
			return
		}
	}
	if ep.cons5xx.Add(1) >= od.consecutive5xx && c.enforced(od.enforce5xx) {
		c.eject(ep)
	}
}

func (c *clusterRT) enforced(pct uint64) bool {
	return pct >= 100 || (pct > 0 && c.opts.Rand(100) < pct)
}

// eject removes ep from load balancing for base_ejection_time doubled on
// each consecutive ejection (capped by max_ejection_time), unless that
// would eject more than max_ejection_percent of the hosts (one host may
// always be ejected, as in Envoy) or leave no host that is not ejected.
func (c *clusterRT) eject(ep *endpointRT) {
	c.ejectMu.Lock()
	defer c.ejectMu.Unlock()
	now := c.opts.Now().UnixNano()
	if ep.ejectedUntil.Load() > now {
		return
	}
	ejected := 0
	for _, e := range c.eps {
		if e.ejectedUntil.Load() > now {
			ejected++
		}
	}
	if ejected > 0 && (ejected+1)*100 > c.outlier.maxPercent*len(c.eps) {
		return
	}
	if ejected+1 >= len(c.eps) {
		return // never the last host that is not ejected (as Envoy: one always stays eligible)
	}
	n := ep.ejections.Add(1)
	d := c.outlier.base << min(n-1, 20)
	if d > c.outlier.max || d <= 0 {
		d = c.outlier.max
	}
	ep.ejectedUntil.Store(now + int64(d))
	c.availGen.Add(1)
	ep.cons5xx.Store(0)
	ep.consGw.Store(0)
	c.stats.ejections.WithLabelValues(c.name).Inc()
	c.opts.Logger.Warn("outlier ejected", "cluster", c.name, "endpoint", ep.addr, "for", d.String())
}

// start launches the health checker; stop cancels and waits for it.
func (c *clusterRT) start() {
	if c.started {
		return
	}
	c.started = true
	// A newly built cluster has served nothing yet: its circuit is closed.
	// Publishing that here (before the graph is swapped in) resets a gauge
	// the cluster it replaces may have left at 1, and makes the series exist
	// from the start.
	for _, resource := range []string{"requests", "pending"} {
		c.stats.circuitOpen.WithLabelValues(c.name, resource).Set(0)
	}
	if c.hc == nil || len(c.eps) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.hcStop, c.hcDone = cancel, make(chan struct{})
	go func() {
		defer close(c.hcDone)
		c.healthLoop(ctx)
	}()
}

func (c *clusterRT) stop() {
	if c.hcStop != nil {
		c.hcStop()
		<-c.hcDone
		c.hcStop = nil
	}
}

func (c *clusterRT) healthLoop(ctx context.Context) {
	defer func() {
		if v := recover(); v != nil {
			c.opts.Logger.Error("health checker panicked", "cluster", c.name, "panic", fmt.Sprint(v))
		}
	}()
	t := time.NewTicker(c.hc.interval)
	defer t.Stop()
	for {
		var wg sync.WaitGroup
		for _, ep := range c.eps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.check(ctx, ep)
			}()
		}
		wg.Wait()
		n := 0
		for _, ep := range c.eps {
			if ep.healthy.Load() {
				n++
			}
		}
		c.stats.healthy.WithLabelValues(c.name).Set(float64(n))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *clusterRT) check(ctx context.Context, ep *endpointRT) {
	ctx, cancel := context.WithTimeout(ctx, c.hc.timeout)
	defer cancel()
	ok := false
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ep.addr+c.hc.path, nil)
	if err == nil {
		req.Host = c.hc.host // as Envoy: the cluster name unless http_health_check.host is set
		req.Header.Set("User-Agent", "petmesh-health-check")
		// The sampled flag off: a parent-based sampler upstream follows it,
		// so probes never become traces (nor exemplars hiding real ones).
		req.Header.Set("Traceparent", unsampledTraceparent())
		resp, err := c.opts.HealthCheckClient.Do(req)
		if err == nil {
			resp.Body.Close()
			for _, r := range c.hc.expected {
				if int64(resp.StatusCode) >= r[0] && int64(resp.StatusCode) < r[1] {
					ok = true
				}
			}
		}
	}
	if ctx.Err() != nil && !ok && errors.Is(context.Cause(ctx), context.Canceled) {
		return // shutting down, not a failure
	}
	if ok {
		ep.hcFail.Store(0)
		if ep.hcOK.Add(1) >= c.hc.healthy && !ep.healthy.Load() {
			ep.healthy.Store(true)
			c.availGen.Add(1)
			c.opts.Logger.Info("endpoint healthy", "cluster", c.name, "endpoint", ep.addr)
		}
		return
	}
	ep.hcOK.Store(0)
	if ep.hcFail.Add(1) >= c.hc.unhealthy && ep.healthy.Load() {
		ep.healthy.Store(false)
		c.availGen.Add(1)
		c.opts.Logger.Warn("endpoint unhealthy", "cluster", c.name, "endpoint", ep.addr)
	}
}

// unsampledTraceparent is a fresh W3C trace context with the sampled
// flag off (as the sidecar's own health probes send).
func unsampledTraceparent() string {
	return fmt.Sprintf("00-%016x%016x-%016x-00", rand.Uint64()|1, rand.Uint64(), rand.Uint64()|1)
}

// parseMeta reads the cluster's petmesh metadata: service and version
// (informational) and cache_ttl. Other keys under petmesh are rejected;
// other namespaces are ignored, as Envoy ignores metadata no filter reads.
func (c *clusterRT) parseMeta(cfg *cluster.Cluster) error {
	s := cfg.GetMetadata().GetFilterMetadata()[MetadataNamespace]
	path := fmt.Sprintf("metadata.filter_metadata[%q]", MetadataNamespace)
	for k, v := range s.GetFields() {
		sv, ok := v.GetKind().(*structpb.Value_StringValue)
		switch k {
		case resource.ClusterMetaService, resource.ClusterMetaVersion:
			if !ok {
				return fmt.Errorf("%s.%s: want a string", path, k)
			}
		case resource.ClusterMetaCacheTTL:
			var d time.Duration
			var err error
			if ok {
				d, err = time.ParseDuration(sv.StringValue)
			}
			if !ok || err != nil || d <= 0 {
				return fmt.Errorf("%s.%s: want a positive duration such as \"30s\"", path, k)
			}
			c.cacheTTL = d
		default:
			return fmt.Errorf("%s.%s: unsupported key", path, k)
		}
	}
	return nil
}
