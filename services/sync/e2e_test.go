package syncsvc_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	standin "github.com/petmesh/petmesh/dev/petfinder-standin"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/pgtest"
	syncsvc "github.com/petmesh/petmesh/services/sync"
)

var admin = map[string]string{"X-Petmesh-Subject": "ops", "X-Petmesh-Roles": "admin"}

func call(t *testing.T, method, u string, headers map[string]string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, u, b, err)
		}
	}
	return resp.StatusCode
}

// countPets pages through the pets API and returns how many pets each
// petfinder source id has.
func countPets(t *testing.T, petsURL string) map[string]int {
	t.Helper()
	out := map[string]int{}
	cursor := ""
	for range 1000 {
		var page struct {
			Pets []struct {
				ID       string `json:"id"`
				Source   string `json:"source"`
				SourceID string `json:"source_id"`
			} `json:"pets"`
			NextCursor string `json:"next_cursor"`
		}
		if st := call(t, http.MethodGet, petsURL+"/pets?limit=100&cursor="+url.QueryEscape(cursor), nil, nil, &page); st != 200 {
			t.Fatalf("list pets: status %d", st)
		}
		for _, p := range page.Pets {
			if p.Source == syncsvc.Source {
				out[p.SourceID]++
			}
		}
		if page.NextCursor == "" {
			return out
		}
		cursor = page.NextCursor
	}
	t.Fatal("pets pagination does not end")
	return nil
}

func assertPets(t *testing.T, petsURL string, want int) {
	t.Helper()
	got := countPets(t, petsURL)
	if len(got) != want {
		t.Fatalf("pets holds %d petfinder animals, want %d", len(got), want)
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("source id %s stored %d times", id, n)
		}
	}
}

func waitRun(t *testing.T, syncURL, id string, status string) syncsvc.RunRecord {
	t.Helper()
	var run syncsvc.RunRecord
	testutil.Eventually(t, 90*time.Second, func() error {
		if st := call(t, http.MethodGet, syncURL+"/sync/runs/"+id, nil, nil, &run); st != 200 {
			return fmt.Errorf("get run: status %d", st)
		}
		if run.Status == syncsvc.StatusRunning {
			return fmt.Errorf("run %s still running (%d pages)", id, run.Pages)
		}
		return nil
	})
	if run.Status != status {
		t.Fatalf("run %s ended %s (error %q), want %s", id, run.Status, run.Error, status)
	}
	return run
}

func startRun(t *testing.T, syncURL string, full bool) syncsvc.RunRecord {
	t.Helper()
	var run syncsvc.RunRecord
	if st := call(t, http.MethodPost, syncURL+"/sync/runs", admin, map[string]bool{"full": full}, &run); st != http.StatusAccepted {
		t.Fatalf("POST /sync/runs: status %d", st)
	}
	if run.ID == "" || run.Status != syncsvc.StatusRunning {
		t.Fatalf("started run %+v", run)
	}
	return run
}

type topology struct {
	standinURL, petsURL string
	syncBin, dir        string
}

func (tp topology) startSync(t *testing.T, extra ...string) *testutil.Process {
	t.Helper()
	return testutil.Start(t, tp.syncBin, testutil.StartOptions{
		Args: extra,
		Env: []string{
			"SYNC_ADDR=127.0.0.1:0", "SYNC_ADMIN_ADDR=127.0.0.1:0",
			"SYNC_DB=" + filepath.Join(tp.dir, "sync.db"),
			"SYNC_PETFINDER_URL=" + tp.standinURL,
			"SYNC_PETFINDER_CLIENT_ID=" + standin.DefaultClientID,
			"SYNC_PETFINDER_CLIENT_SECRET=" + standin.DefaultClientSecret,
			"SYNC_PETS_URL=" + tp.petsURL,
			"SYNC_PAGE_LIMIT=20", "SYNC_BATCH_SIZE=50", "SYNC_JITTER=0", "SYNC_INTERVAL=24h",
			"SYNC_INSTANCE=e2e", "OTEL_TRACES_EXPORTER=none",
		},
		Listeners: []string{"http", "admin"},
	})
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	t.Run("sqlite", func(t *testing.T) {
		endToEnd(t, filepath.Join(t.TempDir(), "pets.db"))
	})
	t.Run("postgres", func(t *testing.T) {
		endToEnd(t, pgtest.FreshSchema(t, pgtest.DSN(t), "sync_e2e"))
	})
}

func endToEnd(t *testing.T, petsDB string) {
	standinBin := testutil.BuildBinary(t, "./dev/petfinder-standin/cmd/petfinder-standin")
	petsBin := testutil.BuildBinary(t, "./services/pets/cmd/pets")
	syncBin := testutil.BuildBinary(t, "./services/sync/cmd/sync")

	sd := testutil.Start(t, standinBin, testutil.StartOptions{
		Args: []string{"-addr", "127.0.0.1:0", "-count", "250", "-seed", "1"}, Listeners: []string{"http"},
		Env: []string{"OTEL_TRACES_EXPORTER=none"},
	})
	pets := testutil.Start(t, petsBin, testutil.StartOptions{
		Env:       []string{"PETS_ADDR=127.0.0.1:0", "PETS_ADMIN_ADDR=127.0.0.1:0", "PETS_DB=" + petsDB, "OTEL_TRACES_EXPORTER=none"},
		Listeners: []string{"http"},
	})
	tp := topology{standinURL: sd.URL("http"), petsURL: pets.URL("http"), syncBin: syncBin, dir: t.TempDir()}

	sync1 := tp.startSync(t, "-run-at-start")
	syncURL := sync1.URL("http")

	// The run at start is a full sync of every fixture.
	var first syncsvc.RunRecord
	testutil.Eventually(t, 30*time.Second, func() error {
		var list struct{ Runs []syncsvc.RunRecord }
		if st := call(t, http.MethodGet, syncURL+"/sync/runs?limit=5", nil, nil, &list); st != 200 || len(list.Runs) == 0 {
			return fmt.Errorf("no run yet (status %d)", st)
		}
		first = list.Runs[0]
		return nil
	})
	first = waitRun(t, syncURL, first.ID, syncsvc.StatusSucceeded)
	if !first.Full || first.Trigger != syncsvc.TriggerStart || first.Fetched != 250 || first.Inserted != 250 || first.Upserted != 250 || first.Failed != 0 || first.Pages != 13 {
		t.Fatalf("first run %+v", first)
	}
	assertPets(t, tp.petsURL, 250)

	t.Run("access control", func(t *testing.T) {
		tests := []struct {
			desc    string
			headers map[string]string
			status  int
		}{
			{desc: "anonymous", headers: nil, status: 401},
			{desc: "viewer", headers: map[string]string{"X-Petmesh-Subject": "v", "X-Petmesh-Roles": "viewer"}, status: 403},
		}
		for _, tc := range tests {
			t.Run(tc.desc, func(t *testing.T) {
				if st := call(t, http.MethodPost, syncURL+"/sync/runs", tc.headers, nil, nil); st != tc.status {
					t.Fatalf("status %d, want %d", st, tc.status)
				}
			})
		}
		if st := call(t, http.MethodGet, syncURL+"/sync/runs?limit=0", nil, nil, nil); st != 400 {
			t.Fatalf("limit=0: status %d", st)
		}
		if st := call(t, http.MethodGet, syncURL+"/sync/runs/run_nope", nil, nil, nil); st != 404 {
			t.Fatalf("unknown run: status %d", st)
		}
	})

	// A second (incremental) run changes nothing.
	second := waitRun(t, syncURL, startRun(t, syncURL, false).ID, syncsvc.StatusSucceeded)
	if second.Full || second.Since == nil || second.Upserted != 0 || second.Failed != 0 || second.Unchanged != second.Fetched {
		t.Fatalf("second run %+v", second)
	}
	assertPets(t, tp.petsURL, 250)

	// Newly published animals are picked up incrementally.
	if st := call(t, http.MethodPost, tp.standinURL+"/_standin/animals:publish", nil, map[string]int{"count": 5}, nil); st != 201 {
		t.Fatalf("publish: %d", st)
	}
	third := waitRun(t, syncURL, startRun(t, syncURL, false).ID, syncsvc.StatusSucceeded)
	if third.Full || third.Inserted != 5 || third.Updated != 0 || third.Failed != 0 {
		t.Fatalf("incremental run %+v", third)
	}
	assertPets(t, tp.petsURL, 255)

	// Rate limiting, server errors and a dropped connection are retried.
	faults := `[{"status":429,"retry_after":"1","count":2},{"status":503,"count":2,"page":3},{"drop":true,"page":5}]`
	if st := call(t, http.MethodPost, tp.standinURL+"/_standin/faults", nil, json.RawMessage(faults), nil); st != 200 {
		t.Fatalf("add faults: %d", st)
	}
	faulty := startRun(t, syncURL, true)
	if st := call(t, http.MethodPost, syncURL+"/sync/runs", admin, nil, nil); st != http.StatusConflict {
		t.Fatalf("second POST while running: status %d, want 409", st)
	}
	faulty = waitRun(t, syncURL, faulty.ID, syncsvc.StatusSucceeded)
	if faulty.Fetched != 255 || faulty.Upserted != 0 || faulty.Unchanged != 255 {
		t.Fatalf("run with faults %+v", faulty)
	}
	var fs struct{ Faults []standin.Fault }
	call(t, http.MethodGet, tp.standinURL+"/_standin/faults", nil, nil, &fs)
	for _, f := range fs.Faults {
		if f.Fired != f.Count {
			t.Fatalf("fault %+v did not fire fully", f)
		}
	}
	call(t, http.MethodDelete, tp.standinURL+"/_standin/faults", nil, nil, nil)

	var metrics string
	testutil.Eventually(t, 5*time.Second, func() error {
		resp, err := http.Get(sync1.URL("admin") + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		metrics = string(b)
		return nil
	})
	for _, want := range []string{`petmesh_sync_runs_total{result="succeeded"} 4`, `petmesh_sync_petfinder_errors_total{kind="rate_limited"} 2`,
		`petmesh_sync_pets_upserted_total 255`, `petmesh_sync_last_success_timestamp_seconds`, `petmesh_sync_run_duration_seconds_count 4`} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %q:\n%s", want, grep(metrics, "petmesh_sync"))
		}
	}

	// kill -9 in the middle of a run; the restarted process marks it
	// interrupted and the next run completes without duplicates.
	if st := call(t, http.MethodPost, tp.standinURL+"/_standin/faults", nil, json.RawMessage(`{"delay":"200ms","count":-1}`), nil); st != 200 {
		t.Fatalf("add slow fault: %d", st)
	}
	killed := startRun(t, syncURL, true)
	testutil.Eventually(t, 30*time.Second, func() error {
		var r syncsvc.RunRecord
		call(t, http.MethodGet, syncURL+"/sync/runs/"+killed.ID, nil, nil, &r)
		if r.Pages < 3 {
			return fmt.Errorf("run at page %d", r.Pages)
		}
		return nil
	})
	sync1.Kill()
	call(t, http.MethodDelete, tp.standinURL+"/_standin/faults", nil, nil, nil)

	sync2 := tp.startSync(t)
	syncURL = sync2.URL("http")
	var k syncsvc.RunRecord
	if st := call(t, http.MethodGet, syncURL+"/sync/runs/"+killed.ID, nil, nil, &k); st != 200 || k.Status != syncsvc.StatusInterrupted || k.FinishedAt == nil {
		t.Fatalf("killed run after restart: %d %+v", st, k)
	}
	after := waitRun(t, syncURL, startRun(t, syncURL, false).ID, syncsvc.StatusSucceeded)
	if after.Failed != 0 || after.Upserted != 0 {
		t.Fatalf("run after restart %+v", after)
	}
	full := waitRun(t, syncURL, startRun(t, syncURL, true).ID, syncsvc.StatusSucceeded)
	if full.Fetched != 255 || full.Unchanged != 255 {
		t.Fatalf("full run after restart %+v", full)
	}
	assertPets(t, tp.petsURL, 255)

	var list struct{ Runs []syncsvc.RunRecord }
	call(t, http.MethodGet, syncURL+"/sync/runs?limit=100", nil, nil, &list)
	if len(list.Runs) != 7 || list.Runs[0].ID != full.ID || list.Runs[len(list.Runs)-1].ID != first.ID {
		t.Fatalf("history has %d runs, newest %s", len(list.Runs), list.Runs[0].ID)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
