package xds_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/controlplane/xds/xdstest"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Environment of the benchmark's client helper process (the test binary
// re-executed by BenchmarkConvergence's clients=process variant).
const (
	envBenchClients = "PETMESH_XDS_BENCH_CLIENTS" // xDS server address: run as the client helper
	envBenchN       = "PETMESH_XDS_BENCH_N"       // number of simulated proxies
	envBenchProfile = "PETMESH_XDS_BENCH_CPUPROFILE"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(envBenchClients); addr != "" {
		if err := benchClientsMain(addr, os.Getenv(envBenchN), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench clients:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// simProxy is a minimal ADS client: it subscribes like a proxy (LDS and
// CDS wildcard, then RDS and EDS by the names those reference), ACKs every
// response at once and records when each type's version changed. It
// decodes only listeners and clusters (for the RDS and EDS names), and
// keeps no decoded configuration, so that it costs little CPU and the
// heap measured is mostly the control plane's.
type simProxy struct {
	mu       sync.Mutex
	versions map[string]string
	changed  map[string]time.Time // type → when the version last changed
}

func newSimProxy() *simProxy {
	return &simProxy{versions: map[string]string{}, changed: map[string]time.Time{}}
}

func (p *simProxy) run(ctx context.Context, conn *grpc.ClientConn, node *core.Node, ready chan<- struct{}) error {
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	send := func(t, version, nonce string, names []string) error {
		return st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: t, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names})
	}
	if err := send(resource.ClusterType, "", "", nil); err != nil {
		return err
	}
	if err := send(resource.ListenerType, "", "", nil); err != nil {
		return err
	}
	node = nil // only the first request carries the node
	names := map[string][]string{}
	once := false
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		now := time.Now()
		t := resp.GetTypeUrl()
		var sub string
		var want []string
		switch t {
		case resource.ClusterType:
			snap := &client.Snapshot{Clusters: map[string]*clusterv3.Cluster{}}
			for _, a := range resp.GetResources() {
				c := &clusterv3.Cluster{}
				if err := a.UnmarshalTo(c); err != nil {
					return err
				}
				snap.Clusters[c.GetName()] = c
			}
			sub, want = resource.EndpointType, client.EndpointNames(snap)
		case resource.ListenerType:
			snap := &client.Snapshot{Listeners: map[string]*listenerv3.Listener{}}
			for _, a := range resp.GetResources() {
				l := &listenerv3.Listener{}
				if err := a.UnmarshalTo(l); err != nil {
					return err
				}
				snap.Listeners[l.GetName()] = l
			}
			sub, want = resource.RouteType, client.RouteNames(snap)
		}
		p.mu.Lock()
		if p.versions[t] != resp.GetVersionInfo() {
			p.versions[t] = resp.GetVersionInfo()
			p.changed[t] = now
		}
		complete := len(p.versions) == 4
		p.mu.Unlock()
		if err := send(t, resp.GetVersionInfo(), resp.GetNonce(), names[t]); err != nil {
			return err
		}
		if sub != "" && !slices.Equal(want, names[sub]) {
			names[sub] = want
			p.mu.Lock()
			v := p.versions[sub]
			p.mu.Unlock()
			if err := send(sub, v, "", want); err != nil {
				return err
			}
		}
		if complete && !once {
			once = true
			close(ready)
		}
	}
}

func (p *simProxy) changedSince(t string, since time.Time) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.changed[t]
	if !ok || at.Before(since) {
		return 0, false
	}
	return at.Sub(since), true
}

func benchNode(i int) *core.Node {
	if i%10 == 0 {
		return &core.Node{Id: resource.EdgeNodeID(fmt.Sprintf("edge-%d", i)), Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()}
	}
	svc := []string{"pets", "stats", "sync"}[i%3]
	return &core.Node{Id: resource.SidecarNodeID(svc, fmt.Sprintf("%s-%d", svc, i)), Metadata: resource.NodeMeta{
		Service: svc, Version: "v1", InboundPort: 15001, OutboundPort: 15002, AppPort: 9001,
	}.Struct()}
}

// simFleet runs n simulated proxies against addr, 10 streams per gRPC
// connection (real proxies each have their own connection; sharing keeps
// HTTP/2 framing realistic without loading the measurement with a
// thousand client transports). It returns once every proxy holds all
// four types; stop cancels and waits for them.
func simFleet(ctx context.Context, addr string, n int) (proxies []*simProxy, stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var conns []*grpc.ClientConn
	stop = func() {
		cancel()
		wg.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	}
	for i := 0; i < (n+9)/10; i++ {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			stop()
			return nil, nil, err
		}
		conns = append(conns, c)
	}
	proxies = make([]*simProxy, n)
	for i := range proxies {
		p := newSimProxy()
		proxies[i] = p
		ready := make(chan struct{})
		node, conn := benchNode(i), conns[i%len(conns)]
		wg.Go(func() { _ = p.run(ctx, conn, node, ready) })
		select {
		case <-ready:
		case <-time.After(60 * time.Second):
			stop()
			return nil, nil, fmt.Errorf("proxy %d not configured", i)
		}
	}
	return proxies, stop, nil
}

// benchClientsMain is the client helper process: n simulated proxies
// against addr; it prints "ready" once all are configured and runs until
// its stdin closes.
func benchClientsMain(addr, count string, in io.Reader, out io.Writer) error {
	n, err := strconv.Atoi(count)
	if err != nil || n <= 0 {
		return fmt.Errorf("%s=%q: want a positive number", envBenchN, count)
	}
	_, stop, err := simFleet(context.Background(), addr, n)
	if err != nil {
		return err
	}
	defer stop()
	if _, err := fmt.Fprintln(out, "ready"); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, in)
	return nil
}

// clientProcess runs the simulated proxies in a child process (this test
// binary in helper mode) and returns once they are configured.
func clientProcess(b *testing.B, addr string, n int) *exec.Cmd {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envBenchClients+"="+addr, envBenchN+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close() // the helper stops when its stdin closes
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case s := <-line:
		if strings.TrimSpace(s) != "ready" {
			b.Fatalf("client process: %q", s)
		}
	case <-time.After(120 * time.Second):
		b.Fatal("client process not ready")
	}
	return cmd
}

// cpuTime is the CPU time (user + system) used so far by this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPUTime is the CPU time used so far by process pid, from
// /proc/<pid>/stat (Linux; 0 elsewhere), in clock ticks of 10ms.
func procCPUTime(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// BenchmarkConvergence connects N simulated proxies over loopback gRPC
// and measures, per change (a route's timeout changed with a store Put; an
// instance registered), from the change's acceptance (the Put returned:
// the version is stored durably; store-put-p99 is the store's own write
// time, not included; the registration is in memory) to:
//
//   - sent: the server handing each proxy's response to its stream
//     (OnStreamResponse; "send-max" is the last proxy served);
//   - ack: the server receiving each proxy's ACK of the new version, the
//     convergence of the target;
//   - recv (in-process clients only): each simulated proxy's receipt.
//
// p50 and p99 are over all proxies and changes. The debounce is the
// default (DefaultQuietPeriod), part of every figure; changes are
// DefaultBusyQuietPeriod apart, so each is an isolated change (a burst is
// debounced longer: see BenchmarkEndpointFlap). The clients run in
// this process (clients=inproc, heap and CPU figures include them) or in
// a child process (clients=process: the test binary re-executed as a
// client helper, so that heap and server-cpu are the control plane's
// own; both processes still share the machine's cores). cpu figures are
// CPU milliseconds per change.
//
//	go test ./controlplane/xds -run '^$' -bench Convergence -benchtime 5x
//
// PETMESH_XDS_BENCH_CPUPROFILE=prefix writes a CPU profile of the
// measured changes (not the set-up) to prefix-<proxies>-<clients>.pprof.
func BenchmarkConvergence(b *testing.B) {
	for _, n := range []int{100, 1000} {
		for _, mode := range []string{"inproc", "process"} {
			b.Run(fmt.Sprintf("proxies=%d/clients=%s", n, mode), func(b *testing.B) { benchConvergence(b, n, mode) })
		}
	}
}

type latencies struct{ sent, ack, recv []time.Duration }

// benchFleet starts a server with opts and n simulated proxies (mode
// inproc or process), waits until all are synced and returns the heap
// growth per proxy in KB.
func benchFleet(b *testing.B, n int, mode string, opts xds.Options) (h *xdstest.ControlPlane, proxies []*simProxy, childPID int, perProxy float64) {
	b.Helper()
	h = xdstest.Start(b, xdstest.Options{Server: opts})
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	switch mode {
	case "inproc":
		ps, stop, err := simFleet(context.Background(), h.Addr(), n)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(stop)
		proxies = ps
	case "process":
		childPID = clientProcess(b, h.Addr(), n).Process.Pid
	default:
		b.Fatalf("mode %q", mode)
	}
	waitSynced(b, h.Server, n)
	runtime.GC()
	runtime.ReadMemStats(&after)
	return h, proxies, childPID, float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n) / 1024
}

func benchConvergence(b *testing.B, n int, mode string) {
	h, proxies, childPID, perProxy := benchFleet(b, n, mode, xds.Options{QuietPeriod: xds.DefaultQuietPeriod, MaxDelay: xds.DefaultMaxDelay})

	if prefix := os.Getenv(envBenchProfile); prefix != "" {
		f, err := os.Create(fmt.Sprintf("%s-%d-%s.pprof", prefix, n, mode))
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	var s changeStats
	cpu0, child0 := cpuTime(), procCPUTime(childPID)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.change(b, h, proxies, i)
	}
	b.StopTimer()
	s.report(b)
	b.ReportMetric(ms(cpuTime()-cpu0)/float64(s.changes), "cpu-ms/change")
	if childPID != 0 {
		b.ReportMetric(ms(procCPUTime(childPID)-child0)/float64(s.changes), "client-cpu-ms/change")
	}
	b.ReportMetric(perProxy, "heap-KB/proxy")
	reportLoad(b)
}

// changeStats collects the convergence of isolated route and endpoint
// changes.
type changeStats struct {
	route, ep latencies
	puts      []time.Duration
	changes   int
}

// change makes the i-th pair of isolated changes (a route's timeout
// through the store, then an instance registered) and waits until every
// proxy has ACKed each.
func (s *changeStats) change(b *testing.B, h *xdstest.ControlPlane, proxies []*simProxy, i int) {
	ctx := context.Background()
	cur, err := h.Store.Current(ctx)
	if err != nil {
		b.Fatal(err)
	}
	t := cur.Table.Clone()
	t.Route("pets").Timeout = routes.Dur(time.Duration(i+1) * time.Second)
	// Changes closer together than the busy quiet period are a burst
	// and wait for it (BenchmarkEndpointFlap); these are isolated.
	time.Sleep(xds.DefaultBusyQuietPeriod)
	prev := latestVersions(h.Server, resource.RouteType)
	put := time.Now()
	if _, err := h.Store.Put(ctx, cur.Number, t, "bench", "timeout"); err != nil {
		b.Fatal(err)
	}
	start := time.Now() // accepted: stored durably
	s.puts = append(s.puts, start.Sub(put))
	s.route.add(b, h.Server, proxies, resource.RouteType, prev, start)

	time.Sleep(xds.DefaultBusyQuietPeriod)
	prev = latestVersions(h.Server, resource.EndpointType)
	start = time.Now()
	if err := h.Registry.Register(ctx, registry.Registration{Service: "pets", ID: fmt.Sprintf("pets-%d", i), Address: "127.0.0.1", Port: 20000 + i, Version: "v1", TTL: time.Hour}); err != nil {
		b.Fatal(err)
	}
	s.ep.add(b, h.Server, proxies, resource.EndpointType, prev, start)
	s.changes += 2
}

func (s *changeStats) report(b *testing.B) {
	b.ReportMetric(ms(pct(s.puts, 0.99)), "store-put-p99-ms")
	b.ReportMetric(ms(pct(s.route.ack, 0.5)), "route-ack-p50-ms")
	b.ReportMetric(ms(pct(s.route.ack, 0.99)), "route-ack-p99-ms")
	b.ReportMetric(ms(pct(s.ep.ack, 0.5)), "endpoint-ack-p50-ms")
	b.ReportMetric(ms(pct(s.ep.ack, 0.99)), "endpoint-ack-p99-ms")
	b.ReportMetric(ms(pct(s.route.sent, 0.99)), "route-sent-p99-ms")
	b.ReportMetric(ms(pct(s.route.sent, 1)), "route-sent-max-ms")
	b.ReportMetric(ms(pct(s.ep.sent, 0.99)), "endpoint-sent-p99-ms")
	b.ReportMetric(ms(pct(s.ep.sent, 1)), "endpoint-sent-max-ms")
	if len(s.route.recv) > 0 {
		b.ReportMetric(ms(pct(s.route.recv, 0.99)), "route-recv-p99-ms")
		b.ReportMetric(ms(pct(s.ep.recv, 0.99)), "endpoint-recv-p99-ms")
	}
}

// BenchmarkScale is the control plane at scale: 100, 1,000 and 2,000
// simulated ADS clients (in a child process, so that every memory and CPU
// figure is the control plane's own: this process holds only the xDS
// server, the registry and the file store), with 30 endpoints (10 per
// service), and 1,000 clients with 10,000 endpoints (3,334 pets, 3,333
// stats, 3,333 sync; the edges' EDS carries all of them). It reports:
//
//   - sync-s, sync-cpu-s: wall and control-plane CPU seconds from the
//     first connection until every proxy has ACKed all four types;
//   - heap-MB (Go heap in use after a GC), rss-MB (VmRSS) and
//     rss-peak-MB (VmHWM) of the control plane with every proxy synced;
//   - route-ack-p50/p99-ms and endpoint-ack-p50/p99-ms: convergence of
//     isolated changes, from acceptance to each proxy's ACK (as
//     BenchmarkConvergence), over every proxy of every change;
//   - cpu-ms/change: control-plane CPU per change.
//
// The loop runs b.Loop, so the fleet is set up once per size:
//
//	go test ./controlplane/xds -run '^$' -bench Scale -benchtime 5x -timeout 60m
//
// (`make bench-controlplane` runs it and writes results/bench/controlplane.md.)
func BenchmarkScale(b *testing.B) {
	for _, c := range []struct{ proxies, endpoints int }{{100, 30}, {1000, 30}, {2000, 30}, {1000, 10000}} {
		b.Run(fmt.Sprintf("proxies=%d/endpoints=%d", c.proxies, c.endpoints), func(b *testing.B) {
			benchScale(b, c.proxies, c.endpoints)
		})
	}
}

func benchScale(b *testing.B, n, endpoints int) {
	h := xdstest.Start(b, xdstest.Options{Server: xds.Options{QuietPeriod: xds.DefaultQuietPeriod, BusyQuietPeriod: xds.DefaultBusyQuietPeriod, MaxDelay: xds.DefaultMaxDelay}})
	ctx := context.Background()
	svcs := []string{"pets", "stats", "sync"}
	for i := range endpoints {
		svc := svcs[i%len(svcs)]
		err := h.Registry.Register(ctx, registry.Registration{
			Service: svc, ID: fmt.Sprintf("%s-pre-%d", svc, i), Address: fmt.Sprintf("127.%d.%d.%d", 1+i>>16&255, i>>8&255, i&255), // never dialled
			Port: 9001, Version: "v1", TTL: time.Hour,
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	cpu0, t0 := cpuTime(), time.Now()
	child := clientProcess(b, h.Addr(), n).Process.Pid
	waitSynced(b, h.Server, n)
	syncWall, syncCPU := time.Since(t0), cpuTime()-cpu0
	runtime.GC()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	rss, peak := selfRSS()

	var s changeStats
	cpu1, child1 := cpuTime(), procCPUTime(child)
	i := 0
	for b.Loop() {
		s.change(b, h, nil, i)
		i++
	}
	s.report(b)
	b.ReportMetric(ms(cpuTime()-cpu1)/float64(s.changes), "cpu-ms/change")
	b.ReportMetric(ms(procCPUTime(child)-child1)/float64(s.changes), "client-cpu-ms/change")
	b.ReportMetric(syncWall.Seconds(), "sync-s")
	b.ReportMetric(syncCPU.Seconds(), "sync-cpu-s")
	b.ReportMetric(float64(mem.HeapAlloc)/(1<<20), "heap-MB")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MB")
	b.ReportMetric(float64(peak)/(1<<20), "rss-peak-MB")
	b.ReportMetric(float64(n), "proxies")
	b.ReportMetric(float64(endpoints), "endpoints")
	reportLoad(b)
}

// selfRSS is this process's VmRSS and VmHWM (peak) in bytes (Linux).
func selfRSS() (rss, peak int64) {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	return rss, peak
}

// reportLoad reports the machine's 1-minute load average (Linux): the
// benchmark shares the machine's cores with whatever else runs.
func reportLoad(b *testing.B) {
	var la float64
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		if _, err := fmt.Sscan(string(raw), &la); err == nil {
			b.ReportMetric(la, "loadavg-1m")
		}
	}
}

// BenchmarkEndpointFlap flaps one instance (register, deregister) every
// 50ms for 3s with 1,000 connected proxies (clients in a separate
// process) under three debounce settings: the default (20ms quiet, 100ms
// while busy), a plain 20ms quiet period and a plain 100ms one (the
// previous default). It reports rebuilds and snapshots published per
// proxy (a flap and its undoing may cancel out between two rebuilds), and
// the CPU used by the control plane and by the clients.
//
//	go test ./controlplane/xds -run '^$' -bench EndpointFlap -benchtime 1x
func BenchmarkEndpointFlap(b *testing.B) {
	ms := time.Millisecond
	for _, c := range []struct {
		name        string
		quiet, busy time.Duration
	}{
		{"default", xds.DefaultQuietPeriod, xds.DefaultBusyQuietPeriod},
		{"plain-20ms", 20 * ms, 20 * ms},
		{"plain-100ms", 100 * ms, 100 * ms},
	} {
		b.Run("debounce="+c.name, func(b *testing.B) {
			opts := xds.Options{QuietPeriod: c.quiet, BusyQuietPeriod: c.busy, MaxDelay: xds.DefaultMaxDelay}
			benchFlap(b, 1000, 50*ms, 3*time.Second, opts)
		})
	}
}

func benchFlap(b *testing.B, n int, gap, span time.Duration, opts xds.Options) {
	h, _, childPID, _ := benchFleet(b, n, "process", opts)
	ctx := context.Background()
	var rebuilds, published int64
	var cpu, child time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r0, p0 := counter(b, h, "petmesh_controlplane_rebuilds_total"), counter(b, h, "petmesh_controlplane_snapshots_published_total")
		c0, k0 := cpuTime(), procCPUTime(childPID)
		id := fmt.Sprintf("flap-%d", i)
		up := false
		tick := time.NewTicker(gap)
		end := time.Now().Add(span)
		for time.Now().Before(end) {
			var err error
			if up {
				err = h.Registry.Deregister(ctx, id)
			} else {
				err = h.Registry.Register(ctx, registry.Registration{Service: "pets", ID: id, Address: "127.0.0.1", Port: 30000 + i, Version: "v1", TTL: time.Hour})
			}
			if err != nil {
				b.Fatal(err)
			}
			up = !up
			<-tick.C
		}
		tick.Stop()
		if up { // end registered: the final state differs from the first
			if err := h.Registry.Deregister(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
		// Let the last pending rebuild run and every proxy ACK it.
		time.Sleep(xds.DefaultMaxDelay + 100*time.Millisecond) // the debounce's longest wait
		waitSynced(b, h.Server, n)
		rebuilds += counter(b, h, "petmesh_controlplane_rebuilds_total") - r0
		published += counter(b, h, "petmesh_controlplane_snapshots_published_total") - p0
		cpu += cpuTime() - c0
		child += procCPUTime(childPID) - k0
	}
	b.StopTimer()
	runs := float64(b.N)
	b.ReportMetric(float64(rebuilds)/runs, "rebuilds/run")
	b.ReportMetric(float64(published)/runs/float64(n), "pushes/proxy/run")
	b.ReportMetric(ms(cpu)/runs, "server-cpu-ms/run")
	b.ReportMetric(ms(child)/runs, "client-cpu-ms/run")
	reportLoad(b)
}

// counter reads an unlabelled counter of the server's registry.
func counter(b *testing.B, h *xdstest.ControlPlane, name string) int64 {
	b.Helper()
	mfs, err := h.Metrics.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return int64(mf.GetMetric()[0].GetCounter().GetValue())
		}
	}
	b.Fatalf("no counter %s", name)
	return 0
}

// waitSynced waits until n proxies are connected and have ACKed all four
// types.
func waitSynced(b *testing.B, srv *xds.Server, n int) {
	b.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for {
		synced := 0
		for _, p := range srv.Status() {
			if p.Connected && p.Synced && len(p.Types) == 4 {
				synced++
			}
		}
		if synced >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d proxies synced", synced, n)
		}
		time.Sleep(20 * time.Millisecond) // polling the server's status
	}
}

// latestVersions is every proxy's latest version of type t.
func latestVersions(srv *xds.Server, t string) map[string]string {
	out := map[string]string{}
	for _, p := range srv.Status() {
		for _, ts := range p.Types {
			if ts.TypeURL == t {
				out[p.ID] = ts.Latest
			}
		}
	}
	return out
}

// add waits until every proxy has ACKed a version of type t other than
// its prev one and records the send and ACK times (from the server's
// status) and the receipt times (in-process clients). It polls one proxy
// at a time (Proxy), never the whole Status while the change spreads: a
// Status of 1,000 proxies holds the server's lock long enough to delay
// every stream's send.
func (l *latencies) add(b *testing.B, srv *xds.Server, proxies []*simProxy, t string, prev map[string]string, start time.Time) {
	b.Helper()
	// Generous: at 10,000 endpoints on a loaded machine an endpoint change
	// has taken about a minute to reach every proxy, and the figure is the
	// point of the benchmark.
	deadline := time.Now().Add(5 * time.Minute)
	converged := func(p xds.ProxyStatus) (sent, ack time.Duration, ok bool) {
		for _, ts := range p.Types {
			if ts.TypeURL != t || ts.Latest == prev[p.ID] || ts.Acked != ts.Latest || ts.Sent != ts.Latest || ts.SentAt == nil || ts.AckedAt == nil {
				continue
			}
			return ts.SentAt.Sub(start), ts.AckedAt.Sub(start), true
		}
		return 0, 0, false
	}
	for id := range prev {
		for {
			p, _ := srv.Proxy(id)
			if _, _, ok := converged(p); ok {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: proxy %s has not converged", xds.ShortType(t), id)
			}
			time.Sleep(5 * time.Millisecond) // polling one proxy's status; the times are the server's own
		}
	}
	for _, p := range srv.Status() {
		if sent, ack, ok := converged(p); ok {
			l.sent = append(l.sent, sent)
			l.ack = append(l.ack, ack)
		}
	}
	for _, p := range proxies {
		d, ok := p.changedSince(t, start)
		if !ok {
			b.Fatalf("%s: a simulated proxy has not received the change", t)
		}
		l.recv = append(l.recv, d)
	}
}

func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
