package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petmesh/petmesh/services/pets/store"
)

// factory returns a fresh, empty store; it is closed by the suite.
type factory func(t *testing.T) store.Store

var base = time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)

// fixture returns a deterministic pet i: species, status, age, gender and
// size cycle at different periods so that every filter combination has
// members; published and updated times are distinct except for ties that
// exercise the id tie-breaker.
func fixture(i int) store.PetInput {
	species := []string{"Dog", "Cat", "Rabbit"}[i%3]
	return store.PetInput{
		Source:   "petfinder",
		SourceID: fmt.Sprintf("%05d", i),
		Name:     fmt.Sprintf("Pet%03d", (i*37)%101),
		Species:  species,
		Breeds: store.Breeds{
			Primary:   []string{"Labrador Retriever", "Siamese", "Lop", "Beagle"}[i%4],
			Secondary: []string{"", "Poodle"}[i%2],
			Mixed:     i%2 == 1,
		},
		Age:         store.Ages[i%4],
		Gender:      store.Genders[i%3],
		Size:        store.Sizes[i%4],
		Colors:      store.Colors{Primary: "Black"},
		Status:      store.Statuses[i%3],
		Description: fmt.Sprintf("Friendly animal number %d", i),
		Photos:      []string{fmt.Sprintf("https://photos.example/%d.jpg", i)},
		Location:    store.Location{City: []string{"Newark", "Trenton"}[i%2], State: "NJ", Postcode: "07101", Country: "US"},
		// Pairs of pets share a published_at to exercise the id tie-break.
		PublishedAt: base.Add(time.Duration(i/2) * time.Hour),
		UpdatedAt:   base.Add(time.Duration((i*7)%50) * time.Minute),
	}
}

func fixtures(n int) []store.PetInput {
	out := make([]store.PetInput, n)
	for i := range out {
		out[i] = fixture(i)
	}
	return out
}

func ids(pets []store.Pet) []string {
	out := make([]string, len(pets))
	for i, p := range pets {
		out[i] = p.ID
	}
	return out
}

// listAll pages through q and fails on duplicates.
func listAll(t *testing.T, ctx context.Context, s store.Store, q store.ListQuery) []store.Pet {
	t.Helper()
	var all []store.Pet
	seen := map[string]bool{}
	for page := 0; ; page++ {
		if page > 1000 {
			t.Fatal("pagination does not end")
		}
		res, err := s.List(ctx, q)
		if err != nil {
			t.Fatalf("list %+v: %v", q, err)
		}
		if len(res.Pets) > max(q.Limit, store.DefaultLimit) && q.Limit != 0 {
			t.Fatalf("page of %d pets for limit %d", len(res.Pets), q.Limit)
		}
		for _, p := range res.Pets {
			if seen[p.ID] {
				t.Fatalf("pet %s on two pages", p.ID)
			}
			seen[p.ID] = true
		}
		all = append(all, res.Pets...)
		if res.NextCursor == "" {
			return all
		}
		if len(res.Pets) == 0 {
			t.Fatal("empty page with a next cursor")
		}
		q.Cursor = res.NextCursor
	}
}

// expected returns the pets of in matching keep, in sort order.
func expected(in []store.PetInput, keep func(store.PetInput) bool, sort store.Sort) []string {
	type row struct {
		id string
		in store.PetInput
	}
	var rows []row
	for _, p := range in {
		if keep != nil && !keep(p) {
			continue
		}
		r := row{id: store.PetID(p.Source, p.SourceID), in: p}
		rows = append(rows, r)
	}
	col := strings.TrimPrefix(string(sort), "-")
	desc := strings.HasPrefix(string(sort), "-")
	slices.SortFunc(rows, func(a, b row) int {
		var c int
		switch col {
		case "name":
			c = strings.Compare(a.in.Name, b.in.Name)
		case "published_at":
			c = a.in.PublishedAt.Compare(b.in.PublishedAt)
		case "updated_at":
			c = a.in.UpdatedAt.Compare(b.in.UpdatedAt)
		}
		if c == 0 {
			c = strings.Compare(a.id, b.id)
		}
		if desc {
			c = -c
		}
		return c
	})
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.id
	}
	return out
}

// runConformance is the one suite every Store implementation must pass.
func runConformance(t *testing.T, newStore factory) {
	t.Run("upsert counts and idempotency", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		batch := fixtures(5)
		steps := []struct {
			desc string
			in   []store.PetInput
			want store.UpsertResult
		}{
			{desc: "first write inserts", in: batch, want: store.UpsertResult{Inserted: 5}},
			{desc: "same content is unchanged", in: batch, want: store.UpsertResult{Unchanged: 5}},
			{desc: "enum case differences are unchanged", in: func() []store.PetInput {
				b := slices.Clone(batch)
				b[0].Age, b[0].Status = strings.ToUpper(b[0].Age), strings.ToUpper(b[0].Status)
				return b
			}(), want: store.UpsertResult{Unchanged: 5}},
			{desc: "one changed, one new", in: func() []store.PetInput {
				b := slices.Clone(batch)
				b[2].Name = "Renamed"
				return append(b, fixture(5))
			}(), want: store.UpsertResult{Inserted: 1, Updated: 1, Unchanged: 4}},
			{desc: "empty batch", in: nil, want: store.UpsertResult{}},
		}
		for _, st := range steps {
			got, err := s.Upsert(ctx, st.in)
			if err != nil {
				t.Fatalf("%s: %v", st.desc, err)
			}
			if got != st.want {
				t.Fatalf("%s: got %+v, want %+v", st.desc, got, st.want)
			}
		}
		n, err := s.Count(ctx)
		if err != nil || n != 6 {
			t.Fatalf("count = %d, %v; want 6", n, err)
		}
		p, err := s.Get(ctx, store.PetID("petfinder", batch[2].SourceID))
		if err != nil || p.Name != "Renamed" {
			t.Fatalf("get renamed = %+v, %v", p, err)
		}
	})

	t.Run("get returns what was written", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		in := fixture(7)
		in.Age, in.Gender, in.Size, in.Status = "young", "FEMALE", "extra large", "Adoptable"
		in.PublishedAt = time.Date(2026, 1, 2, 3, 4, 5, 678901234, time.FixedZone("x", 3600))
		in.Photos = nil
		if _, err := s.Upsert(ctx, []store.PetInput{in}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, store.PetID(in.Source, in.SourceID))
		if err != nil {
			t.Fatal(err)
		}
		want := in
		want.Age, want.Gender, want.Size, want.Status = "Young", "Female", "Extra Large", "adoptable"
		want.PublishedAt = time.Date(2026, 1, 2, 2, 4, 5, 678901000, time.UTC)
		want.Photos = []string{}
		if got.ID != store.PetID(in.Source, in.SourceID) || !strings.HasPrefix(got.ID, "pet_") {
			t.Errorf("id = %q", got.ID)
		}
		if got.PublishedAt.Location() != time.UTC || got.UpdatedAt.Location() != time.UTC {
			t.Errorf("times not in UTC: %v %v", got.PublishedAt, got.UpdatedAt)
		}
		got.PublishedAt, got.UpdatedAt = got.PublishedAt.UTC(), got.UpdatedAt.UTC()
		if fmt.Sprintf("%+v", got.PetInput) != fmt.Sprintf("%+v", want) {
			t.Errorf("got  %+v\nwant %+v", got.PetInput, want)
		}
	})

	t.Run("missing times", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		in := fixture(1)
		in.PublishedAt, in.UpdatedAt = time.Time{}, time.Time{}
		before := time.Now().Add(-time.Second)
		if _, err := s.Upsert(ctx, []store.PetInput{in}); err != nil {
			t.Fatal(err)
		}
		id := store.PetID(in.Source, in.SourceID)
		first, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if first.PublishedAt.Before(before) || first.UpdatedAt.Before(before) {
			t.Fatalf("missing times not set to the write time: %v %v", first.PublishedAt, first.UpdatedAt)
		}
		res, err := s.Upsert(ctx, []store.PetInput{in})
		if err != nil || res != (store.UpsertResult{Unchanged: 1}) {
			t.Fatalf("rewrite = %+v, %v; want unchanged", res, err)
		}
		in.Name = "Changed"
		if _, err := s.Upsert(ctx, []store.PetInput{in}); err != nil {
			t.Fatal(err)
		}
		second, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !second.PublishedAt.Equal(first.PublishedAt) {
			t.Errorf("published_at changed on update without one: %v -> %v", first.PublishedAt, second.PublishedAt)
		}
		if second.UpdatedAt.Before(first.UpdatedAt) {
			t.Errorf("updated_at went back: %v -> %v", first.UpdatedAt, second.UpdatedAt)
		}
	})

	t.Run("not found and delete", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		if _, err := s.Upsert(ctx, fixtures(2)); err != nil {
			t.Fatal(err)
		}
		id := store.PetID("petfinder", fixture(0).SourceID)
		for _, tc := range []struct {
			desc string
			id   string
		}{
			{desc: "well-formed unknown id", id: store.PetID("petfinder", "nope")},
			{desc: "malformed id", id: "dog"},
			{desc: "empty id", id: ""},
		} {
			if _, err := s.Get(ctx, tc.id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s: get err = %v, want ErrNotFound", tc.desc, err)
			}
			if err := s.Delete(ctx, tc.id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s: delete err = %v, want ErrNotFound", tc.desc, err)
			}
		}
		if err := s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("get after delete: %v", err)
		}
		if err := s.Delete(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
		res, err := s.Upsert(ctx, fixtures(2))
		if err != nil || res != (store.UpsertResult{Inserted: 1, Unchanged: 1}) {
			t.Fatalf("re-upsert after delete = %+v, %v", res, err)
		}
	})

	t.Run("filters", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		all := fixtures(60)
		all[10].Description = "Loves 100% of people_and cats"
		all[11].Name = "ÉCLAIR"
		all[12].Location.City = "São Paulo"
		all[13].Location.State = "PA"
		if _, err := s.Upsert(ctx, all); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			desc string
			q    store.ListQuery
			keep func(store.PetInput) bool
		}{
			{desc: "none", q: store.ListQuery{}, keep: nil},
			{desc: "species case-insensitive", q: store.ListQuery{Species: "dOG"}, keep: func(p store.PetInput) bool { return p.Species == "Dog" }},
			{desc: "breed primary", q: store.ListQuery{Breed: "beagle"}, keep: func(p store.PetInput) bool { return p.Breeds.Primary == "Beagle" }},
			{desc: "breed secondary", q: store.ListQuery{Breed: "POODLE"}, keep: func(p store.PetInput) bool { return p.Breeds.Secondary == "Poodle" }},
			{desc: "age", q: store.ListQuery{Age: "senior"}, keep: func(p store.PetInput) bool { return p.Age == "Senior" }},
			{desc: "gender", q: store.ListQuery{Gender: "Female"}, keep: func(p store.PetInput) bool { return p.Gender == "Female" }},
			{desc: "size", q: store.ListQuery{Size: "extra large"}, keep: func(p store.PetInput) bool { return p.Size == "Extra Large" }},
			{desc: "status", q: store.ListQuery{Status: "ADOPTED"}, keep: func(p store.PetInput) bool { return p.Status == "adopted" }},
			{desc: "city", q: store.ListQuery{City: "trenton"}, keep: func(p store.PetInput) bool { return p.Location.City == "Trenton" }},
			{desc: "city unicode case", q: store.ListQuery{City: "SÃO PAULO"}, keep: func(p store.PetInput) bool { return p.Location.City == "São Paulo" }},
			{desc: "state", q: store.ListQuery{State: "nj"}, keep: func(p store.PetInput) bool { return p.Location.State == "NJ" }},
			{desc: "state no match", q: store.ListQuery{State: "NY"}, keep: func(store.PetInput) bool { return false }},
			{desc: "q in description", q: store.ListQuery{Q: "NUMBER 4"}, keep: func(p store.PetInput) bool {
				return strings.Contains(strings.ToLower(p.Description), "number 4")
			}},
			{desc: "q in name unicode", q: store.ListQuery{Q: "éclair"}, keep: func(p store.PetInput) bool { return p.Name == "ÉCLAIR" }},
			{desc: "q with like wildcards is literal", q: store.ListQuery{Q: "100% of people_and"}, keep: func(p store.PetInput) bool {
				return strings.Contains(p.Description, "100% of people_and")
			}},
			{desc: "q underscore literal", q: store.ListQuery{Q: "y_a"}, keep: func(store.PetInput) bool { return false }},
			{desc: "q percent literal", q: store.ListQuery{Q: "ly%number"}, keep: func(store.PetInput) bool { return false }},
			{desc: "two filters", q: store.ListQuery{Species: "Dog", Status: "adoptable"}, keep: func(p store.PetInput) bool {
				return p.Species == "Dog" && p.Status == "adoptable"
			}},
			{desc: "many filters", q: store.ListQuery{Species: "cat", Gender: "male", City: "newark", Breed: "siamese"}, keep: func(p store.PetInput) bool {
				return p.Species == "Cat" && p.Gender == "Male" && p.Location.City == "Newark" && (p.Breeds.Primary == "Siamese" || p.Breeds.Secondary == "Siamese")
			}},
		}
		for _, tc := range tests {
			t.Run(tc.desc, func(t *testing.T) {
				tc.q.Limit = 7
				got := ids(listAll(t, ctx, s, tc.q))
				want := expected(all, tc.keep, store.DefaultSort)
				if tc.keep != nil && len(want) == len(all) {
					t.Fatalf("filter keeps everything; test is vacuous")
				}
				if !slices.Equal(got, want) {
					t.Errorf("got %d pets %v\nwant %d pets %v", len(got), got, len(want), want)
				}
			})
		}
	})

	t.Run("sort orders and pagination", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		all := fixtures(57)
		if _, err := s.Upsert(ctx, all); err != nil {
			t.Fatal(err)
		}
		for _, sort := range store.Sorts {
			for _, limit := range []int{1, 10, 57, 100} {
				t.Run(fmt.Sprintf("%s limit %d", sort, limit), func(t *testing.T) {
					got := ids(listAll(t, ctx, s, store.ListQuery{Sort: sort, Limit: limit}))
					want := expected(all, nil, sort)
					if !slices.Equal(got, want) {
						t.Errorf("got  %v\nwant %v", got, want)
					}
				})
			}
		}
		t.Run("default sort and limit", func(t *testing.T) {
			res, err := s.List(ctx, store.ListQuery{})
			if err != nil {
				t.Fatal(err)
			}
			want := expected(all, nil, store.SortPublishedDesc)[:store.DefaultLimit]
			if !slices.Equal(ids(res.Pets), want) || res.NextCursor == "" {
				t.Errorf("got %v (next %q), want %v", ids(res.Pets), res.NextCursor, want)
			}
		})
		t.Run("filtered pages", func(t *testing.T) {
			keep := func(p store.PetInput) bool { return p.Species == "Dog" && p.Status == "adoptable" }
			got := ids(listAll(t, ctx, s, store.ListQuery{Species: "Dog", Status: "adoptable", Sort: store.SortNameAsc, Limit: 2}))
			if want := expected(all, keep, store.SortNameAsc); !slices.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
		t.Run("writes between pages neither skip nor repeat", func(t *testing.T) {
			res, err := s.List(ctx, store.ListQuery{Sort: store.SortPublishedAsc, Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			// A pet published before the cursor must not shift the next page.
			early := fixture(1000)
			early.PublishedAt = base.Add(-time.Hour)
			if _, err := s.Upsert(ctx, []store.PetInput{early}); err != nil {
				t.Fatal(err)
			}
			next, err := s.List(ctx, store.ListQuery{Sort: store.SortPublishedAsc, Limit: 10, Cursor: res.NextCursor})
			if err != nil {
				t.Fatal(err)
			}
			want := expected(all, nil, store.SortPublishedAsc)[10:20]
			if !slices.Equal(ids(next.Pets), want) {
				t.Errorf("second page %v, want %v", ids(next.Pets), want)
			}
		})
	})

	t.Run("bad queries", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		if _, err := s.Upsert(ctx, fixtures(5)); err != nil {
			t.Fatal(err)
		}
		first, err := s.List(ctx, store.ListQuery{Limit: 2, Sort: store.SortNameAsc})
		if err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			desc string
			q    store.ListQuery
			want error
		}{
			{desc: "garbage cursor", q: store.ListQuery{Cursor: "!!!"}, want: store.ErrBadCursor},
			{desc: "base64 but not json", q: store.ListQuery{Cursor: "aGVsbG8"}, want: store.ErrBadCursor},
			{desc: "json without id", q: store.ListQuery{Cursor: "eyJzIjoiLXB1Ymxpc2hlZF9hdCJ9"}, want: store.ErrBadCursor},
			{desc: "cursor of another sort", q: store.ListQuery{Cursor: first.NextCursor, Sort: store.SortUpdatedAsc}, want: store.ErrBadCursor},
			{desc: "cursor of another sort, default", q: store.ListQuery{Cursor: first.NextCursor}, want: store.ErrBadCursor},
			{desc: "unknown sort", q: store.ListQuery{Sort: "colour"}, want: store.ErrInvalid},
			{desc: "limit too big", q: store.ListQuery{Limit: 101}, want: store.ErrInvalid},
			{desc: "negative limit", q: store.ListQuery{Limit: -1}, want: store.ErrInvalid},
		}
		for _, tc := range tests {
			if _, err := s.List(ctx, tc.q); !errors.Is(err, tc.want) {
				t.Errorf("%s: err = %v, want %v", tc.desc, err, tc.want)
			}
		}
		if first.NextCursor == "" {
			t.Fatal("no cursor on a partial page")
		}
		if _, err := s.List(ctx, store.ListQuery{Limit: 2, Sort: store.SortNameAsc, Cursor: first.NextCursor}); err != nil {
			t.Errorf("valid cursor rejected: %v", err)
		}
	})

	t.Run("concurrent upserts", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		all := fixtures(40)
		var wg sync.WaitGroup
		results := make([]store.UpsertResult, 6)
		errs := make([]error, len(results))
		for w := range results {
			wg.Go(func() {
				// Overlapping batches in different orders.
				batch := slices.Clone(all[w*5 : w*5+15])
				if w%2 == 1 {
					slices.Reverse(batch)
				}
				results[w], errs[w] = s.Upsert(ctx, batch)
			})
		}
		wg.Wait()
		var total store.UpsertResult
		for i, err := range errs {
			if err != nil {
				t.Fatalf("worker %d: %v", i, err)
			}
			total.Inserted += results[i].Inserted
			total.Unchanged += results[i].Unchanged
			total.Updated += results[i].Updated
		}
		n, err := s.Count(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if int64(total.Inserted) != n || n != 40 || total.Updated != 0 || total.Inserted+total.Unchanged != 6*15 {
			t.Fatalf("count %d, totals %+v", n, total)
		}
	})

	t.Run("ping", func(t *testing.T) {
		if err := newStore(t).Ping(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
}
