package syncsvc

import (
	"errors"
	"fmt"
	"html"
	"strconv"
	"strings"
	"time"

	"github.com/petmesh/petmesh/services/sync/petfinder"
)

// Source is the pets source name of Petfinder animals.
const Source = "petfinder"

// PetInput is the body item of POST /pets:batchUpsert (the pets API
// contract: a pet without its server-assigned id).
type PetInput struct {
	Source         string    `json:"source"`
	SourceID       string    `json:"source_id"`
	Name           string    `json:"name"`
	Species        string    `json:"species"`
	Breeds         Breeds    `json:"breeds"`
	Age            string    `json:"age"`
	Gender         string    `json:"gender"`
	Size           string    `json:"size"`
	Colors         Colors    `json:"colors"`
	Status         string    `json:"status"`
	Description    string    `json:"description"`
	Photos         []string  `json:"photos"`
	OrganizationID string    `json:"organization_id"`
	Location       Location  `json:"location"`
	PublishedAt    time.Time `json:"published_at"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// Breeds of a pet.
type Breeds struct {
	Primary   string `json:"primary"`
	Secondary string `json:"secondary"`
	Mixed     bool   `json:"mixed"`
}

// Colors of a pet.
type Colors struct {
	Primary   string `json:"primary"`
	Secondary string `json:"secondary"`
	Tertiary  string `json:"tertiary"`
}

// Location of a pet.
type Location struct {
	City     string `json:"city"`
	State    string `json:"state"`
	Postcode string `json:"postcode"`
	Country  string `json:"country"`
}

var (
	ages     = []string{"Baby", "Young", "Adult", "Senior"}
	genders  = []string{"Male", "Female", "Unknown"}
	sizes    = []string{"Small", "Medium", "Large", "Extra Large"}
	statuses = []string{"adoptable", "adopted", "found"}
)

func canonical(values []string, s string) (string, bool) {
	s = strings.TrimSpace(s)
	for _, v := range values {
		if strings.EqualFold(v, s) {
			return v, true
		}
	}
	return "", false
}

// MapAnimal turns a Petfinder animal into a pets upsert. It fails (and
// the animal is counted as failed) when a field the contract constrains
// has a value outside it.
func MapAnimal(a petfinder.Animal) (PetInput, error) {
	var errs []error
	if a.ID <= 0 {
		errs = append(errs, fmt.Errorf("id: want a positive id, got %d", a.ID))
	}
	age, ok := canonical(ages, a.Age)
	if !ok {
		errs = append(errs, fmt.Errorf("age: unknown value %q", a.Age))
	}
	gender := "Unknown"
	if strings.TrimSpace(a.Gender) != "" {
		if gender, ok = canonical(genders, a.Gender); !ok {
			errs = append(errs, fmt.Errorf("gender: unknown value %q", a.Gender))
		}
	}
	size, ok := canonical(sizes, a.Size)
	if !ok {
		errs = append(errs, fmt.Errorf("size: unknown value %q", a.Size))
	}
	status, ok := canonical(statuses, a.Status)
	if !ok {
		errs = append(errs, fmt.Errorf("status: unknown value %q", a.Status))
	}
	if a.PublishedAt.IsZero() {
		errs = append(errs, errors.New("published_at: missing"))
	}
	if err := errors.Join(errs...); err != nil {
		return PetInput{}, fmt.Errorf("animal %d: %w", a.ID, err)
	}
	species := strings.TrimSpace(a.Species)
	if species == "" {
		species = strings.TrimSpace(a.Type)
	}
	photos := make([]string, 0, len(a.Photos))
	for _, p := range a.Photos {
		u := p.Full
		if u == "" {
			u = p.Large
		}
		if u != "" {
			photos = append(photos, u)
		}
	}
	published := a.PublishedAt.UTC()
	updated := published
	if a.StatusChangedAt.After(updated) {
		updated = a.StatusChangedAt.UTC()
	}
	return PetInput{
		Source:         Source,
		SourceID:       strconv.FormatInt(a.ID, 10),
		Name:           strings.TrimSpace(html.UnescapeString(a.Name)),
		Species:        species,
		Breeds:         Breeds{Primary: a.Breeds.Primary, Secondary: a.Breeds.Secondary, Mixed: a.Breeds.Mixed},
		Age:            age,
		Gender:         gender,
		Size:           size,
		Colors:         Colors(a.Colors),
		Status:         status,
		Description:    strings.TrimSpace(html.UnescapeString(a.Description)),
		Photos:         photos,
		OrganizationID: a.OrganizationID,
		Location:       Location(a.Contact.Address),
		PublishedAt:    published,
		UpdatedAt:      updated,
	}, nil
}
