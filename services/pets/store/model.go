// Package store persists pets behind one Store interface with two
// implementations: SQLite (a pure-Go driver, WAL, safe for several
// processes sharing one file) and PostgreSQL (pgx). Both apply embedded
// migrations at open and answer list queries with keyset pagination.
package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"
)

// Pet is a stored animal. The JSON shape is the pets API contract: every
// field is always present on output.
type Pet struct {
	ID string `json:"id"`
	PetInput
}

// PetInput is a pet as written by clients: a Pet without its
// server-assigned id. (Source, SourceID) is the idempotency key.
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

// Breeds follows the Petfinder animal breeds object.
type Breeds struct {
	Primary   string `json:"primary"`
	Secondary string `json:"secondary"`
	Mixed     bool   `json:"mixed"`
}

// Colors follows the Petfinder animal colors object.
type Colors struct {
	Primary   string `json:"primary"`
	Secondary string `json:"secondary"`
	Tertiary  string `json:"tertiary"`
}

// Location is the part of the Petfinder contact address that is public.
type Location struct {
	City     string `json:"city"`
	State    string `json:"state"`
	Postcode string `json:"postcode"`
	Country  string `json:"country"`
}

// Enumerations of the contract, in their canonical spelling.
var (
	Ages     = []string{"Baby", "Young", "Adult", "Senior"}
	Genders  = []string{"Male", "Female", "Unknown"}
	Sizes    = []string{"Small", "Medium", "Large", "Extra Large"}
	Statuses = []string{"adoptable", "adopted", "found"}
)

// Canonical returns the canonical spelling of s in values, compared
// case-insensitively, and whether it is one of them.
func Canonical(values []string, s string) (string, bool) {
	for _, v := range values {
		if strings.EqualFold(v, s) {
			return v, true
		}
	}
	return "", false
}

// PetID returns the stable id of the pet with the given key. It is a hash
// so that every store, and every process sharing one, assigns the same id
// without coordination.
func PetID(source, sourceID string) string {
	h := sha256.Sum256([]byte(source + "\x00" + sourceID))
	return "pet_" + hex.EncodeToString(h[:12])
}

// ValidID reports whether id has the shape PetID produces; other strings
// can never name a pet.
func ValidID(id string) bool {
	if len(id) != 4+24 || !strings.HasPrefix(id, "pet_") {
		return false
	}
	for i := 4; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// normalize returns the input as it is stored: enums in canonical case,
// times in UTC truncated to microseconds (the stored precision), photos
// never nil.
func normalize(in PetInput) PetInput {
	if v, ok := Canonical(Ages, in.Age); ok {
		in.Age = v
	}
	if v, ok := Canonical(Genders, in.Gender); ok {
		in.Gender = v
	}
	if v, ok := Canonical(Sizes, in.Size); ok {
		in.Size = v
	}
	if v, ok := Canonical(Statuses, in.Status); ok {
		in.Status = v
	}
	if in.Photos == nil {
		in.Photos = []string{}
	}
	in.PublishedAt = truncTime(in.PublishedAt)
	in.UpdatedAt = truncTime(in.UpdatedAt)
	return in
}

func truncTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Microsecond)
}

// contentHash identifies the content of a normalized input so that an
// upsert of identical content is reported as unchanged and writes nothing.
func contentHash(in PetInput) string {
	b, _ := json.Marshal(in) // cannot fail: plain strings, bools and times
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:16])
}

// key lowercases a filter column so that filters match case-insensitively
// (Unicode-aware, identically in every store).
func key(s string) string { return strings.ToLower(strings.TrimSpace(s)) }
