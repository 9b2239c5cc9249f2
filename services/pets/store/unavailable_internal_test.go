package store

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestClassifyPostgres: the SQLSTATEs that are the database's state (and
// only those) are ErrUnavailable with their reason. The real-server tests
// (services/pets unavailable_test.go) produce 25006 and 53100; this table
// covers the classes they cannot.
func TestClassifyPostgres(t *testing.T) {
	for _, tc := range []struct {
		desc, code string
		want       string // reason, "" for not unavailable
	}{
		{"read-only transaction", "25006", ReasonReadOnly},
		{"disk full", "53100", ReasonFull},
		{"out of memory", "53200", ReasonUnavailable},
		{"too many connections", "53300", ReasonUnavailable},
		{"connection failure", "08006", ReasonUnavailable},
		{"admin shutdown", "57P01", ReasonUnavailable},
		{"cannot connect now", "57P03", ReasonUnavailable},
		{"query canceled (57014) is the request's", "57014", ""},
		{"unique violation", "23505", ""},
		{"undefined table", "42P01", ""},
		{"serialization failure", "40001", ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			err := fmt.Errorf("upsert pet: %w", &pgconn.PgError{Code: tc.code, Message: "x"})
			ue := classify(err)
			switch {
			case tc.want == "" && ue != nil:
				t.Fatalf("classified as %q, want not unavailable", ue.Reason)
			case tc.want != "" && (ue == nil || ue.Reason != tc.want):
				t.Fatalf("classified as %v, want %q", ue, tc.want)
			case ue != nil && (!errors.Is(ue, ErrUnavailable) || !errors.Is(ue, err)):
				t.Fatalf("%v does not match ErrUnavailable and its cause", ue)
			}
		})
	}
	if classify(ErrNotFound) != nil || classify(nil) != nil {
		t.Fatal("ErrNotFound or nil classified as unavailable")
	}
}
