package store

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sort is a list order. Every order is total: ties on the key are broken
// by id in the same direction, which keyset pagination relies on.
type Sort string

// The orders of the contract.
const (
	SortPublishedDesc Sort = "-published_at"
	SortPublishedAsc  Sort = "published_at"
	SortNameAsc       Sort = "name"
	SortNameDesc      Sort = "-name"
	SortUpdatedAsc    Sort = "updated_at"
	SortUpdatedDesc   Sort = "-updated_at"
)

// DefaultSort is used when ListQuery.Sort is empty.
const DefaultSort = SortPublishedDesc

// Sorts lists every valid order.
var Sorts = []Sort{SortPublishedDesc, SortPublishedAsc, SortNameAsc, SortNameDesc, SortUpdatedAsc, SortUpdatedDesc}

// ParseSort validates s; the empty string is the default order.
func ParseSort(s string) (Sort, bool) {
	if s == "" {
		return DefaultSort, true
	}
	for _, v := range Sorts {
		if string(v) == s {
			return v, true
		}
	}
	return "", false
}

func (s Sort) column() string {
	return strings.TrimPrefix(string(s), "-")
}

func (s Sort) desc() bool { return strings.HasPrefix(string(s), "-") }

func (s Sort) byName() bool { return s.column() == "name" }

// Limits of a page.
const (
	DefaultLimit = 20
	MaxLimit     = 100
)

// ListQuery selects pets. String filters match case-insensitively and
// exactly; Breed matches the primary or the secondary breed; Q is free
// text searched in name and description. Zero values do not filter.
type ListQuery struct {
	Species, Breed, Age, Gender, Size, Status, City, State, Q string
	Sort                                                      Sort
	// Limit is 1..MaxLimit; 0 means DefaultLimit.
	Limit int
	// Cursor is the NextCursor of a previous page of the same Sort.
	Cursor string
}

// ListResult is one page. NextCursor is empty on the last page.
type ListResult struct {
	Pets       []Pet
	NextCursor string
}

// ErrBadCursor is wrapped by List errors caused by a cursor that is not
// one this service issued for the query's sort order.
var ErrBadCursor = errors.New("bad cursor")

// ErrNotFound is returned when no pet has the id.
var ErrNotFound = errors.New("pet not found")

// ErrInvalid is wrapped by errors caused by an invalid query or input.
var ErrInvalid = errors.New("invalid argument")

// cursor is the position after the last pet of a page: the sort key and
// the id. It is JSON in base64url so that clients treat it as opaque.
type cursor struct {
	Sort Sort   `json:"s"`
	Time int64  `json:"t,omitempty"`
	Name string `json:"n,omitempty"`
	ID   string `json:"i"`
}

func (c cursor) encode() string {
	if c.Sort.byName() {
		c.Time = 0
	} else {
		c.Name = ""
	}
	b, _ := json.Marshal(c) // cannot fail
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s Sort, raw string) (cursor, error) {
	var c cursor
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return c, fmt.Errorf("%w: not base64url", ErrBadCursor)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%w: malformed", ErrBadCursor)
	}
	if c.Sort != s {
		return c, fmt.Errorf("%w: issued for sort %q, not %q", ErrBadCursor, c.Sort, s)
	}
	if !ValidID(c.ID) {
		return c, fmt.Errorf("%w: malformed", ErrBadCursor)
	}
	return c, nil
}

// UpsertResult counts what a batch upsert did.
type UpsertResult struct {
	Inserted  int `json:"inserted"`
	Updated   int `json:"updated"`
	Unchanged int `json:"unchanged"`
}

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }
