package stats_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil"
)

var client = &http.Client{Timeout: 30 * time.Second}

func call(t *testing.T, method, url, subject, roles string, body any) (int, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if subject != "" {
		req.Header.Set("X-Petmesh-Subject", subject)
		req.Header.Set("X-Petmesh-Roles", roles)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

func startStats(t *testing.T, dir string, env ...string) *testutil.Process {
	t.Helper()
	bin := testutil.BuildBinary(t, "./services/stats/cmd/stats")
	return testutil.Start(t, bin, testutil.StartOptions{
		Env: append([]string{
			"STATS_ADDR=127.0.0.1:0", "STATS_ADMIN_ADDR=127.0.0.1:0",
			"STATS_DB=" + filepath.Join(dir, "stats.db"), "STATS_FLUSH_INTERVAL=20ms",
		}, env...),
		Listeners: []string{"http", "admin"},
	})
}

type report struct {
	Overall struct {
		Count      int64   `json:"count"`
		Errors     int64   `json:"errors"`
		ErrorRatio float64 `json:"error_ratio"`
		Latency    struct {
			P50, P90, P99 float64
		} `json:"latency_ms"`
	} `json:"overall"`
	Groups []struct {
		Key   string `json:"key"`
		Count int64  `json:"count"`
	} `json:"groups"`
	Buckets []struct {
		Count int64 `json:"count"`
	} `json:"buckets"`
}

func events(n int, now time.Time, mod func(i int, e map[string]any)) map[string]any {
	evs := make([]map[string]any, n)
	for i := range evs {
		evs[i] = map[string]any{
			"time": now.Format(time.RFC3339Nano), "route": "pets-list", "method": "GET", "path": "/pets",
			"status": 200, "latency_ms": float64(i%100 + 1), "subject": "alice",
		}
		if mod != nil {
			mod(i, evs[i])
		}
	}
	return map[string]any{"events": evs}
}

func waitCount(t *testing.T, url string, want int64) report {
	t.Helper()
	var rep report
	testutil.Eventually(t, 20*time.Second, func() error {
		code, b, _ := call(t, "GET", url, "alice", "viewer", nil)
		if code != 200 {
			return fmt.Errorf("status %d: %s", code, b)
		}
		rep = report{}
		if err := json.Unmarshal(b, &rep); err != nil {
			return err
		}
		if rep.Overall.Count != want {
			return fmt.Errorf("count %d, want %d", rep.Overall.Count, want)
		}
		return nil
	})
	return rep
}

func TestBinaryIngestQueryAndShutdownFlush(t *testing.T) {
	dir := t.TempDir()
	p := startStats(t, dir)
	api := p.URL("http")

	now := time.Now().UTC()
	code, b, _ := call(t, "POST", api+"/events", "edge", "", events(200, now, func(i int, e map[string]any) {
		if i%10 == 0 {
			e["status"] = 503
			e["route"] = "pets-get"
			e["path"] = "/pets/pet_1"
		}
	}))
	if code != http.StatusAccepted || !strings.Contains(string(b), `"accepted":200`) {
		t.Fatalf("POST /events: %d %s", code, b)
	}
	rep := waitCount(t, api+"/stats/requests?window=1h&by=route", 200)
	if rep.Overall.Errors != 20 || rep.Overall.ErrorRatio != 0.1 {
		t.Errorf("errors = %d (ratio %v), want 20 (0.1)", rep.Overall.Errors, rep.Overall.ErrorRatio)
	}
	// Latencies are 1..100 ms twice over: p50 = 50, p99 = 99 within 1%.
	if l := rep.Overall.Latency; l.P50 < 49.5 || l.P50 > 50.5 || l.P99 < 98 || l.P99 > 100 {
		t.Errorf("latency = %+v, want p50≈50 p99≈99", l)
	}
	if len(rep.Groups) != 2 || rep.Groups[0].Key != "pets-list" || rep.Groups[0].Count != 180 {
		t.Errorf("groups = %+v", rep.Groups)
	}
	if len(rep.Buckets) != 60 || rep.Buckets[59].Count+rep.Buckets[58].Count != 200 {
		t.Errorf("buckets: %d, last two %+v", len(rep.Buckets), rep.Buckets[58:])
	}
	for _, w := range []string{"24h", "7d"} {
		waitCount(t, api+"/stats/requests?window="+w, 200)
	}

	t.Run("client errors name the field", func(t *testing.T) {
		for _, c := range []struct {
			desc, method, path string
			body               any
			code               int
			field              string
		}{
			{"bad window", "GET", "/stats/requests?window=1y", nil, 400, "window"},
			{"bad by", "GET", "/stats/requests?by=color", nil, 400, "by"},
			{"bad event", "POST", "/events", events(5, now, func(i int, e map[string]any) {
				if i == 3 {
					e["status"] = 42
				}
			}), 400, "events[3].status"},
		} {
			t.Run(c.desc, func(t *testing.T) {
				code, b, _ := call(t, c.method, api+c.path, "edge", "", c.body)
				if code != c.code || !strings.Contains(string(b), `"field":"`+c.field+`"`) {
					t.Errorf("%d %s, want %d naming %s", code, b, c.code, c.field)
				}
			})
		}
	})

	t.Run("metrics", func(t *testing.T) {
		code, b, _ := call(t, "GET", p.URL("admin")+"/metrics", "", "", nil)
		if code != 200 {
			t.Fatalf("metrics: %d", code)
		}
		for _, want := range []string{
			"petmesh_stats_events_ingested_total 200",
			`petmesh_stats_events_dropped_total{reason="queue_full"} 0`,
			"petmesh_stats_ingest_batch_duration_seconds_count",
			"http_server_request_duration_seconds",
		} {
			if !strings.Contains(string(b), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})

	t.Run("openapi", func(t *testing.T) {
		code, b, _ := call(t, "GET", api+"/openapi.json", "", "", nil)
		if code != 200 || !strings.Contains(string(b), `"openapi": "3.`) {
			t.Errorf("openapi: %d %.80s", code, b)
		}
	})

	// Events queued when SIGTERM arrives are written before exit: with a
	// one-hour flush interval only the shutdown flush can store them.
	p.Kill()
	p2 := startStats(t, dir, "STATS_FLUSH_INTERVAL=1h")
	code, b, _ = call(t, "POST", p2.URL("http")+"/events", "edge", "", events(50, now, nil))
	if code != http.StatusAccepted {
		t.Fatalf("POST /events: %d %s", code, b)
	}
	if err := p2.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p2.Wait(30 * time.Second); err != nil {
		t.Fatalf("stats exited with %v\n%s", err, p2.Output())
	}
	p3 := startStats(t, dir)
	waitCount(t, p3.URL("http")+"/stats/requests?window=1h", 250)
}

func TestBinaryBadConfig(t *testing.T) {
	bin := testutil.BuildBinary(t, "./services/stats/cmd/stats")
	p := testutil.Start(t, bin, testutil.StartOptions{Env: []string{"STATS_RETENTION=10m", "STATS_ADDR=127.0.0.1:0", "STATS_ADMIN_ADDR=127.0.0.1:0"}})
	err := p.Wait(30 * time.Second)
	if err == nil {
		t.Fatal("stats started with a 10m retention")
	}
	if !strings.Contains(p.Output(), "-retention") {
		t.Errorf("error does not name -retention:\n%s", p.Output())
	}
}

// TestBinaryWithRealPets runs stats against a real pets binary seeded
// through POST /pets:batchUpsert.
func TestBinaryWithRealPets(t *testing.T) {
	dir := t.TempDir()
	petsBin := testutil.BuildBinary(t, "./services/pets/cmd/pets")
	pets := testutil.Start(t, petsBin, testutil.StartOptions{
		Env: []string{
			"PETS_ADDR=127.0.0.1:0", "PETS_ADMIN_ADDR=127.0.0.1:0",
			"PETS_DB=" + filepath.Join(dir, "pets.db"),
		},
		Listeners: []string{"http", "admin"},
	})
	const n = 230 // three pages of 100
	var input []map[string]any
	for i := range n {
		species, breed, age, size, status, state := "Dog", "Labrador Retriever", "Young", "Large", "adoptable", "NJ"
		if i%2 == 1 {
			species, breed, age, size, status, state = "Cat", "Tabby", "Senior", "Small", "adopted", "NY"
		}
		input = append(input, map[string]any{
			"source": "petfinder", "source_id": strconv.Itoa(i), "name": "Pet " + strconv.Itoa(i),
			"species": species, "breeds": map[string]any{"primary": breed, "secondary": "", "mixed": false},
			"age": age, "gender": "Female", "size": size, "status": status,
			"location": map[string]any{"city": "", "state": state, "postcode": "", "country": "US"},
		})
	}
	code, b, _ := call(t, "POST", pets.URL("http")+"/pets:batchUpsert", "sync", "sync", map[string]any{"pets": input})
	if code != 200 {
		t.Fatalf("seed pets: %d %s", code, b)
	}

	p := startStats(t, dir, "STATS_PETS_URL="+pets.URL("http"), "STATS_PETS_CACHE_TTL=1h")
	api := p.URL("http")
	now := time.Now().UTC()
	code, b, _ = call(t, "POST", api+"/events", "edge", "", events(6, now, func(i int, e map[string]any) {
		e["route"], e["path"] = "pets-get", "/pets/pet_b"
		if i < 2 {
			e["path"] = "/pets/pet_a"
		}
		if i == 5 {
			e["path"], e["pet_id"] = "/other", "pet_a"
		}
	}))
	if code != http.StatusAccepted {
		t.Fatalf("POST /events: %d %s", code, b)
	}
	waitCount(t, api+"/stats/requests", 6)

	var body struct {
		Total      int            `json:"total"`
		BySpecies  map[string]int `json:"by_species"`
		ByBreed    map[string]int `json:"by_breed"`
		ByAge      map[string]int `json:"by_age"`
		BySize     map[string]int `json:"by_size"`
		ByStatus   map[string]int `json:"by_status"`
		ByState    map[string]int `json:"by_state"`
		MostViewed []struct {
			PetID string `json:"pet_id"`
			Views int    `json:"views"`
		} `json:"most_viewed"`
	}
	code, b, _ = call(t, "GET", api+"/stats/pets?top=5", "alice", "viewer", nil)
	if code != 200 {
		t.Fatalf("GET /stats/pets: %d %s", code, b)
	}
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		desc string
		got  any
		want any
	}{
		{"total", body.Total, n},
		{"species", body.BySpecies, map[string]int{"Dog": 115, "Cat": 115}},
		{"breed", body.ByBreed, map[string]int{"Labrador Retriever": 115, "Tabby": 115}},
		{"age", body.ByAge, map[string]int{"Young": 115, "Senior": 115}},
		{"size", body.BySize, map[string]int{"Large": 115, "Small": 115}},
		{"status", body.ByStatus, map[string]int{"adoptable": 115, "adopted": 115}},
		{"state", body.ByState, map[string]int{"NJ": 115, "NY": 115}},
		{"most viewed", fmt.Sprint(body.MostViewed), "[{pet_a 3} {pet_b 3}]"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
				t.Errorf("got %v, want %v", c.got, c.want)
			}
		})
	}

	t.Run("pets down is a 503 naming pets", func(t *testing.T) {
		pets.Kill()
		p2 := startStats(t, t.TempDir(), "STATS_PETS_URL="+pets.URL("http"))
		code, b, _ := call(t, "GET", p2.URL("http")+"/stats/pets", "alice", "viewer", nil)
		if code != http.StatusServiceUnavailable || !strings.Contains(string(b), "pets") {
			t.Errorf("%d %s, want 503 naming pets", code, b)
		}
	})
}
