package store_test

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/petmesh/petmesh/services/pets/store"
)

// TestListQueryKey checks that queries List treats alike share a key,
// that queries selecting other pages do not, and, against a real store,
// that equal keys do select equal pages.
func TestListQueryKey(t *testing.T) {
	base := store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20}
	same := []struct {
		desc string
		q    store.ListQuery
	}{
		{desc: "case and spaces of filters", q: store.ListQuery{Species: " dOG ", Status: "ADOPTABLE", Limit: 20}},
		{desc: "default limit", q: store.ListQuery{Species: "dog", Status: "adoptable"}},
		{desc: "default sort", q: store.ListQuery{Species: "dog", Status: "adoptable", Sort: store.DefaultSort, Limit: 20}},
	}
	other := []struct {
		desc string
		q    store.ListQuery
	}{
		{desc: "no filter", q: store.ListQuery{Limit: 20}},
		{desc: "other limit", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 21}},
		{desc: "other sort", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20, Sort: store.SortNameAsc}},
		{desc: "cursor", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20, Cursor: "abc"}},
		{desc: "value moved to another field", q: store.ListQuery{Breed: "Dog", Status: "adoptable", Limit: 20}},
		{desc: "free text", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20, Q: "dog"}},
		{desc: "length prefix cannot be forged", q: store.ListQuery{Species: "Dog0:", Limit: 20}},
		{desc: "city", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20, City: "Newark"}},
		{desc: "state", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20, State: "NJ"}},
		{desc: "age", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20, Age: "Baby"}},
		{desc: "gender", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20, Gender: "Male"}},
		{desc: "size", q: store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20, Size: "Small"}},
	}
	key := string(base.AppendKey(nil))
	st, err := store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "pets.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := st.Upsert(t.Context(), fixtures(60)); err != nil {
		t.Fatal(err)
	}
	want, err := st.List(t.Context(), base)
	if err != nil {
		t.Fatal(err)
	}
	if len(want.Pets) == 0 {
		t.Fatal("base query selects nothing")
	}
	for _, tc := range same {
		t.Run(tc.desc, func(t *testing.T) {
			if k := string(tc.q.AppendKey(nil)); k != key {
				t.Fatalf("key %q, want %q", k, key)
			}
			got, err := st.List(t.Context(), tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids(got.Pets), ids(want.Pets)) || got.NextCursor != want.NextCursor {
				t.Fatal("same key, other page")
			}
		})
	}
	seen := map[string]string{key: "base"}
	for _, tc := range other {
		t.Run(tc.desc, func(t *testing.T) {
			k := string(tc.q.AppendKey(nil))
			if prev, ok := seen[k]; ok {
				t.Fatalf("key %q shared with %s", k, prev)
			}
			seen[k] = tc.desc
		})
	}
	// The key is appended to dst.
	if k := base.AppendKey([]byte("prefix")); string(k) != "prefix"+key {
		t.Fatalf("AppendKey(prefix) = %q", k)
	}
}
