package stats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ptestutil "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/services/stats/store"
)

// fakePets serves GET /pets of the pets contract over a fixed list, with an
// opaque offset cursor, and checks the identity headers stats must send.
type fakePets struct {
	t        testing.TB
	pets     []map[string]any
	requests atomic.Int64
	// gate, when set, holds every request until closed.
	gate chan struct{}
	fail atomic.Bool
}

func (f *fakePets) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	if r.Method != "GET" || r.URL.Path != "/pets" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Header.Get("X-Petmesh-Subject") != "stats" || r.Header.Get("X-Petmesh-Roles") != "viewer" {
		f.t.Errorf("identity headers %q %q", r.Header.Get("X-Petmesh-Subject"), r.Header.Get("X-Petmesh-Roles"))
	}
	if r.Header.Get("Traceparent") == "" {
		f.t.Error("no traceparent header: client transport is not instrumented")
	}
	if f.fail.Load() {
		http.Error(w, `{"error":{"code":"internal","message":"boom"}}`, http.StatusInternalServerError)
		return
	}
	limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
	if err != nil || limit < 1 || limit > 100 {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":{"code":"invalid_argument","message":"bad limit","field":"limit"}}`))
		return
	}
	off := 0
	if c := r.URL.Query().Get("cursor"); c != "" {
		off, _ = strconv.Atoi(c[len("c"):])
	}
	end := min(off+limit, len(f.pets))
	next := ""
	if end < len(f.pets) {
		next = "c" + strconv.Itoa(end)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"pets": f.pets[off:end], "next_cursor": next})
}

func makePet(i int, species, breed, age, size, status, state string) map[string]any {
	return map[string]any{
		"id": fmt.Sprintf("pet_%d", i), "source": "petfinder", "source_id": strconv.Itoa(i), "name": "P",
		"species": species, "breeds": map[string]any{"primary": breed, "secondary": "", "mixed": false},
		"age": age, "gender": "Male", "size": size, "colors": map[string]any{"primary": "", "secondary": "", "tertiary": ""},
		"status": status, "description": "", "photos": []string{}, "organization_id": "NJ1",
		"location":     map[string]any{"city": "", "state": state, "postcode": "", "country": "US"},
		"published_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-02T10:00:00Z",
	}
}

func startFakePets(t *testing.T, n int) (*fakePets, string) {
	f := &fakePets{t: t}
	for i := range n {
		switch i % 3 {
		case 0:
			f.pets = append(f.pets, makePet(i, "Dog", "Labrador Retriever", "Young", "Large", "adoptable", "NJ"))
		case 1:
			f.pets = append(f.pets, makePet(i, "Cat", "Tabby", "Adult", "Small", "adopted", "NY"))
		default:
			f.pets = append(f.pets, makePet(i, "Dog", "", "Senior", "Medium", "adoptable", ""))
		}
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

type petsBody struct {
	PetCounts
	MostViewed       []store.PetViews `json:"most_viewed"`
	MostViewedWindow string           `json:"most_viewed_window"`
}

func TestStatsPets(t *testing.T) {
	fake, url := startFakePets(t, 250) // three pages of 100
	clk := &clock{t: testNow}
	cfg := testConfig(t)
	cfg.PetsURL = url
	cfg.PetsCacheTTL = time.Minute
	svc := newService(t, cfg, clk)
	h := svc.Handler()
	ctx := context.Background()
	var evs []store.Event
	for i, pet := range []string{"pet_1", "pet_2", "pet_2", "pet_3", "pet_2", "pet_3"} {
		e := store.Event{Time: testNow, Route: "pets-get", Method: "GET", Path: "/pets/" + pet, Status: 200, LatencyMS: 1}
		if i == 0 {
			e.Path, e.PetID = "/other", pet // counted through pet_id
		}
		evs = append(evs, e)
	}
	if err := svc.Store.Write(ctx, evs); err != nil {
		t.Fatal(err)
	}

	get := func(target string) petsBody {
		t.Helper()
		w := do(t, h, "GET", target, "alice", "viewer", "")
		if w.Code != 200 {
			t.Fatalf("GET %s: %d %s", target, w.Code, w.Body)
		}
		var b petsBody
		if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := get("/stats/pets?top=2")
	if got := fake.requests.Load(); got != 3 {
		t.Errorf("pets requests = %d, want 3 pages", got)
	}
	for _, c := range []struct {
		desc string
		got  map[string]int
		want map[string]int
	}{
		{"species", b.BySpecies, map[string]int{"Dog": 167, "Cat": 83}},
		{"breed", b.ByBreed, map[string]int{"Labrador Retriever": 84, "Tabby": 83, "unknown": 83}},
		{"age", b.ByAge, map[string]int{"Young": 84, "Adult": 83, "Senior": 83}},
		{"size", b.BySize, map[string]int{"Large": 84, "Small": 83, "Medium": 83}},
		{"status", b.ByStatus, map[string]int{"adoptable": 167, "adopted": 83}},
		{"state", b.ByState, map[string]int{"NJ": 84, "NY": 83, "unknown": 83}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
				t.Errorf("by %s = %v, want %v", c.desc, c.got, c.want)
			}
		})
	}
	if b.Total != 250 {
		t.Errorf("total = %d, want 250", b.Total)
	}
	wantTop := []store.PetViews{{PetID: "pet_2", Views: 3}, {PetID: "pet_3", Views: 2}}
	if fmt.Sprint(b.MostViewed) != fmt.Sprint(wantTop) || b.MostViewedWindow != "7d" {
		t.Errorf("most viewed = %v (%s), want %v (7d)", b.MostViewed, b.MostViewedWindow, wantTop)
	}

	t.Run("cached within the TTL", func(t *testing.T) {
		before := fake.requests.Load()
		clk.Add(59 * time.Second)
		get("/stats/pets")
		if got := fake.requests.Load(); got != before {
			t.Errorf("pets was asked again within the TTL (%d requests)", got-before)
		}
	})
	t.Run("refetched after the TTL", func(t *testing.T) {
		before := fake.requests.Load()
		clk.Add(2 * time.Second)
		get("/stats/pets")
		if got := fake.requests.Load() - before; got != 3 {
			t.Errorf("pets requests after expiry = %d, want 3", got)
		}
	})
	t.Run("pets failing is a 503 naming pets", func(t *testing.T) {
		fake.fail.Store(true)
		defer fake.fail.Store(false)
		clk.Add(2 * time.Minute)
		w := do(t, h, "GET", "/stats/pets", "alice", "viewer", "")
		if w.Code != http.StatusServiceUnavailable {
			t.Fatalf("status = %d, want 503: %s", w.Code, w.Body)
		}
		if e := decodeError(t, w); e.Error.Code != "unavailable" || !strings.Contains(e.Error.Message, "pets") {
			t.Errorf("error = %+v, want unavailable naming pets", e.Error)
		}
	})
	for _, c := range []struct {
		desc, target, field string
		code                int
	}{
		{"bad top", "/stats/pets?top=0", "top", 400},
		{"top too big", "/stats/pets?top=101", "top", 400},
		{"bad window", "/stats/pets?window=30d", "window", 400},
		{"unknown param", "/stats/pets?species=Dog", "species", 400},
	} {
		t.Run(c.desc, func(t *testing.T) {
			w := do(t, h, "GET", c.target, "alice", "viewer", "")
			if w.Code != c.code {
				t.Fatalf("status = %d, want %d", w.Code, c.code)
			}
			if e := decodeError(t, w); e.Error.Field != c.field {
				t.Errorf("field = %q, want %q", e.Error.Field, c.field)
			}
		})
	}
	t.Run("no identity", func(t *testing.T) {
		if w := do(t, h, "GET", "/stats/pets", "", "", ""); w.Code != 401 {
			t.Errorf("status = %d, want 401", w.Code)
		}
	})
}

func TestStatsPetsUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	cfg := testConfig(t)
	cfg.PetsURL = url
	svc := newService(t, cfg, nil)
	w := do(t, svc.Handler(), "GET", "/stats/pets", "alice", "viewer", "")
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status = %d, want 503: %s", w.Code, w.Body)
	}
	if e := decodeError(t, w); !strings.Contains(e.Error.Message, "pets") {
		t.Errorf("message %q does not name pets", e.Error.Message)
	}
}

func TestStatsPetsSingleflight(t *testing.T) {
	fake, url := startFakePets(t, 10)
	fake.gate = make(chan struct{})
	cfg := testConfig(t)
	cfg.PetsURL = url
	svc := newService(t, cfg, nil)
	h := svc.Handler()
	const callers = 8
	var wg sync.WaitGroup
	codes := make([]int, callers)
	for i := range callers {
		wg.Go(func() { codes[i] = do(t, h, "GET", "/stats/pets", "alice", "viewer", "").Code })
	}
	// Wait until the one fetch has reached pets; the others must be
	// waiting on it rather than fetching themselves.
	ptestutil.Eventually(t, 10*time.Second, func() error {
		if fake.requests.Load() == 0 {
			return errors.New("no request reached pets yet")
		}
		return nil
	})
	close(fake.gate)
	wg.Wait()
	for i, c := range codes {
		if c != 200 {
			t.Errorf("caller %d: status %d", i, c)
		}
	}
	if got := fake.requests.Load(); got != 1 {
		t.Errorf("pets requests = %d, want 1 shared fetch", got)
	}
}

func TestPetsPagingLoopDetected(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"pets":[],"next_cursor":"same"}`))
	}))
	defer srv.Close()
	cfg := testConfig(t)
	cfg.PetsURL = srv.URL
	svc := newService(t, cfg, nil)
	_, err := svc.Server.pets.Counts(context.Background())
	if de, ok := isDependency(err); !ok || de.Dependency != "pets" {
		t.Fatalf("err = %v, want a pets dependency error", err)
	}
}
