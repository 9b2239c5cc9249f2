package store

import (
	"encoding/json"
	"testing"
	"time"
)

// slowCursor is the reference: the cursor from a full decode of doc.
func slowCursor(t testing.TB, sort Sort, doc []byte) cursor {
	t.Helper()
	var p Pet
	if err := json.Unmarshal(doc, &p); err != nil {
		t.Fatal(err)
	}
	c := cursor{Sort: sort, ID: p.ID}
	switch sort.column() {
	case "name":
		c.Name = p.Name
	case "published_at":
		c.Time = p.PublishedAt.UnixMicro()
	case "updated_at":
		c.Time = p.UpdatedAt.UnixMicro()
	}
	return c
}

func docOf(t testing.TB, in PetInput) []byte {
	t.Helper()
	r := newUpsertRow(normalize(in), time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC))
	return r.docArg(dialect{}).([]byte)
}

// TestCursorFromDocFast checks the shortcut against a full decode on
// docs whose strings try to look like the keys it searches for.
func TestCursorFromDocFast(t *testing.T) {
	tricky := []string{
		"plain", "", `with "quotes"`, `"name":"fake"`, `,"name":"fake"`, `\"name\":\"x`,
		`,"published_at":"2001-01-01T00:00:00Z"`, `,"updated_at":"1999-01-01T00:00:00Z"}`,
		"ünïcødé 🐕", "<b>&amp;</b>", `back\slash\`, "tab\tnew\nline", "\u2028",
	}
	for i, s := range tricky {
		in := PetInput{
			Source: "src" + s, SourceID: s + "id", Name: s, Species: "Dog",
			Description: s, Photos: []string{"https://x.example/" + s},
			Location:    Location{City: s, State: s},
			Breeds:      Breeds{Primary: s},
			PublishedAt: time.Date(2024, 5, 6, 7, 8, 9, i*1000, time.UTC),
		}
		if i%2 == 0 {
			in.UpdatedAt = time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 3600))
		}
		doc := docOf(t, in)
		for _, sort := range Sorts {
			got, ok := cursorFromDocFast(sort, doc)
			if !ok {
				t.Fatalf("%q, sort %s: shortcut failed on %s", s, sort, doc)
			}
			if want := slowCursor(t, sort, doc); got != want {
				t.Fatalf("%q, sort %s: got %+v, want %+v", s, sort, got, want)
			}
		}
	}
	// What is not a stored doc is left to the full decode.
	for _, doc := range []string{``, `{}`, `{"id":"pet_short"}`, `{"id":"pet_0123456789abcdef01234567"}`,
		`{"id":"pet_0123456789ABCDEF01234567","name":"x","published_at":"2024-01-01T00:00:00Z","updated_at":"2024-01-01T00:00:00Z"}`,
		`{"id":"pet_0123456789abcdef01234567","name":x,"published_at":"yesterday","updated_at":"2024"}`} {
		for _, sort := range Sorts {
			if c, ok := cursorFromDocFast(sort, []byte(doc)); ok {
				t.Fatalf("%s, sort %s: shortcut accepted it: %+v", doc, sort, c)
			}
		}
	}
	if _, ok := jsonStringAt([]byte(`"unterminated\"`), 0); ok {
		t.Fatal("unterminated string accepted")
	}
	if s, ok := jsonStringAt([]byte(`"a\u00e9\"b"`), 0); !ok || s != `aé"b` {
		t.Fatalf("escaped string = %q, %v", s, ok)
	}
}

// FuzzCursorFromDoc checks the shortcut against the full decode on
// arbitrary names and descriptions.
func FuzzCursorFromDoc(f *testing.F) {
	f.Add("name", "desc", int64(0))
	f.Add(`"name":"`, `,"published_at":"x"`, int64(1e15))
	f.Fuzz(func(t *testing.T, name, desc string, us int64) {
		in := PetInput{Source: "s", SourceID: name, Name: name, Species: "Dog", Description: desc,
			PublishedAt: time.UnixMicro(us % 4e15).UTC()}
		doc := docOf(t, in)
		for _, sort := range Sorts {
			got, ok := cursorFromDocFast(sort, doc)
			if !ok {
				t.Fatalf("sort %s: shortcut failed on a stored doc %s", sort, doc)
			}
			if want := slowCursor(t, sort, doc); got != want {
				t.Fatalf("sort %s: got %+v, want %+v (doc %s)", sort, got, want, doc)
			}
		}
	})
}
