package store

import (
	"strconv"
	"strings"
)

// AppendKey appends a key of the page q selects to dst: two queries with
// the same key select the same page of the same data, because the key is
// made of the filters as List normalizes them (case-folded filters,
// canonical enumerations, default sort and limit). Response caches use it.
func (q ListQuery) AppendKey(dst []byte) []byte {
	enum := func(values []string, v string) string {
		if c, ok := Canonical(values, v); ok {
			return c
		}
		return v
	}
	sort := q.Sort
	if sort == "" {
		sort = DefaultSort
	}
	limit := q.Limit
	if limit == 0 {
		limit = DefaultLimit
	}
	// Each field is length-prefixed, so that no value can spill into the
	// next one whatever bytes it holds.
	for _, f := range [...]string{
		key(q.Species), key(q.Breed), enum(Ages, q.Age), enum(Genders, q.Gender), enum(Sizes, q.Size),
		enum(Statuses, q.Status), key(q.City), key(q.State), strings.ToLower(strings.TrimSpace(q.Q)),
		string(sort), q.Cursor,
	} {
		dst = strconv.AppendInt(dst, int64(len(f)), 10)
		dst = append(dst, ':')
		dst = append(dst, f...)
	}
	return strconv.AppendInt(dst, int64(limit), 10)
}
