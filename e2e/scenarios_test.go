package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/petmesh/petmesh/dev/launcher"
	"github.com/petmesh/petmesh/internal/testutil"
)

// testAuth: log in through the edge, GET /pets through edge → sidecar →
// pets; 401 without a token, 403 for a viewer on an admin route.
func testAuth(t *testing.T, m *mesh) {
	alice, ops := m.token("alice"), m.token("ops")
	if _, status, _ := m.login("alice", "wrong"); status != http.StatusUnauthorized {
		t.Errorf("login with a wrong password: status %d, want 401", status)
	}
	for _, tc := range []struct {
		desc, method, path, token string
		want                      int
	}{
		{desc: "viewer lists pets", method: http.MethodGet, path: "/pets?limit=5", token: alice, want: http.StatusOK},
		{desc: "no token", method: http.MethodGet, path: "/pets", want: http.StatusUnauthorized},
		{desc: "garbage token", method: http.MethodGet, path: "/pets", token: "not.a.jwt", want: http.StatusUnauthorized},
		{desc: "a token in the query string is refused by default", method: http.MethodGet, path: "/pets?limit=5&access_token=" + alice, want: http.StatusUnauthorized},
		{desc: "viewer on sync", method: http.MethodGet, path: "/sync/runs", token: alice, want: http.StatusForbidden},
		{desc: "viewer starts a sync", method: http.MethodPost, path: "/sync/runs", token: alice, want: http.StatusForbidden},
		{desc: "admin on sync", method: http.MethodGet, path: "/sync/runs", token: ops, want: http.StatusOK},
		{desc: "viewer on stats", method: http.MethodGet, path: "/stats/requests?window=1h&by=route", token: alice, want: http.StatusOK},
		{desc: "jwks is public", method: http.MethodGet, path: "/.well-known/jwks.json", want: http.StatusOK},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			resp, body, err := m.do(tc.method, m.edgeURL(tc.path), tc.token, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.want {
				t.Fatalf("%s %s: status %d, want %d: %s", tc.method, tc.path, resp.StatusCode, tc.want, body)
			}
			if tc.want >= 400 {
				var e struct {
					Error struct{ Code, Message string } `json:"error"`
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
					t.Errorf("error body is not a JSON error: %s", body)
				}
			}
			if tc.want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}

	t.Run("the request went edge → pets sidecar → pets", func(t *testing.T) {
		resp, body, err := m.do(http.MethodGet, m.edgeURL("/pets?limit=3"), alice, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /pets: %v %v: %s", resp, err, body)
		}
		var page struct {
			Pets []struct{ ID, Name string } `json:"pets"`
		}
		if err := json.Unmarshal(body, &page); err != nil || len(page.Pets) != 3 || page.Pets[0].ID == "" {
			t.Fatalf("pets page: %v: %s", err, body)
		}
		rid := resp.Header.Get("X-Request-Id")
		if rid == "" {
			t.Fatal("no X-Request-Id")
		}
		sidecars := map[string]string{m.pets1.Addrs.Inbound: m.pets1.SidecarName(), m.pets2.Addrs.Inbound: m.pets2.SidecarName()}
		testutil.Eventually(t, 5*time.Second, func() error {
			edge, err := m.accessLines("edge")
			if err != nil {
				return err
			}
			for _, e := range edge {
				if e.RequestID != rid {
					continue
				}
				sc, ok := sidecars[e.Upstream]
				if e.Route != "pets" || e.Subject != "alice" || !ok {
					return fmt.Errorf("edge access line %+v: want route pets, subject alice, upstream a pets sidecar", e)
				}
				lines, err := m.accessLines(sc)
				if err != nil {
					return err
				}
				for _, s := range lines {
					if s.RequestID == rid && s.Listener == "inbound" {
						if s.Subject != "alice" || s.Status != http.StatusOK {
							return fmt.Errorf("%s access line %+v: want subject alice, status 200", sc, s)
						}
						return nil
					}
				}
				return fmt.Errorf("request %s not in %s's access log", rid, sc)
			}
			return fmt.Errorf("request %s not in the edge's access log", rid)
		})
	})
}

// testSyncAndStats: a sync run started through the edge writes through
// sync's sidecar egress into pets, as subject sync; stats reports the
// requests.
func testSyncAndStats(t *testing.T, m *mesh) {
	ops := m.token("ops")
	const published = 7
	resp, body, err := m.do(http.MethodPost, "http://"+m.a.Standin+"/_standin/animals:publish", "", map[string]int{"count": published})
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("publish on the stand-in: %v %v: %s", resp, err, body)
	}
	resp, body, err = m.do(http.MethodPost, m.edgeURL("/sync/runs"), ops, nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /sync/runs: %v %v: %s", resp, err, body)
	}
	var run struct {
		ID, Status, Error  string
		Upserted, Inserted int
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
	if run.Status != "succeeded" || run.Inserted != published || run.Upserted < published {
		t.Fatalf("run %+v: want succeeded with %d inserted", run, published)
	}
	n, err := m.countPets(ops)
	if err != nil {
		t.Fatal(err)
	}
	if n != fixtures+published {
		t.Errorf("pets has %d pets after the run, want %d", n, fixtures+published)
	}
	// The writes arrived at a pets sidecar's inbound as subject sync
	// (sync's sidecar attached its service token on egress).
	testutil.Eventually(t, 5*time.Second, func() error {
		writes := 0
		for _, sc := range []string{m.pets1.SidecarName(), m.pets2.SidecarName()} {
			lines, err := m.accessLines(sc)
			if err != nil {
				return err
			}
			for _, l := range lines {
				if l.Listener == "inbound" && l.Subject == "sync" && l.Method != http.MethodGet && l.Status/100 == 2 {
					writes++
				}
			}
		}
		if writes == 0 {
			return fmt.Errorf("no successful write by subject sync in the pets sidecars' access logs")
		}
		return nil
	})
	// And they left through sync's own sidecar egress.
	testutil.Eventually(t, 5*time.Second, func() error {
		lines, err := m.accessLines(m.syncI.SidecarName())
		if err != nil {
			return err
		}
		for _, l := range lines {
			if l.Listener == "outbound" && l.Method != http.MethodGet && l.Status/100 == 2 {
				return nil
			}
		}
		return fmt.Errorf("no successful write in the sync sidecar's outbound access log")
	})

	// stats saw the edge's requests, per route.
	testutil.Eventually(t, 10*time.Second, func() error {
		var out struct {
			Groups []struct {
				Key   string `json:"key"`
				Count int    `json:"count"`
			} `json:"groups"`
		}
		if err := m.getJSON(m.edgeURL("/stats/requests?window=1h&by=route"), ops, &out); err != nil {
			return err
		}
		got := map[string]int{}
		for _, g := range out.Groups {
			got[g.Key] = g.Count
		}
		// At least: the logins, the pets pages counted here and at start,
		// the sync run and its polling.
		for route, min := range map[string]int{"auth": 2, "pets": 4, "sync": 2} {
			if got[route] < min {
				return fmt.Errorf("stats by route %v: want %s ≥ %d", got, route, min)
			}
		}
		return nil
	})
}

// testCanary: petctl sets pets to v1=90 v2=10; over 2,000 requests the
// share of v2 is within ±5 points of 10%. Each response is attributed to
// an instance through its request id in the edge's access log (upstream =
// the pets sidecar that answered). The table is rolled back afterwards.
func testCanary(t *testing.T, m *mesh) {
	before, err := m.routeVersion()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := m.runPetctl("routes", "set-weights", "pets", "v1=90", "v2=10", "-m", "e2e canary"); err != nil {
		t.Fatalf("petctl routes set-weights: %v\n%s", err, out)
	}
	after, err := m.routeVersion()
	if err != nil {
		t.Fatal(err)
	}
	if after != before+1 {
		t.Fatalf("route version %d after set-weights, want %d", after, before+1)
	}
	testutil.Eventually(t, 10*time.Second, func() error { return m.allSynced(after) })
	t.Cleanup(func() {
		// Leave the table as it was for the scenarios that follow.
		if out, err := m.runPetctl("routes", "rollback", strconv.Itoa(before)); err != nil {
			t.Errorf("petctl routes rollback: %v\n%s", err, out)
			return
		}
		testutil.Eventually(t, 10*time.Second, func() error { return m.allSynced(after + 1) })
	})

	const total, workers = 2000, 8
	alice := m.token("alice")
	ids := make(chan string, total)
	errs := make(chan error, total)
	jobs := make(chan struct{}, total)
	for range total {
		jobs <- struct{}{}
	}
	close(jobs)
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for range jobs {
				resp, body, err := m.do(http.MethodGet, m.edgeURL("/pets?limit=1"), alice, nil)
				switch {
				case err != nil:
					errs <- err
				case resp.StatusCode != http.StatusOK:
					errs <- fmt.Errorf("status %d: %s", resp.StatusCode, body)
				default:
					ids <- resp.Header.Get("X-Request-Id")
				}
			}
		}()
	}
	for range workers {
		<-done
	}
	close(ids)
	close(errs)
	for err := range errs {
		t.Fatalf("GET /pets failed during the canary: %v", err)
	}
	want := map[string]bool{}
	for id := range ids {
		want[id] = true
	}
	if len(want) != total {
		t.Fatalf("%d distinct request ids, want %d", len(want), total)
	}
	var v1, v2 int
	testutil.Eventually(t, 10*time.Second, func() error {
		lines, err := m.accessLines("edge")
		if err != nil {
			return err
		}
		v1, v2 = 0, 0
		for _, l := range lines {
			if !want[l.RequestID] {
				continue
			}
			switch l.Upstream {
			case m.pets1.Addrs.Inbound:
				v1++
			case m.pets2.Addrs.Inbound:
				v2++
			default:
				return fmt.Errorf("request %s went to %q", l.RequestID, l.Upstream)
			}
		}
		if v1+v2 != total {
			return fmt.Errorf("%d of %d requests in the edge's access log", v1+v2, total)
		}
		return nil
	})
	share := 100 * float64(v2) / total
	t.Logf("canary split over %d requests: v1 %d, v2 %d (%.1f%%)", total, v1, v2, share)
	if share < 5 || share > 15 {
		t.Errorf("v2 got %.1f%% of the requests, want 10 ± 5", share)
	}
}

// testControlPlaneRestart: with the control plane stopped, traffic keeps
// flowing; once it is back, every proxy resyncs to the current version.
func testControlPlaneRestart(t *testing.T, m *mesh) {
	version, err := m.routeVersion()
	if err != nil {
		t.Fatal(err)
	}
	ld := m.startLoad(4, "/pets?limit=5", m.token("alice"))
	defer func() { checkLoad(t, ld, 100) }()
	waitMore(t, ld, 20)

	cp, _ := m.l.Proc("controlplane")
	if err := m.l.Stop("controlplane"); err != nil {
		t.Fatalf("stop the control plane: %v", err)
	}
	// Down for longer than a heartbeat period: every sidecar's heartbeat
	// fails at least once and every proxy's ADS stream breaks.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		waitMore(t, ld, 20)
	}
	if _, fail := ld.counts(); fail > 0 {
		t.Errorf("%d requests failed while the control plane was down", fail)
	}

	// Watch the edge's pets endpoints through the restart: the restarted
	// control plane must not send them empty (the built-in registry is
	// empty until the sidecars' next heartbeats).
	minEndpoints := make(chan int, 1)
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go func() {
		least := 2
		for watchCtx.Err() == nil {
			n, err := m.edgeEndpoints()
			if err == nil && n < least {
				least = n
			}
			time.Sleep(10 * time.Millisecond) // sampling period, not a readiness wait
		}
		minEndpoints <- least
	}()
	if err := m.l.Start(testutil.Context(t), cp); err != nil {
		t.Fatalf("restart the control plane: %v", err)
	}
	testutil.Eventually(t, 20*time.Second, func() error { return m.allSynced(version) })
	stopWatch()
	if least := <-minEndpoints; least < 2 {
		t.Errorf("the edge had %d EDS-healthy pets endpoints at some point after the restart, want 2 throughout", least)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, i := range []launcher.Instance{m.pets1, m.pets2} {
			if err := m.instanceServing(i); err != nil {
				return err
			}
		}
		return nil
	})
	waitMore(t, ld, 100)
}

// testRollingRestart: each pets instance in turn gets SIGTERM (sidecar,
// then app) and is replaced, under load, with zero failed requests.
func testRollingRestart(t *testing.T, m *mesh) {
	ld := m.startLoad(8, "/pets?limit=5", m.token("alice"))
	defer func() { checkLoad(t, ld, 500) }()
	waitMore(t, ld, 50)
	ctx := testutil.Context(t)
	for _, i := range []launcher.Instance{m.pets1, m.pets2} {
		app, _ := m.l.Proc(i.Name)
		sc, _ := m.l.Proc(i.SidecarName())
		start := time.Now()
		if err := m.l.Signal(i.SidecarName(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := m.l.Wait(i.SidecarName(), 30*time.Second); err != nil {
			t.Fatalf("%s after SIGTERM: %v", i.SidecarName(), err)
		}
		if err := m.l.Signal(i.Name, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := m.l.Wait(i.Name, 30*time.Second); err != nil {
			t.Fatalf("%s after SIGTERM: %v", i.Name, err)
		}
		stopped := time.Since(start)
		waitMore(t, ld, 50) // served by the other instance alone
		if err := m.l.Start(ctx, tuned(app)); err != nil {
			t.Fatalf("restart %s: %v", i.Name, err)
		}
		if err := m.l.Start(ctx, tuned(sc)); err != nil {
			t.Fatalf("restart %s: %v", i.SidecarName(), err)
		}
		testutil.Eventually(t, 20*time.Second, func() error { return m.instanceServing(i) })
		t.Logf("%s: stopped in %v, serving again %v after SIGTERM", i.Name, stopped.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		waitMore(t, ld, 50)
	}
}

// testKill: kill -9 of one pets app (not its sidecar) under load: no GET
// fails, and the instance stops being a healthy endpoint within 2s plus
// the sidecar's health check interval (the sidecar stays registered and
// reports the app critical; the control plane sends it as UNHEALTHY).
func testKill(t *testing.T, m *mesh, bound time.Duration) {
	ld := m.startLoad(8, "/pets?limit=5", m.token("alice"))
	defer func() { checkLoad(t, ld, 500) }()
	waitMore(t, ld, 100)

	victim := m.pets1
	killed := time.Now()
	if err := m.l.Signal(victim.Name, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var registryGone, edgeGone time.Duration
	testutil.Eventually(t, 10*time.Second, func() error {
		if registryGone == 0 {
			h, err := m.instanceHealth(victim.Name)
			if err != nil {
				return err
			}
			if h == "passing" {
				return fmt.Errorf("%s still passing in the registry", victim.Name)
			}
			registryGone = time.Since(killed)
		}
		present, eds, _, err := m.edgeEndpoint(victim.Addrs.Inbound)
		if err != nil {
			return err
		}
		if present && eds {
			return fmt.Errorf("%s still an EDS-healthy endpoint at the edge", victim.Name)
		}
		edgeGone = time.Since(killed)
		return nil
	})
	t.Logf("after kill -9 of %s: not passing in the registry after %v, not a healthy endpoint at the edge after %v (bound %v)",
		victim.Name, registryGone.Round(time.Millisecond), edgeGone.Round(time.Millisecond), bound)
	if edgeGone > bound {
		t.Errorf("%s still a healthy endpoint %v after kill -9, want ≤ %v", victim.Name, edgeGone, bound)
	}
	// Keep the load on for 5s after the kill in all.
	for time.Since(killed) < 5*time.Second {
		waitMore(t, ld, 20)
	}
	t.Logf("edge metrics after the kill:\n%s", m.metrics(m.a.EdgeAdmin, "petmesh_dataplane_upstream_rq_retry", "petmesh_dataplane_outlier"))
}
