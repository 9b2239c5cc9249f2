package pets_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil"
)

// testMaxBody is the body limit the binary runs with in these tests.
const testMaxBody = 256 << 10

// startPets builds and starts the real binary on loopback port 0 over the
// SQLite file db.
func startPets(t *testing.T, db string, extra ...string) *testutil.Process {
	t.Helper()
	bin := testutil.BuildBinary(t, "./services/pets/cmd/pets")
	args := append([]string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-db", "sqlite://" + db,
		"-max-body", fmt.Sprint(testMaxBody)}, extra...)
	return testutil.Start(t, bin, testutil.StartOptions{
		Args:      args,
		Env:       []string{"OTEL_TRACES_EXPORTER=none"},
		Listeners: []string{"http", "admin"},
	})
}

// client talks to one pets process.
type client struct {
	t    *testing.T
	base string
	hc   *http.Client
}

func newClient(t *testing.T, base string) *client {
	return &client{t: t, base: base, hc: &http.Client{Timeout: 30 * time.Second}}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// errorField returns error.field of a JSON error body.
func (r response) errorField() string {
	var e struct {
		Error struct {
			Code, Message, Field string
		}
	}
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Field
}

func (c *client) do(method, path string, header http.Header, body io.Reader) response {
	c.t.Helper()
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// json does a request with a JSON body and decodes a 2xx answer into out.
func (c *client) json(method, path string, header http.Header, in, out any, want int) response {
	c.t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			c.t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	r := c.do(method, path, header, body)
	if r.status != want {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			c.t.Fatalf("%s %s: decode %s: %v", method, path, r.body, err)
		}
	}
	return r
}

func roles(rs string) http.Header {
	h := http.Header{}
	h.Set("X-Petmesh-Subject", "test")
	h.Set("X-Petmesh-Roles", rs)
	return h
}

// pet returns a valid PetInput as a JSON object.
func pet(i int) map[string]any {
	return map[string]any{
		"source": "petfinder", "source_id": fmt.Sprint(1000 + i), "name": fmt.Sprintf("Pet %03d", i),
		"species": []string{"Dog", "Cat"}[i%2],
		"breeds":  map[string]any{"primary": "Beagle", "secondary": "", "mixed": false},
		"age":     "Young", "gender": "Female", "size": "Medium",
		"colors":      map[string]any{"primary": "Brown", "secondary": "", "tertiary": ""},
		"status":      []string{"adoptable", "adopted"}[i%2],
		"description": "A good pet", "photos": []string{"https://photos.example/1.jpg"},
		"organization_id": "NJ333",
		"location":        map[string]any{"city": "Newark", "state": "NJ", "postcode": "07101", "country": "US"},
		"published_at":    time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute).Format(time.RFC3339),
		"updated_at":      "2026-11-02T10:00:00Z",
	}
}

func petBatch(n int) []map[string]any {
	out := make([]map[string]any, n)
	for i := range out {
		out[i] = pet(i)
	}
	return out
}

type apiPet struct {
	ID       string `json:"id"`
	Source   string `json:"source"`
	SourceID string `json:"source_id"`
	Name     string `json:"name"`
	Species  string `json:"species"`
	Status   string `json:"status"`
	Photos   []string
}

type page struct {
	Pets       []apiPet `json:"pets"`
	NextCursor string   `json:"next_cursor"`
}

type counts struct{ Inserted, Updated, Unchanged int }

func TestBinaryAPI(t *testing.T) {
	p := startPets(t, filepath.Join(t.TempDir(), "pets.db"))
	c := newClient(t, p.URL("http"))
	sync := roles("sync")

	var got counts
	c.json("POST", "/pets:batchUpsert", sync, map[string]any{"pets": petBatch(25)}, &got, 200)
	if got != (counts{Inserted: 25}) {
		t.Fatalf("first upsert %+v", got)
	}
	c.json("POST", "/pets:batchUpsert", roles("viewer,admin"), map[string]any{"pets": petBatch(25)}, &got, 200)
	if got != (counts{Unchanged: 25}) {
		t.Fatalf("second upsert %+v", got)
	}
	changed := petBatch(2)
	changed[1]["name"] = "Renamed"
	c.json("POST", "/pets:batchUpsert", sync, map[string]any{"pets": changed}, &got, 200)
	if got != (counts{Updated: 1, Unchanged: 1}) {
		t.Fatalf("third upsert %+v", got)
	}

	// Pages over a real socket: no duplicates, no gaps, filters applied.
	seen := map[string]bool{}
	cursor := ""
	for i := 0; ; i++ {
		var pg page
		c.json("GET", "/pets?species=dog&status=ADOPTABLE&sort=published_at&limit=4&cursor="+url.QueryEscape(cursor), nil, nil, &pg, 200)
		for _, p := range pg.Pets {
			if seen[p.ID] || p.Species != "Dog" || p.Status != "adoptable" {
				t.Fatalf("page %d: unexpected pet %+v", i, p)
			}
			seen[p.ID] = true
		}
		if cursor = pg.NextCursor; cursor == "" {
			break
		}
	}
	if len(seen) != 13 {
		t.Fatalf("paged through %d dogs, want 13", len(seen))
	}

	var first page
	c.json("GET", "/pets?limit=1&sort=name", nil, nil, &first, 200)
	if len(first.Pets) != 1 || first.Pets[0].Name != "Pet 000" {
		t.Fatalf("first by name: %+v", first)
	}
	var one apiPet
	c.json("GET", "/pets/"+first.Pets[0].ID, nil, nil, &one, 200)
	if one.SourceID != "1000" || len(one.Photos) != 1 {
		t.Fatalf("get: %+v", one)
	}
	c.json("DELETE", "/pets/"+one.ID, roles("admin"), nil, nil, 204)
	c.json("GET", "/pets/"+one.ID, nil, nil, nil, 404)

	var health map[string]string
	c.json("GET", "/health", nil, nil, &health, 200)
	if health["status"] != "ok" {
		t.Fatalf("health: %v", health)
	}
	var doc map[string]any
	c.json("GET", "/openapi.json", nil, nil, &doc, 200)
	if doc["openapi"] == nil {
		t.Fatalf("openapi.json: %v", doc)
	}

	admin := newClient(t, p.URL("admin"))
	admin.json("GET", "/readyz", nil, nil, nil, 200)
	m := admin.do("GET", "/metrics", nil, nil)
	for _, want := range []string{
		"petmesh_pets 24",
		`petmesh_pets_store_query_duration_seconds_count{operation="list",result="ok"}`,
		`petmesh_pets_upserted_total{result="inserted"} 25`,
		`http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/pets"`,
		`petmesh_pets_list_cache_lookups_total{result="miss"}`,
		`petmesh_pets_list_cache_evictions_total{reason="stale"}`,
		`petmesh_pets_list_cache_entries `,
	} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// SIGTERM drains and exits cleanly.
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestBinaryBadInput sends every kind of client mistake to the real
// binary: each must be a 4xx JSON error naming the field, never a 500.
func TestBinaryBadInput(t *testing.T) {
	p := startPets(t, filepath.Join(t.TempDir(), "pets.db"))
	c := newClient(t, p.URL("http"))
	var got counts
	c.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": petBatch(5)}, &got, 200)
	var byName page
	c.json("GET", "/pets?sort=name&limit=2", nil, nil, &byName, 200)
	if byName.NextCursor == "" {
		t.Fatal("no cursor")
	}
	existing := byName.Pets[0].ID

	batch := func(mutate func([]map[string]any) []map[string]any) string {
		ps := mutate(petBatch(3))
		b, _ := json.Marshal(map[string]any{"pets": ps})
		return string(b)
	}
	set := func(i int, k string, v any) func([]map[string]any) []map[string]any {
		return func(ps []map[string]any) []map[string]any { ps[i][k] = v; return ps }
	}
	del := func(i int, k string) func([]map[string]any) []map[string]any {
		return func(ps []map[string]any) []map[string]any { delete(ps[i], k); return ps }
	}
	huge := `{"pets":[{"description":"` + strings.Repeat("x", testMaxBody) + `"}]}`
	sync, none := roles("sync"), http.Header{}

	tests := []struct {
		desc      string
		method    string
		path      string
		header    http.Header
		body      string
		chunked   bool
		wantCode  int
		wantField string
	}{
		{desc: "bad age", method: "GET", path: "/pets?age=puppy", wantCode: 400, wantField: "age"},
		{desc: "bad gender", method: "GET", path: "/pets?gender=x", wantCode: 400, wantField: "gender"},
		{desc: "bad size", method: "GET", path: "/pets?size=huge", wantCode: 400, wantField: "size"},
		{desc: "bad status", method: "GET", path: "/pets?status=sold", wantCode: 400, wantField: "status"},
		{desc: "limit zero", method: "GET", path: "/pets?limit=0", wantCode: 400, wantField: "limit"},
		{desc: "limit too big", method: "GET", path: "/pets?limit=101", wantCode: 400, wantField: "limit"},
		{desc: "limit negative", method: "GET", path: "/pets?limit=-1", wantCode: 400, wantField: "limit"},
		{desc: "limit not a number", method: "GET", path: "/pets?limit=ten", wantCode: 400, wantField: "limit"},
		{desc: "limit fraction", method: "GET", path: "/pets?limit=1.5", wantCode: 400, wantField: "limit"},
		{desc: "limit overflow", method: "GET", path: "/pets?limit=99999999999999999999999", wantCode: 400, wantField: "limit"},
		{desc: "bad sort", method: "GET", path: "/pets?sort=price", wantCode: 400, wantField: "sort"},
		{desc: "sort with plus", method: "GET", path: "/pets?sort=%2Bname", wantCode: 400, wantField: "sort"},
		{desc: "garbage cursor", method: "GET", path: "/pets?cursor=%21%21%21", wantCode: 400, wantField: "cursor"},
		{desc: "base64 garbage cursor", method: "GET", path: "/pets?cursor=aGVsbG8", wantCode: 400, wantField: "cursor"},
		{desc: "cursor of another sort", method: "GET", path: "/pets?sort=-name&cursor=" + byName.NextCursor, wantCode: 400, wantField: "cursor"},
		{desc: "cursor of name sort with default sort", method: "GET", path: "/pets?cursor=" + byName.NextCursor, wantCode: 400, wantField: "cursor"},
		{desc: "huge cursor", method: "GET", path: "/pets?cursor=" + strings.Repeat("A", 2000), wantCode: 400, wantField: "cursor"},
		{desc: "unknown query parameter", method: "GET", path: "/pets?colour=red", wantCode: 400, wantField: "colour"},
		{desc: "repeated parameter", method: "GET", path: "/pets?species=Dog&species=Cat", wantCode: 400, wantField: "species"},
		{desc: "q too long", method: "GET", path: "/pets?q=" + strings.Repeat("a", 201), wantCode: 400, wantField: "q"},
		{desc: "unknown id", method: "GET", path: "/pets/pet_000000000000000000000000", wantCode: 404},
		{desc: "malformed id", method: "GET", path: "/pets/rex", wantCode: 404},
		{desc: "unknown path", method: "GET", path: "/dogs", wantCode: 404},
		{desc: "wrong method", method: "PUT", path: "/pets", wantCode: 405},
		{desc: "wrong method on upsert", method: "GET", path: "/pets:batchUpsert", wantCode: 405},
		{desc: "delete without identity", method: "DELETE", path: "/pets/" + existing, header: none, wantCode: 401},
		{desc: "delete as sync", method: "DELETE", path: "/pets/" + existing, header: sync, wantCode: 403},
		{desc: "delete unknown as admin", method: "DELETE", path: "/pets/pet_000000000000000000000000", header: roles("admin"), wantCode: 404},
		{desc: "upsert without identity", method: "POST", path: "/pets:batchUpsert", header: none, body: batch(nil2), wantCode: 401},
		{desc: "upsert as viewer", method: "POST", path: "/pets:batchUpsert", header: roles("viewer"), body: batch(nil2), wantCode: 403},
		{desc: "malformed json", method: "POST", path: "/pets:batchUpsert", header: sync, body: `{"pets":[`, wantCode: 400, wantField: "body"},
		{desc: "empty body", method: "POST", path: "/pets:batchUpsert", header: sync, body: "", wantCode: 400, wantField: "body"},
		{desc: "trailing data", method: "POST", path: "/pets:batchUpsert", header: sync, body: `{"pets":[]} {}`, wantCode: 400, wantField: "body"},
		{desc: "unknown top-level field", method: "POST", path: "/pets:batchUpsert", header: sync, body: `{"pets":[],"dry_run":true}`, wantCode: 400, wantField: "dry_run"},
		{desc: "pets missing", method: "POST", path: "/pets:batchUpsert", header: sync, body: `{}`, wantCode: 400, wantField: "pets"},
		{desc: "pets not an array", method: "POST", path: "/pets:batchUpsert", header: sync, body: `{"pets":{}}`, wantCode: 400, wantField: "pets"},
		{desc: "pet not an object", method: "POST", path: "/pets:batchUpsert", header: sync, body: `{"pets":[42]}`, wantCode: 400, wantField: "pets[0]"},
		{desc: "too many pets", method: "POST", path: "/pets:batchUpsert", header: sync, body: `{"pets":[` + strings.Repeat(`{},`, 500) + `{}]}`, wantCode: 400, wantField: "pets"},
		{desc: "unknown pet field", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(2, "colour", "red")), wantCode: 400, wantField: "pets[2].colour"},
		{desc: "id is not input", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "id", "pet_1")), wantCode: 400, wantField: "pets[0].id"},
		{desc: "field in wrong case", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(1, "Name", "x")), wantCode: 400, wantField: "pets[1].Name"},
		{desc: "unknown nested field", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "breeds", map[string]any{"primary": "x", "tertiary": "y"})), wantCode: 400, wantField: "pets[0].breeds.tertiary"},
		{desc: "nested not an object", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "location", "Newark")), wantCode: 400, wantField: "pets[0].location"},
		{desc: "missing source", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(del(1, "source")), wantCode: 400, wantField: "pets[1].source"},
		{desc: "missing source_id", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(del(0, "source_id")), wantCode: 400, wantField: "pets[0].source_id"},
		{desc: "blank name", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(2, "name", "  ")), wantCode: 400, wantField: "pets[2].name"},
		{desc: "missing species", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(del(0, "species")), wantCode: 400, wantField: "pets[0].species"},
		{desc: "bad pet age", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(1, "age", "Puppy")), wantCode: 400, wantField: "pets[1].age"},
		{desc: "bad pet gender", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "gender", "M")), wantCode: 400, wantField: "pets[0].gender"},
		{desc: "bad pet size", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "size", "XL")), wantCode: 400, wantField: "pets[0].size"},
		{desc: "bad pet status", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(2, "status", "sold")), wantCode: 400, wantField: "pets[2].status"},
		{desc: "wrong type", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "name", 7)), wantCode: 400, wantField: "pets[0].name"},
		{desc: "wrong nested type", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "breeds", map[string]any{"mixed": "yes"})), wantCode: 400, wantField: "pets[0].breeds.mixed"},
		{desc: "photos not an array", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "photos", "x.jpg")), wantCode: 400, wantField: "pets[0].photos"},
		{desc: "photo not a url", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "photos", []string{"https://a/b.jpg", "javascript:alert(1)"})), wantCode: 400, wantField: "pets[0].photos[1]"},
		{desc: "bad published_at", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(1, "published_at", "yesterday")), wantCode: 400, wantField: "pets[1].published_at"},
		{desc: "numeric updated_at", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(1, "updated_at", 12)), wantCode: 400, wantField: "pets[1].updated_at"},
		{desc: "description too long", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "description", strings.Repeat("d", 10001))), wantCode: 400, wantField: "pets[0].description"},
		{desc: "name too long", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(0, "name", strings.Repeat("n", 201))), wantCode: 400, wantField: "pets[0].name"},
		{desc: "duplicate key in batch", method: "POST", path: "/pets:batchUpsert", header: sync, body: batch(set(2, "source_id", "1000")), wantCode: 400, wantField: "pets[2].source_id"},
		{desc: "body over limit", method: "POST", path: "/pets:batchUpsert", header: sync, body: huge, wantCode: 413, wantField: "body"},
		{desc: "chunked body over limit", method: "POST", path: "/pets:batchUpsert", header: sync, body: huge, chunked: true, wantCode: 413, wantField: "body"},
		{desc: "wrong content type", method: "POST", path: "/pets:batchUpsert", header: http.Header{"Content-Type": {"text/plain"}, "X-Petmesh-Subject": {"s"}, "X-Petmesh-Roles": {"sync"}}, body: `{"pets":[]}`, wantCode: 415, wantField: "Content-Type"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			c := newClient(t, c.base)
			var body io.Reader
			if tc.method == "POST" {
				body = strings.NewReader(tc.body)
				if tc.chunked {
					body = io.MultiReader(body) // hides the length: chunked encoding
				}
			}
			r := c.do(tc.method, tc.path, tc.header, body)
			if r.status != tc.wantCode {
				t.Fatalf("status %d, want %d: %s", r.status, tc.wantCode, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q, want application/json", ct)
			}
			if f := r.errorField(); f != tc.wantField {
				t.Errorf("field %q, want %q: %s", f, tc.wantField, r.body)
			}
		})
	}
	// Nothing above wrote anything.
	var all page
	c.json("GET", "/pets?limit=100", nil, nil, &all, 200)
	if len(all.Pets) != 5 {
		t.Fatalf("%d pets after bad requests, want 5", len(all.Pets))
	}
}

// nil2 leaves a batch as it is.
func nil2(ps []map[string]any) []map[string]any { return ps }

// TestBinarySharedSQLite runs two processes on one SQLite file: writes
// through either are read through the other, including concurrent ones.
func TestBinarySharedSQLite(t *testing.T) {
	db := filepath.Join(t.TempDir(), "shared.db")
	// (Migrations racing at start are covered by the store tests.)
	a, b := startPets(t, db), startPets(t, db)
	var wg sync.WaitGroup
	ca, cb := newClient(t, a.URL("http")), newClient(t, b.URL("http"))

	var got counts
	var pg page
	// b caches the empty page (its list cache is on by default): a's
	// commit must invalidate it.
	cb.json("GET", "/pets?limit=100", nil, nil, &pg, 200)
	cb.json("GET", "/pets?limit=100", nil, nil, &pg, 200)
	if len(pg.Pets) != 0 {
		t.Fatalf("b sees %d pets before any write", len(pg.Pets))
	}
	if m := newClient(t, b.URL("admin")).do("GET", "/metrics", nil, nil); !strings.Contains(string(m.body), `petmesh_pets_list_cache_lookups_total{result="hit"} 1`) {
		t.Fatal("b's second read was not a cache hit")
	}
	ca.json("POST", "/pets:batchUpsert", roles("sync"), map[string]any{"pets": petBatch(10)}, &got, 200)
	cb.json("GET", "/pets?limit=100", nil, nil, &pg, 200)
	if len(pg.Pets) != 10 {
		t.Fatalf("b sees %d pets written via a, want 10", len(pg.Pets))
	}
	cb.json("DELETE", "/pets/"+pg.Pets[0].ID, roles("admin"), nil, nil, 204)
	ca.json("GET", "/pets/"+pg.Pets[0].ID, nil, nil, nil, 404)

	// Concurrent writers through both processes.
	errs := make(chan string, 40)
	for w := range 8 {
		cl := []*client{ca, cb}[w%2]
		wg.Go(func() {
			batch := make([]map[string]any, 0, 20)
			for i := range 20 {
				p := pet(100 + w*20 + i)
				batch = append(batch, p)
			}
			for range 3 {
				r := cl.do("POST", "/pets:batchUpsert", roles("sync"), strings.NewReader(mustJSON(map[string]any{"pets": batch})))
				if r.status != 200 {
					errs <- fmt.Sprintf("writer %d: %d %s", w, r.status, r.body)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	ca.json("GET", "/pets?limit=100", nil, nil, &pg, 200)
	total := len(pg.Pets)
	for pg.NextCursor != "" {
		cb.json("GET", "/pets?limit=100&cursor="+pg.NextCursor, nil, nil, &pg, 200)
		total += len(pg.Pets)
	}
	if total != 9+160 {
		t.Fatalf("%d pets, want %d", total, 9+160)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
