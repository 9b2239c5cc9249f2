package pets

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/services/pets/store"
)

// Size limits of PetInput fields (bytes).
const (
	maxShort       = 200
	maxDescription = 10000
	maxPhotos      = 50
	maxURL         = 2048
)

// petFields are the JSON keys of PetInput, and of its nested objects;
// anything else is an unknown field.
var (
	petFields = map[string]bool{
		"source": true, "source_id": true, "name": true, "species": true, "breeds": true,
		"age": true, "gender": true, "size": true, "colors": true, "status": true,
		"description": true, "photos": true, "organization_id": true, "location": true,
		"published_at": true, "updated_at": true,
	}
	nestedFields = map[string]map[string]bool{
		"breeds":   {"primary": true, "secondary": true, "mixed": true},
		"colors":   {"primary": true, "secondary": true, "tertiary": true},
		"location": {"city": true, "state": true, "postcode": true, "country": true},
	}
)

// petWire decodes a PetInput with the times left raw so that a bad time
// is reported against its field. Its own fields shadow the embedded ones.
type petWire struct {
	store.PetInput
	PublishedAt json.RawMessage `json:"published_at"`
	UpdatedAt   json.RawMessage `json:"updated_at"`
}

// decodeBatch reads {"pets":[PetInput...]} and validates every pet.
// Errors are *httpx.Error naming the field by its path, e.g.
// "pets[3].colour".
func decodeBatch(w http.ResponseWriter, r *http.Request, maxBody int64) ([]store.PetInput, error) {
	var body struct {
		Pets *[]json.RawMessage `json:"pets"`
	}
	if err := httpx.DecodeJSON(w, r, &body, maxBody); err != nil {
		return nil, err
	}
	if body.Pets == nil {
		return nil, httpx.BadRequest("pets", "required")
	}
	raws := *body.Pets
	if len(raws) > MaxBatch {
		return nil, httpx.BadRequest("pets", "at most %d pets per batch, got %d", MaxBatch, len(raws))
	}
	pets := make([]store.PetInput, len(raws))
	seen := make(map[[2]string]int, len(raws))
	for i, raw := range raws {
		path := fmt.Sprintf("pets[%d]", i)
		p, err := decodePet(raw, path)
		if err != nil {
			return nil, err
		}
		if err := validatePet(&p, path); err != nil {
			return nil, err
		}
		k := [2]string{p.Source, p.SourceID}
		if j, dup := seen[k]; dup {
			return nil, httpx.BadRequest(path+".source_id", "duplicates pets[%d] (same source and source_id)", j)
		}
		seen[k] = i
		pets[i] = p
	}
	return pets, nil
}

// decodePet decodes one PetInput strictly: unknown keys (matched
// case-sensitively, unlike encoding/json) and wrong types are errors
// naming the field under path.
func decodePet(raw json.RawMessage, path string) (store.PetInput, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil || keys == nil {
		return store.PetInput{}, httpx.BadRequest(path, "want a JSON object")
	}
	for k, v := range keys {
		if !petFields[k] {
			return store.PetInput{}, httpx.BadRequest(path+"."+k, "unknown field")
		}
		allowed, nested := nestedFields[k]
		if !nested || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			continue
		}
		var sub map[string]json.RawMessage
		if err := json.Unmarshal(v, &sub); err != nil {
			return store.PetInput{}, httpx.BadRequest(path+"."+k, "want a JSON object")
		}
		for sk := range sub {
			if !allowed[sk] {
				return store.PetInput{}, httpx.BadRequest(path+"."+k+"."+sk, "unknown field")
			}
		}
	}
	var pw petWire
	if err := json.Unmarshal(raw, &pw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			field := strings.TrimPrefix(te.Field, "PetInput.") // the embedded struct's name
			return store.PetInput{}, httpx.BadRequest(path+"."+field, "want %s, got JSON %s", jsonType(te.Type.String()), te.Value)
		}
		return store.PetInput{}, httpx.BadRequest(path, "invalid: %v", err)
	}
	p := pw.PetInput
	var err error
	if p.PublishedAt, err = decodeTime(pw.PublishedAt, path+".published_at"); err != nil {
		return p, err
	}
	if p.UpdatedAt, err = decodeTime(pw.UpdatedAt, path+".updated_at"); err != nil {
		return p, err
	}
	return p, nil
}

func jsonType(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	default:
		return "an object"
	}
}

// decodeTime parses an RFC 3339 time; null or absent is the zero time.
func decodeTime(raw json.RawMessage, field string) (time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return time.Time{}, httpx.BadRequest(field, "want an RFC 3339 time string")
	}
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, httpx.BadRequest(field, "want an RFC 3339 time such as 2026-11-01T10:00:00Z, got %q", s)
	}
	return t.UTC(), nil
}

// validatePet checks required fields, enumerations and sizes, and
// canonicalizes the enumerations' case.
func validatePet(p *store.PetInput, path string) error {
	required := []struct {
		field string
		v     *string
	}{
		{"source", &p.Source}, {"source_id", &p.SourceID}, {"name", &p.Name}, {"species", &p.Species},
	}
	for _, f := range required {
		*f.v = strings.TrimSpace(*f.v)
		if *f.v == "" {
			return httpx.BadRequest(path+"."+f.field, "required")
		}
	}
	enums := []struct {
		field  string
		v      *string
		values []string
	}{
		{"age", &p.Age, store.Ages}, {"gender", &p.Gender, store.Genders},
		{"size", &p.Size, store.Sizes}, {"status", &p.Status, store.Statuses},
	}
	for _, f := range enums {
		c, ok := store.Canonical(f.values, strings.TrimSpace(*f.v))
		if !ok {
			return httpx.BadRequest(path+"."+f.field, "want one of %s, got %q", strings.Join(f.values, ", "), *f.v)
		}
		*f.v = c
	}
	short := []struct {
		field string
		v     string
	}{
		{"source", p.Source}, {"source_id", p.SourceID}, {"name", p.Name}, {"species", p.Species},
		{"breeds.primary", p.Breeds.Primary}, {"breeds.secondary", p.Breeds.Secondary},
		{"colors.primary", p.Colors.Primary}, {"colors.secondary", p.Colors.Secondary}, {"colors.tertiary", p.Colors.Tertiary},
		{"organization_id", p.OrganizationID},
		{"location.city", p.Location.City}, {"location.state", p.Location.State},
		{"location.postcode", p.Location.Postcode}, {"location.country", p.Location.Country},
	}
	for _, f := range short {
		if len(f.v) > maxShort {
			return httpx.BadRequest(path+"."+f.field, "longer than %d bytes", maxShort)
		}
		if !utf8.ValidString(f.v) || strings.ContainsAny(f.v, "\x00") {
			return httpx.BadRequest(path+"."+f.field, "contains invalid characters")
		}
	}
	if len(p.Description) > maxDescription {
		return httpx.BadRequest(path+".description", "longer than %d bytes", maxDescription)
	}
	if len(p.Photos) > maxPhotos {
		return httpx.BadRequest(path+".photos", "at most %d photos", maxPhotos)
	}
	for i, ph := range p.Photos {
		field := fmt.Sprintf("%s.photos[%d]", path, i)
		if len(ph) > maxURL {
			return httpx.BadRequest(field, "longer than %d bytes", maxURL)
		}
		u, err := url.Parse(ph)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return httpx.BadRequest(field, "want an absolute http or https URL")
		}
	}
	return nil
}
