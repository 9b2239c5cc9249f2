package store

import (
	"bytes"
	"encoding/json"
	"time"
)

// cursorFromDocFast reads the cursor fields of a stored doc without
// decoding the whole pet (a full json.Unmarshal was a tenth of a list
// query's CPU). It relies on the shape json.Marshal gives a Pet: "id"
// first, then "source", "source_id" and "name"; "published_at" and
// "updated_at" last. A key pattern such as `"name":"` cannot occur inside
// a string value, where every quote is escaped, so the first (or last)
// occurrence is the field itself. It reports false for anything else,
// and the caller decodes the doc instead.
func cursorFromDocFast(sort Sort, doc []byte) (cursor, bool) {
	const idKey = `{"id":"`
	const idLen = 4 + 24
	if !bytes.HasPrefix(doc, []byte(idKey)) || len(doc) <= len(idKey)+idLen || doc[len(idKey)+idLen] != '"' {
		return cursor{}, false
	}
	c := cursor{Sort: sort, ID: string(doc[len(idKey) : len(idKey)+idLen])}
	if !ValidID(c.ID) {
		return cursor{}, false
	}
	switch sort.column() {
	case "name":
		i := bytes.Index(doc, []byte(`,"name":"`))
		if i < 0 {
			return cursor{}, false
		}
		s, ok := jsonStringAt(doc, i+len(`,"name":`))
		if !ok {
			return cursor{}, false
		}
		c.Name = s
	case "published_at", "updated_at":
		key := `,"` + sort.column() + `":`
		i := bytes.LastIndex(doc, []byte(key))
		if i < 0 {
			return cursor{}, false
		}
		s, ok := jsonStringAt(doc, i+len(key))
		if !ok {
			return cursor{}, false
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return cursor{}, false
		}
		c.Time = t.UnixMicro()
	default:
		return cursor{}, false
	}
	return c, true
}

// jsonStringAt decodes the JSON string literal starting at doc[i].
func jsonStringAt(doc []byte, i int) (string, bool) {
	if i >= len(doc) || doc[i] != '"' {
		return "", false
	}
	escaped := false
	for j := i + 1; j < len(doc); j++ {
		switch doc[j] {
		case '\\':
			escaped = true
			j++ // skip the escaped byte
		case '"':
			if !escaped {
				return string(doc[i+1 : j]), true
			}
			var s string
			if err := json.Unmarshal(doc[i:j+1], &s); err != nil {
				return "", false
			}
			return s, true
		}
	}
	return "", false
}
