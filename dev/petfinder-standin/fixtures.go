package standin

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"
)

// TimeLayout is how Petfinder writes timestamps: ISO 8601 with a numeric
// offset and no colon (2020-08-31T20:59:35+0000). Clients must accept it
// as well as RFC 3339.
const TimeLayout = "2006-01-02T15:04:05-0700"

// Animal is one animal in the Petfinder API v2 response format. Optional
// strings are pointers because Petfinder sends null for them.
type Animal struct {
	ID                  int64          `json:"id"`
	OrganizationID      string         `json:"organization_id"`
	URL                 string         `json:"url"`
	Type                string         `json:"type"`
	Species             string         `json:"species"`
	Breeds              Breeds         `json:"breeds"`
	Colors              Colors         `json:"colors"`
	Age                 string         `json:"age"`
	Gender              string         `json:"gender"`
	Size                string         `json:"size"`
	Coat                *string        `json:"coat"`
	Attributes          Attributes     `json:"attributes"`
	Environment         Environment    `json:"environment"`
	Tags                []string       `json:"tags"`
	Name                string         `json:"name"`
	Description         *string        `json:"description"`
	Photos              []Photo        `json:"photos"`
	PrimaryPhotoCropped *Photo         `json:"primary_photo_cropped"`
	Videos              []any          `json:"videos"`
	Status              string         `json:"status"`
	StatusChangedAt     string         `json:"status_changed_at"`
	PublishedAt         string         `json:"published_at"`
	Distance            *float64       `json:"distance"`
	Contact             Contact        `json:"contact"`
	Links               map[string]any `json:"_links"`

	published time.Time
}

// Breeds is the Petfinder breeds object.
type Breeds struct {
	Primary   string  `json:"primary"`
	Secondary *string `json:"secondary"`
	Mixed     bool    `json:"mixed"`
	Unknown   bool    `json:"unknown"`
}

// Colors is the Petfinder colors object.
type Colors struct {
	Primary   *string `json:"primary"`
	Secondary *string `json:"secondary"`
	Tertiary  *string `json:"tertiary"`
}

// Attributes is the Petfinder attributes object.
type Attributes struct {
	SpayedNeutered bool  `json:"spayed_neutered"`
	HouseTrained   bool  `json:"house_trained"`
	Declawed       *bool `json:"declawed"`
	SpecialNeeds   bool  `json:"special_needs"`
	ShotsCurrent   bool  `json:"shots_current"`
}

// Environment is the Petfinder environment object.
type Environment struct {
	Children *bool `json:"children"`
	Dogs     *bool `json:"dogs"`
	Cats     *bool `json:"cats"`
}

// Photo holds the four sizes Petfinder serves.
type Photo struct {
	Small  string `json:"small"`
	Medium string `json:"medium"`
	Large  string `json:"large"`
	Full   string `json:"full"`
}

// Contact is the Petfinder contact object.
type Contact struct {
	Email   *string `json:"email"`
	Phone   *string `json:"phone"`
	Address Address `json:"address"`
}

// Address is the Petfinder address object.
type Address struct {
	Address1 *string `json:"address1"`
	Address2 *string `json:"address2"`
	City     string  `json:"city"`
	State    string  `json:"state"`
	Postcode string  `json:"postcode"`
	Country  string  `json:"country"`
}

// Published returns the parsed published_at.
func (a *Animal) Published() time.Time { return a.published }

type kind struct {
	typ, species string
	breeds       []string
	colors       []string
	coats        []string
	weight       int
}

var kinds = []kind{
	{typ: "Dog", species: "Dog", weight: 45,
		breeds: []string{"Labrador Retriever", "German Shepherd Dog", "Pit Bull Terrier", "Chihuahua", "Beagle", "Boxer", "Australian Shepherd", "Border Collie", "Dachshund", "Golden Retriever", "Husky", "Shih Tzu", "Terrier", "Hound", "Poodle", "Corgi"},
		colors: []string{"Black", "Brown / Chocolate", "White / Cream", "Tricolor (Brown, Black, & White)", "Brindle", "Golden", "Red / Chestnut / Orange", "Gray / Blue / Silver"},
		coats:  []string{"Short", "Medium", "Long", "Wire", "Curly"}},
	{typ: "Cat", species: "Cat", weight: 35,
		breeds: []string{"Domestic Short Hair", "Domestic Medium Hair", "Domestic Long Hair", "Siamese", "Tabby", "Maine Coon", "Tuxedo", "Calico", "Russian Blue", "Bengal"},
		colors: []string{"Black", "Orange / Red", "Gray / Blue / Silver", "Tabby (Brown / Chocolate)", "Calico", "Tuxedo", "White", "Tortoiseshell"},
		coats:  []string{"Short", "Medium", "Long"}},
	{typ: "Rabbit", species: "Rabbit", weight: 10,
		breeds: []string{"Lionhead", "Mini Rex", "Holland Lop", "Dutch", "Netherland Dwarf", "Flemish Giant"},
		colors: []string{"Agouti", "Black", "White", "Tan", "Broken"},
		coats:  []string{"Short", "Long"}},
	{typ: "Small & Furry", species: "Guinea Pig", weight: 5,
		breeds: []string{"Guinea Pig", "Abyssinian", "Peruvian"},
		colors: []string{"Agouti", "Black", "Cream", "Tricolor"},
		coats:  []string{"Short", "Long"}},
	{typ: "Bird", species: "Bird", weight: 5,
		breeds: []string{"Parakeet", "Cockatiel", "Lovebird", "Conure"},
		colors: []string{"Green", "Blue", "Yellow", "Gray"}},
}

var (
	names = []string{"Bella", "Max", "Luna", "Charlie", "Lucy", "Cooper", "Daisy", "Milo", "Bailey", "Rocky",
		"Sadie", "Buddy", "Molly", "Tucker", "Stella", "Bear", "Zoe", "Duke", "Penny", "Oliver",
		"Coco", "Leo", "Rosie", "Finn", "Ruby", "Jasper", "Nala", "Loki", "Willow", "Gus",
		"Pepper", "Oreo", "Ginger", "Simba", "Hazel", "Bruno", "Maple", "Ziggy", "Olive", "Thor",
		"Biscuit", "Cleo", "Murphy", "Pumpkin", "Winston", "Juniper", "Scout", "Mabel", "Rex", "Poppy"}
	cities = []struct{ city, state, postcode string }{
		{"Columbus", "OH", "43215"}, {"Austin", "TX", "78701"}, {"Portland", "OR", "97205"},
		{"Denver", "CO", "80202"}, {"Raleigh", "NC", "27601"}, {"Madison", "WI", "53703"},
		{"Tucson", "AZ", "85701"}, {"Richmond", "VA", "23219"}, {"Boise", "ID", "83702"},
		{"Trenton", "NJ", "08608"}, {"Savannah", "GA", "31401"}, {"Burlington", "VT", "05401"},
		{"Spokane", "WA", "99201"}, {"Omaha", "NE", "68102"}, {"Albany", "NY", "12207"},
	}
	ages      = []string{"Baby", "Young", "Adult", "Senior"}
	genders   = []string{"Male", "Female", "Male", "Female", "Unknown"}
	sizes     = []string{"Small", "Medium", "Large", "Extra Large"}
	traits    = []string{"gentle", "playful", "curious", "shy at first", "affectionate", "energetic", "calm", "goofy", "loyal", "independent"}
	fixtureT0 = time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)
)

// FixtureEpoch is the published_at of the newest generated animal; every
// other generated animal was published before it.
func FixtureEpoch() time.Time { return fixtureT0 }

// Generate returns n animals generated deterministically from seed: the
// same (seed, n) always yields byte-identical JSON. Animal i is published
// 97 minutes before animal i-1, so ids and publication times are unique.
func Generate(seed uint64, n int) []*Animal {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed_f00d))
	out := make([]*Animal, 0, n)
	for i := range n {
		out = append(out, generateOne(r, i))
	}
	return out
}

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func ptr[T any](v T) *T { return &v }

func generateOne(r *rand.Rand, i int) *Animal {
	total := 0
	for _, k := range kinds {
		total += k.weight
	}
	w := r.IntN(total)
	k := kinds[0]
	for _, kk := range kinds {
		if w < kk.weight {
			k = kk
			break
		}
		w -= kk.weight
	}
	id := int64(70000000 + i*13 + r.IntN(13))
	name := pick(r, names)
	loc := pick(r, cities)
	org := fmt.Sprintf("%s%03d", loc.state, 100+r.IntN(900))
	published := fixtureT0.Add(-time.Duration(i) * 97 * time.Minute)
	a := &Animal{
		ID:             id,
		OrganizationID: org,
		URL:            fmt.Sprintf("https://www.petfinder.example/%s/%s-%d/", strings.ToLower(strings.ReplaceAll(k.typ, " & ", "-")), strings.ToLower(name), id),
		Type:           k.typ,
		Species:        k.species,
		Breeds:         Breeds{Primary: pick(r, k.breeds)},
		Colors:         Colors{Primary: ptr(pick(r, k.colors))},
		Age:            pick(r, ages),
		Gender:         pick(r, genders),
		Size:           pick(r, sizes),
		Attributes: Attributes{
			SpayedNeutered: r.IntN(3) > 0, HouseTrained: r.IntN(2) == 0, SpecialNeeds: r.IntN(10) == 0, ShotsCurrent: r.IntN(4) > 0,
		},
		Tags:   []string{},
		Name:   name,
		Videos: []any{},
		Status: "adoptable",
		Contact: Contact{
			Email: ptr(fmt.Sprintf("adopt@%s.shelter.example", strings.ToLower(org))),
			Address: Address{
				City: loc.city, State: loc.state, Postcode: loc.postcode, Country: "US",
			},
		},
		published: published,
	}
	if k.typ == "Cat" {
		a.Attributes.Declawed = ptr(false)
	}
	if len(k.coats) > 0 {
		a.Coat = ptr(pick(r, k.coats))
	}
	if r.IntN(3) == 0 {
		a.Breeds.Mixed = true
		if second := pick(r, k.breeds); second != a.Breeds.Primary {
			a.Breeds.Secondary = ptr(second)
		}
	}
	if r.IntN(2) == 0 {
		if c := pick(r, k.colors); c != *a.Colors.Primary {
			a.Colors.Secondary = ptr(c)
		}
	}
	if k.typ == "Dog" || k.typ == "Cat" {
		a.Environment = Environment{Children: ptr(r.IntN(2) == 0), Dogs: ptr(r.IntN(2) == 0), Cats: ptr(r.IntN(3) == 0)}
		a.Tags = []string{pick(r, traits), pick(r, traits)}
	}
	if r.IntN(8) != 0 {
		desc := fmt.Sprintf("%s is a %s %s %s looking for a home in %s. %s is %s and %s.",
			name, strings.ToLower(a.Age), strings.ToLower(a.Breeds.Primary), strings.ToLower(k.species), loc.city, name, pick(r, traits), pick(r, traits))
		a.Description = &desc
	}
	changed := published
	switch n := r.IntN(20); {
	case n == 0:
		a.Status = "adopted"
		changed = published.Add(time.Duration(1+r.IntN(72)) * time.Hour)
	case n == 1:
		a.Status = "found"
	}
	for p := range r.IntN(4) {
		base := fmt.Sprintf("https://photos.petfinder.example/photos/pets/%d/%d/", id, p+1)
		a.Photos = append(a.Photos, Photo{Small: base + "?width=100", Medium: base + "?width=300", Large: base + "?width=600", Full: base})
	}
	if a.Photos == nil {
		a.Photos = []Photo{}
	} else {
		ph := a.Photos[0]
		a.PrimaryPhotoCropped = &ph
	}
	a.PublishedAt = published.Format(TimeLayout)
	a.StatusChangedAt = changed.Format(TimeLayout)
	a.Links = map[string]any{
		"self":         map[string]string{"href": fmt.Sprintf("/v2/animals/%d", id)},
		"type":         map[string]string{"href": "/v2/types/" + strings.ToLower(strings.ReplaceAll(k.typ, " & ", "-"))},
		"organization": map[string]string{"href": "/v2/organizations/" + strings.ToLower(org)},
	}
	return a
}

// LoadFixtures reads a recorded {"animals":[...]} file in the Petfinder
// response format.
func LoadFixtures(path string) ([]*Animal, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read fixtures: %w", err)
	}
	var doc struct {
		Animals []*Animal `json:"animals"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parse fixtures %s: %w", path, err)
	}
	seen := map[int64]bool{}
	for i, a := range doc.Animals {
		t, err := ParseTime(a.PublishedAt)
		if err != nil {
			return nil, fmt.Errorf("fixtures %s: animals[%d].published_at: %w", path, i, err)
		}
		if seen[a.ID] {
			return nil, fmt.Errorf("fixtures %s: animals[%d].id %d is a duplicate", path, i, a.ID)
		}
		seen[a.ID] = true
		a.published = t
	}
	return doc.Animals, nil
}

// ParseTime accepts Petfinder's layout and RFC 3339.
func ParseTime(s string) (time.Time, error) {
	for _, layout := range []string{TimeLayout, time.RFC3339Nano} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("want an ISO 8601 date-time such as 2019-10-07T19:13:01+00:00, got %q", s)
}
