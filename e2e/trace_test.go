package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/dev/launcher"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/jaegertest"
)

// TestTraces runs the mesh with every process exporting its spans to a
// real Jaeger (OTLP/HTTP, the launcher's OTEL_* wiring, sampler
// parentbased_traceidratio at 1) and reads the traces back through
// Jaeger's query API, as an operator would:
//
//   - one GET /pets through the edge is one trace: edge server → edge
//     client → pets sidecar inbound server → sidecar client → pets server
//     → its database span, each the parent of the next;
//   - POST /sync/runs is one trace from the edge through sync's sidecar to
//     sync, whose run (a child of the request) holds the Petfinder client
//     calls and the pets writes: sync → its sidecar's egress → a pets
//     sidecar → pets → database;
//   - every HTTP span has the OTel semantic-convention attributes, the
//     database spans db.system;
//   - the processes' log lines for the request carry its trace id, and
//     pets's latency histogram has the trace as an exemplar.
func TestTraces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	j := jaegertest.Start(t)
	m := startMesh(t, "builtin", "", func(o *launcher.Options) {
		o.OTLPEndpoint = j.OTLPHTTPEndpoint()
		o.TraceRatio = "1"
		o.Env = append(o.Env, "OTEL_BSP_SCHEDULE_DELAY=100")
	})
	t.Run("GET /pets through the edge is one trace", func(t *testing.T) { testTracePets(t, m, j) })
	t.Run("a sync run is one trace down to the database", func(t *testing.T) { testTraceSync(t, m, j) })
}

// testTracePets follows one GET /pets.
func testTracePets(t *testing.T, m *mesh, j *jaegertest.Jaeger) {
	// A query no earlier request made, so that neither the edge's nor
	// pets's response cache answers it: the request reaches the database.
	path := fmt.Sprintf("/pets?limit=3&q=trace%d", rand.Uint32())
	resp, body, err := m.do(http.MethodGet, m.edgeURL(path), m.token("alice"), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %v: %s", path, resp, err, body)
	}
	rid := resp.Header.Get("X-Request-Id")
	traceID := m.traceOfRequest(t, rid)

	var chain traceChain
	tr := waitTrace(t, j, traceID, func(tr jaegertest.Trace) error {
		var err error
		chain, err = petsChain(tr, http.MethodGet, "/pets")
		return err
	})
	t.Logf("trace %s: %d spans: %s", traceID, len(tr.Spans), describeTrace(tr))
	if roots := tr.Roots(); len(roots) != 1 || roots[0].SpanID != chain.edgeServer.SpanID {
		t.Errorf("roots %s, want only the edge's server span", names(roots))
	}
	inst := m.pets1
	if chain.instance == m.pets2.Name {
		inst = m.pets2
	}
	t.Run("semantic conventions", func(t *testing.T) {
		checkHTTPSpan(t, chain.edgeServer, "server", http.MethodGet, 200, "/pets")
		checkHTTPSpan(t, chain.edgeClient, "client", http.MethodGet, 200, "/pets")
		checkHTTPSpan(t, chain.sidecarServer, "server", http.MethodGet, 200, "/pets")
		checkHTTPSpan(t, chain.sidecarClient, "client", http.MethodGet, 200, "/pets")
		checkHTTPSpan(t, chain.app, "server", http.MethodGet, 200, "/pets")
		if v, _ := chain.app.Tag("http.route"); v != "/pets" {
			t.Errorf("pets server span http.route %v, want /pets", v)
		}
		checkDBSpan(t, chain.db, "sqlite")
		// The edge sent the request to the sidecar of the instance that
		// served it.
		if v, _ := chain.edgeClient.Tag("server.port"); fmt.Sprint(v) != portOf(inst.Addrs.Inbound) {
			t.Errorf("edge client span server.port %v, want %s's sidecar inbound %s", v, inst.Name, inst.Addrs.Inbound)
		}
	})
	t.Run("log lines carry the trace id", func(t *testing.T) {
		// The edge's line gave the trace id; the sidecar of the instance
		// that served the request logged the same one.
		testutil.Eventually(t, 5*time.Second, func() error {
			lines, err := m.logRecords(inst.SidecarName())
			if err != nil {
				return err
			}
			for _, l := range lines {
				if l.RequestID == rid && l.Listener == "inbound" {
					if l.TraceID != traceID {
						return fmt.Errorf("%s access line of %s: trace_id %q, want %s", inst.SidecarName(), rid, l.TraceID, traceID)
					}
					return nil
				}
			}
			return fmt.Errorf("request %s not in %s's log", rid, inst.SidecarName())
		})
	})
	t.Run("the latency histogram has the trace as an exemplar", func(t *testing.T) {
		// otelhttp's http.server.request.duration of pets, route /pets,
		// in the OpenMetrics exposition Prometheus scrapes.
		body := m.openMetrics(t, inst.Addrs.AppAdmin)
		var found []string
		for _, line := range strings.Split(body, "\n") {
			if !strings.HasPrefix(line, "http_server_request_duration_seconds_bucket{") || !strings.Contains(line, `http_route="/pets"`) {
				continue
			}
			if m := exemplarTraceRE.FindStringSubmatch(line); m != nil {
				found = append(found, m[1])
			}
		}
		if !contains(found, traceID) {
			t.Errorf("no exemplar with trace %s on %s's http_server_request_duration_seconds{http_route=\"/pets\"}; exemplars: %v", traceID, inst.Name, found)
		}
	})
}

// testTraceSync follows POST /sync/runs and the run it starts.
func testTraceSync(t *testing.T, m *mesh, j *jaegertest.Jaeger) {
	ops := m.token("ops")
	const published = 3 // new animals, so that the run writes to pets
	resp, body, err := m.do(http.MethodPost, "http://"+m.a.Standin+"/_standin/animals:publish", "", map[string]int{"count": published})
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("publish on the stand-in: %v %v: %s", resp, err, body)
	}
	resp, body, err = m.do(http.MethodPost, m.edgeURL("/sync/runs"), ops, nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /sync/runs: %v %v: %s", resp, err, body)
	}
	rid := resp.Header.Get("X-Request-Id")
	var run struct {
		ID, Status, Error string
		Inserted          int
	}
	if err := json.Unmarshal(body, &run); err != nil || run.ID == "" {
		t.Fatalf("run: %v: %s", err, body)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if err := m.getJSON(m.edgeURL("/sync/runs/"+run.ID), ops, &run); err != nil {
			return err
		}
		if run.Status == "running" {
			return fmt.Errorf("run %s still running", run.ID)
		}
		return nil
	})
	if run.Status != "succeeded" || run.Inserted != published {
		t.Fatalf("run %+v: want succeeded with %d inserted", run, published)
	}
	traceID := m.traceOfRequest(t, rid)

	var (
		front        traceChain // edge → sync sidecar → sync
		runSpan      jaegertest.Span
		petfinder    []jaegertest.Span
		writes       []traceChain // sync → sync sidecar egress → pets sidecar → pets → database
		standinSpans int
	)
	tr := waitTrace(t, j, traceID, func(tr jaegertest.Trace) error {
		var err error
		if front, err = serviceChain(tr, "sync", http.MethodPost, "/sync/runs"); err != nil {
			return err
		}
		runSpan, petfinder, writes, standinSpans = jaegertest.Span{}, nil, nil, 0
		for _, s := range childrenOf(tr, front.app) {
			if s.OperationName == "sync run" {
				runSpan = s
			}
		}
		if runSpan.SpanID == "" {
			return fmt.Errorf("no \"sync run\" span under sync's server span")
		}
		for _, s := range descendants(tr, runSpan) {
			if s.ServiceName() != "sync" || spanKind(s) != "client" {
				continue
			}
			switch {
			case strings.HasPrefix(s.OperationName, "petfinder "):
				petfinder = append(petfinder, s)
				for _, c := range childrenOf(tr, s) {
					// The stand-in's server span, named by its route.
					if route, _ := c.Tag("http.route"); c.ServiceName() == "petfinder-standin" && spanKind(c) == "server" &&
						strings.HasPrefix(fmt.Sprint(route), "/v2/") && strings.HasSuffix(c.OperationName, fmt.Sprint(route)) {
						standinSpans++
					}
				}
			case strings.HasPrefix(s.OperationName, "pets "):
				w, err := writeChain(tr, s)
				if err != nil {
					return fmt.Errorf("pets write %s: %w", s.SpanID, err)
				}
				writes = append(writes, w)
			}
		}
		if len(petfinder) == 0 {
			return fmt.Errorf("no Petfinder client span under the sync run")
		}
		if len(writes) == 0 {
			return fmt.Errorf("no complete pets write under the sync run")
		}
		return nil
	})
	t.Logf("trace %s: %d spans, %d Petfinder calls, %d pets writes: %s", traceID, len(tr.Spans), len(petfinder), len(writes), describeTrace(tr))
	if roots := tr.Roots(); len(roots) != 1 || roots[0].SpanID != front.edgeServer.SpanID {
		t.Errorf("roots %s, want only the edge's server span", names(roots))
	}
	if v, _ := runSpan.Tag("petmesh.sync.run_id"); v != run.ID {
		t.Errorf("sync run span petmesh.sync.run_id %v, want %s", v, run.ID)
	}
	if standinSpans != len(petfinder) {
		t.Errorf("%d of %d Petfinder calls have the stand-in's server span (named by route) as a child", standinSpans, len(petfinder))
	}

	t.Run("semantic conventions", func(t *testing.T) {
		checkHTTPSpan(t, front.edgeServer, "server", http.MethodPost, 202, "/sync/runs")
		checkHTTPSpan(t, front.edgeClient, "client", http.MethodPost, 202, "/sync/runs")
		checkHTTPSpan(t, front.sidecarServer, "server", http.MethodPost, 202, "/sync/runs")
		checkHTTPSpan(t, front.sidecarClient, "client", http.MethodPost, 202, "/sync/runs")
		checkHTTPSpan(t, front.app, "server", http.MethodPost, 202, "/sync/runs")
		if v, _ := front.app.Tag("http.route"); v != "/sync/runs" {
			t.Errorf("sync server span http.route %v, want /sync/runs", v)
		}
		for _, s := range petfinder {
			checkHTTPSpan(t, s, "client", "", 200, "/v2/")
			if v, _ := s.Tag("server.port"); fmt.Sprint(v) != portOf(m.a.Standin) {
				t.Errorf("Petfinder span %q server.port %v, want the stand-in's %s", s.OperationName, v, m.a.Standin)
			}
		}
		for _, w := range writes {
			checkHTTPSpan(t, w.caller, "client", http.MethodPost, 200, "/pets:batchUpsert")
			checkHTTPSpan(t, w.edgeServer, "server", http.MethodPost, 200, "/pets:batchUpsert")
			checkHTTPSpan(t, w.edgeClient, "client", http.MethodPost, 200, "/pets:batchUpsert")
			checkHTTPSpan(t, w.sidecarServer, "server", http.MethodPost, 200, "/pets:batchUpsert")
			checkHTTPSpan(t, w.sidecarClient, "client", http.MethodPost, 200, "/pets:batchUpsert")
			checkHTTPSpan(t, w.app, "server", http.MethodPost, 200, "/pets:batchUpsert")
			checkDBSpan(t, w.db, "sqlite")
		}
	})
	t.Run("log lines carry the trace id", func(t *testing.T) {
		testutil.Eventually(t, 5*time.Second, func() error {
			// sync's own lines about the run.
			lines, err := m.logRecords(m.syncI.Name)
			if err != nil {
				return err
			}
			msgs := map[string]bool{}
			for _, l := range lines {
				if l.Run == run.ID && l.TraceID == traceID {
					msgs[l.Msg] = true
				}
			}
			if !msgs["sync run started"] || !msgs["sync run finished"] {
				return fmt.Errorf("sync's log lines of run %s with trace %s: %v", run.ID, traceID, msgs)
			}
			// The writes at sync's sidecar egress and at a pets sidecar.
			for _, proc := range []string{m.syncI.SidecarName(), m.pets1.SidecarName() + "|" + m.pets2.SidecarName()} {
				n := 0
				for _, p := range strings.Split(proc, "|") {
					lines, err := m.logRecords(p)
					if err != nil {
						return err
					}
					for _, l := range lines {
						if l.Msg == "access" && l.TraceID == traceID && l.Method == http.MethodPost {
							n++
						}
					}
				}
				if n == 0 {
					return fmt.Errorf("no POST access line with trace %s in %s", traceID, proc)
				}
			}
			return nil
		})
	})
}

// traceChain is the spans of one request from a caller through the edge
// (or a sidecar's egress) and a service's sidecar to the service.
type traceChain struct {
	// caller is the client span that sent the request (sync → egress), or
	// zero for a request from outside.
	caller jaegertest.Span
	// edgeServer and edgeClient are the first proxy's spans: the edge, or
	// the calling service's sidecar egress.
	edgeServer, edgeClient jaegertest.Span
	// sidecarServer and sidecarClient are the service's sidecar inbound.
	sidecarServer, sidecarClient jaegertest.Span
	app                          jaegertest.Span
	db                           jaegertest.Span
	// instance is the service.instance.id of the service (and sidecar)
	// that served the request.
	instance string
}

// serviceChain finds, from the trace's edge server span, the chain edge
// server → edge client → sidecar-<service> server → sidecar client →
// <service> server span for method and route, each the parent of the
// next.
func serviceChain(tr jaegertest.Trace, service, method, route string) (traceChain, error) {
	var c traceChain
	for _, s := range tr.Spans {
		if s.ServiceName() == "edge" && spanKind(s) == "server" && tagIs(s, "http.request.method", method) {
			c.edgeServer = s
		}
	}
	if c.edgeServer.SpanID == "" {
		return c, fmt.Errorf("no edge server span for %s", method)
	}
	return c, c.fromProxy(tr, c.edgeServer, service, method, route)
}

// fromProxy fills the chain below a proxy's server span.
func (c *traceChain) fromProxy(tr jaegertest.Trace, proxyServer jaegertest.Span, service, method, route string) error {
	c.edgeServer = proxyServer
	var err error
	if c.edgeClient, err = onlyChild(tr, proxyServer, proxyServer.ServiceName(), "client"); err != nil {
		return err
	}
	if c.sidecarServer, err = onlyChild(tr, c.edgeClient, "sidecar-"+service, "server"); err != nil {
		return err
	}
	if c.sidecarClient, err = onlyChild(tr, c.sidecarServer, "sidecar-"+service, "client"); err != nil {
		return err
	}
	if c.app, err = onlyChild(tr, c.sidecarClient, service, "server"); err != nil {
		return err
	}
	if c.app.OperationName != method+" "+route {
		return fmt.Errorf("%s server span %q, want %q", service, c.app.OperationName, method+" "+route)
	}
	// The sidecar and the service it fronts are the same instance.
	if a, b := instanceOf(c.sidecarServer), instanceOf(c.app); a == "" || a != b {
		return fmt.Errorf("sidecar instance %q, service instance %q", a, b)
	}
	return nil
}

// petsChain is serviceChain for pets, down to the database span.
func petsChain(tr jaegertest.Trace, method, route string) (traceChain, error) {
	c, err := serviceChain(tr, "pets", method, route)
	if err != nil {
		return c, err
	}
	return c, c.withDB(tr)
}

// writeChain follows one pets write of a sync run: sync's client span →
// sync sidecar egress (server, client) → pets sidecar inbound (server,
// client) → pets server → database.
func writeChain(tr jaegertest.Trace, caller jaegertest.Span) (traceChain, error) {
	egress, err := onlyChild(tr, caller, "sidecar-sync", "server")
	if err != nil {
		return traceChain{}, err
	}
	c := traceChain{caller: caller}
	if err := c.fromProxy(tr, egress, "pets", http.MethodPost, "/pets:batchUpsert"); err != nil {
		return c, err
	}
	return c, c.withDB(tr)
}

// withDB finds the database span under the service's server span and the
// instance that served the request.
func (c *traceChain) withDB(tr jaegertest.Trace) error {
	for _, s := range descendants(tr, c.app) {
		if _, ok := s.Tag("db.system"); ok && s.ServiceName() == c.app.ServiceName() && spanKind(s) == "client" {
			c.db = s
			break
		}
	}
	if c.db.SpanID == "" {
		return fmt.Errorf("no database span under %s %q", c.app.ServiceName(), c.app.OperationName)
	}
	if c.db.ParentSpanID() != c.app.SpanID {
		return fmt.Errorf("database span %q is not a child of the server span", c.db.OperationName)
	}
	c.instance = instanceOf(c.app)
	if c.instance != "pets-1" && c.instance != "pets-2" {
		return fmt.Errorf("pets span from instance %q", c.instance)
	}
	return nil
}

// onlyChild returns the one child of parent emitted by service with kind.
func onlyChild(tr jaegertest.Trace, parent jaegertest.Span, service, kind string) (jaegertest.Span, error) {
	var out []jaegertest.Span
	for _, s := range childrenOf(tr, parent) {
		if s.ServiceName() == service && spanKind(s) == kind {
			out = append(out, s)
		}
	}
	if len(out) != 1 {
		return jaegertest.Span{}, fmt.Errorf("%d %s spans of %s as children of %s %q (children: %s)",
			len(out), kind, service, parent.ServiceName(), parent.OperationName, names(childrenOf(tr, parent)))
	}
	return out[0], nil
}

func childrenOf(tr jaegertest.Trace, parent jaegertest.Span) []jaegertest.Span {
	var out []jaegertest.Span
	for _, s := range tr.Spans {
		if s.ParentSpanID() == parent.SpanID {
			out = append(out, s)
		}
	}
	return out
}

func descendants(tr jaegertest.Trace, root jaegertest.Span) []jaegertest.Span {
	var out []jaegertest.Span
	queue := []jaegertest.Span{root}
	for len(queue) > 0 {
		kids := childrenOf(tr, queue[0])
		queue = append(queue[1:], kids...)
		out = append(out, kids...)
	}
	return out
}

// waitTrace polls Jaeger until trace id is complete by check (the
// processes export their spans independently).
func waitTrace(t *testing.T, j *jaegertest.Jaeger, id string, check func(jaegertest.Trace) error) jaegertest.Trace {
	t.Helper()
	var tr jaegertest.Trace
	testutil.Eventually(t, 30*time.Second, func() error {
		var err error
		if tr, err = j.Trace(testutil.Context(t), id); err != nil {
			return err
		}
		if err := check(tr); err != nil {
			return fmt.Errorf("trace %s (%d spans: %s): %w", id, len(tr.Spans), describeTrace(tr), err)
		}
		return nil
	})
	return tr
}

// checkHTTPSpan asserts the HTTP semantic-convention attributes of a
// span: kind, http.request.method (when method is set), the status code,
// server.address, and url.path or url.full or http.route containing path.
func checkHTTPSpan(t *testing.T, s jaegertest.Span, kind, method string, status int, path string) {
	t.Helper()
	what := fmt.Sprintf("%s %s span %q", s.ServiceName(), kind, s.OperationName)
	if got := spanKind(s); got != kind {
		t.Errorf("%s: span.kind %q", what, got)
	}
	if v, ok := s.Tag("http.request.method"); !ok || (method != "" && v != method) {
		t.Errorf("%s: http.request.method %v, want %s", what, v, method)
	}
	if v, _ := s.Tag("http.response.status_code"); fmt.Sprint(v) != fmt.Sprint(status) {
		t.Errorf("%s: http.response.status_code %v, want %d", what, v, status)
	}
	if v, ok := s.Tag("server.address"); !ok || v == "" {
		t.Errorf("%s: no server.address", what)
	}
	found := false
	for _, k := range []string{"url.path", "url.full", "http.route"} {
		if v, ok := s.Tag(k); ok && strings.Contains(fmt.Sprint(v), path) {
			found = true
		}
	}
	if !found {
		t.Errorf("%s: none of url.path, url.full, http.route contains %q (tags %s)", what, path, tagList(s))
	}
}

// checkDBSpan asserts a database client span's attributes.
func checkDBSpan(t *testing.T, s jaegertest.Span, system string) {
	t.Helper()
	if v, _ := s.Tag("db.system"); v != system {
		t.Errorf("database span %q: db.system %v, want %s", s.OperationName, v, system)
	}
	if spanKind(s) != "client" {
		t.Errorf("database span %q: span.kind %q, want client", s.OperationName, spanKind(s))
	}
}

func spanKind(s jaegertest.Span) string {
	v, _ := s.Tag("span.kind")
	return fmt.Sprint(v)
}

func tagIs(s jaegertest.Span, key, want string) bool {
	v, ok := s.Tag(key)
	return ok && fmt.Sprint(v) == want
}

// instanceOf returns the span's service.instance.id resource attribute.
func instanceOf(s jaegertest.Span) string {
	if s.Process == nil {
		return ""
	}
	for _, kv := range s.Process.Tags {
		if kv.Key == "service.instance.id" {
			return fmt.Sprint(kv.Value)
		}
	}
	return ""
}

func names(spans []jaegertest.Span) string {
	var out []string
	for _, s := range spans {
		out = append(out, fmt.Sprintf("%s/%s %q", s.ServiceName(), spanKind(s), s.OperationName))
	}
	return "[" + strings.Join(out, ", ") + "]"
}

// describeTrace renders the span tree, for failure messages.
func describeTrace(tr jaegertest.Trace) string {
	var b strings.Builder
	var walk func(s jaegertest.Span, depth int)
	walk = func(s jaegertest.Span, depth int) {
		fmt.Fprintf(&b, "\n%s%s/%s %q [%s]", strings.Repeat("  ", depth+1), s.ServiceName(), spanKind(s), s.OperationName, instanceOf(s))
		kids := childrenOf(tr, s)
		sort.Slice(kids, func(i, j int) bool { return kids[i].StartTime < kids[j].StartTime })
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	known := map[string]bool{}
	for _, s := range tr.Spans {
		known[s.SpanID] = true
	}
	for _, s := range tr.Spans {
		if p := s.ParentSpanID(); p == "" || !known[p] {
			walk(s, 0)
		}
	}
	return b.String()
}

func tagList(s jaegertest.Span) string {
	var out []string
	for _, kv := range s.Tags {
		out = append(out, fmt.Sprintf("%s=%v", kv.Key, kv.Value))
	}
	return strings.Join(out, " ")
}

func portOf(addr string) string {
	return addr[strings.LastIndexByte(addr, ':')+1:]
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// exemplarTraceRE captures the trace id of an OpenMetrics exemplar.
var exemplarTraceRE = regexp.MustCompile(` # \{[^}]*trace_id="([0-9a-f]{32})"`)

// logRecord is the part of a JSON log line the trace test reads.
type logRecord struct {
	Msg       string `json:"msg"`
	Listener  string `json:"listener"`
	Method    string `json:"method"`
	RequestID string `json:"request_id"`
	TraceID   string `json:"trace_id"`
	Run       string `json:"run"`
}

// logRecords returns every JSON line of a process's log.
func (m *mesh) logRecords(proc string) ([]logRecord, error) {
	f, err := os.Open(filepath.Join(m.o.RunDir, "logs", proc+".log"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []logRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r logRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil {
			out = append(out, r)
		}
	}
	return out, sc.Err()
}

// traceOfRequest returns the trace id the edge logged for request id rid.
func (m *mesh) traceOfRequest(t *testing.T, rid string) string {
	t.Helper()
	if rid == "" {
		t.Fatal("no X-Request-Id on the edge's response")
	}
	var id string
	testutil.Eventually(t, 5*time.Second, func() error {
		lines, err := m.logRecords("edge")
		if err != nil {
			return err
		}
		for _, l := range lines {
			if l.Msg == "access" && l.RequestID == rid {
				if len(l.TraceID) != 32 {
					return fmt.Errorf("edge access line of %s: trace_id %q", rid, l.TraceID)
				}
				id = l.TraceID
				return nil
			}
		}
		return fmt.Errorf("request %s not in the edge's access log", rid)
	})
	return id
}

// openMetrics scrapes an admin /metrics as Prometheus does, in the
// OpenMetrics format that carries exemplars.
func (m *mesh) openMetrics(t *testing.T, adminAddr string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+adminAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
	resp, err := m.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/openmetrics-text") {
		t.Fatalf("/metrics of %s: status %d, content type %q", adminAddr, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return b.String()
}
