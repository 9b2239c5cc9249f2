package petfinder

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Animal is the part of a Petfinder API v2 animal that petmesh uses.
// Petfinder sends null for absent optional strings; they decode as "".
type Animal struct {
	ID              int64   `json:"id"`
	OrganizationID  string  `json:"organization_id"`
	URL             string  `json:"url"`
	Type            string  `json:"type"`
	Species         string  `json:"species"`
	Breeds          Breeds  `json:"breeds"`
	Colors          Colors  `json:"colors"`
	Age             string  `json:"age"`
	Gender          string  `json:"gender"`
	Size            string  `json:"size"`
	Coat            string  `json:"coat"`
	Name            string  `json:"name"`
	Description     string  `json:"description"`
	Photos          []Photo `json:"photos"`
	Status          string  `json:"status"`
	StatusChangedAt Time    `json:"status_changed_at"`
	PublishedAt     Time    `json:"published_at"`
	Contact         Contact `json:"contact"`
}

// Breeds is the breeds object.
type Breeds struct {
	Primary   string `json:"primary"`
	Secondary string `json:"secondary"`
	Mixed     bool   `json:"mixed"`
	Unknown   bool   `json:"unknown"`
}

// Colors is the colors object.
type Colors struct {
	Primary   string `json:"primary"`
	Secondary string `json:"secondary"`
	Tertiary  string `json:"tertiary"`
}

// Photo holds the URLs of one photo in four sizes.
type Photo struct {
	Small  string `json:"small"`
	Medium string `json:"medium"`
	Large  string `json:"large"`
	Full   string `json:"full"`
}

// Contact is the contact object; only the address is used.
type Contact struct {
	Address Address `json:"address"`
}

// Address is the contact address.
type Address struct {
	City     string `json:"city"`
	State    string `json:"state"`
	Postcode string `json:"postcode"`
	Country  string `json:"country"`
}

// Pagination is the pagination object of list responses.
type Pagination struct {
	CountPerPage int `json:"count_per_page"`
	TotalCount   int `json:"total_count"`
	CurrentPage  int `json:"current_page"`
	TotalPages   int `json:"total_pages"`
}

// Page is one page of GET /v2/animals.
type Page struct {
	Animals    []Animal   `json:"animals"`
	Pagination Pagination `json:"pagination"`
}

// Problem is Petfinder's problem+json error body.
type Problem struct {
	Type          string `json:"type"`
	Status        int    `json:"status"`
	Title         string `json:"title"`
	Detail        string `json:"detail"`
	InvalidParams []struct {
		In      string `json:"in"`
		Path    string `json:"path"`
		Message string `json:"message"`
	} `json:"invalid-params"`
}

// Time is a timestamp as Petfinder writes it: ISO 8601 with a numeric
// offset without a colon (2020-08-31T20:59:35+0000); RFC 3339 is accepted
// too, and null or "" decode as the zero time.
type Time struct{ time.Time }

// timeLayout is Petfinder's timestamp layout.
const timeLayout = "2006-01-02T15:04:05-0700"

// ParseTime parses a Petfinder timestamp.
func ParseTime(s string) (time.Time, error) {
	for _, layout := range []string{timeLayout, time.RFC3339Nano} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("want an ISO 8601 date-time, got %q", s)
}

// UnmarshalJSON implements json.Unmarshaler.
func (t *Time) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		t.Time = time.Time{}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timestamp: %w", err)
	}
	if strings.TrimSpace(s) == "" {
		t.Time = time.Time{}
		return nil
	}
	v, err := ParseTime(s)
	if err != nil {
		return err
	}
	t.Time = v
	return nil
}

// MarshalJSON writes RFC 3339.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return json.Marshal(t.UTC().Format(time.RFC3339))
}
