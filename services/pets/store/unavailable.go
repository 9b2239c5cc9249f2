package store

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
)

// ErrUnavailable is matched (errors.Is) by every store error that is the
// database's state rather than the request's fault: a read-only or full
// database, an I/O error, a connection that failed. The request may
// succeed later unchanged; the API answers 503 with Retry-After.
var ErrUnavailable = errors.New("database unavailable")

// Reasons of an UnavailableError.
const (
	ReasonReadOnly    = "read-only"   // SQLITE_READONLY*, SQLSTATE 25006
	ReasonFull        = "full"        // SQLITE_FULL, SQLSTATE 53100
	ReasonUnavailable = "unavailable" // I/O errors, busy past the timeout, connection failures, shutdown
)

// UnavailableError is a store error classified as the database's state.
// It matches ErrUnavailable and unwraps to the driver's error.
type UnavailableError struct {
	Reason string // ReasonReadOnly, ReasonFull or ReasonUnavailable
	Err    error
}

func (e *UnavailableError) Error() string { return fmt.Sprintf("database %s: %v", e.Reason, e.Err) }

// Unwrap returns ErrUnavailable and the cause.
func (e *UnavailableError) Unwrap() []error { return []error{ErrUnavailable, e.Err} }

// SQLite primary result codes (the low byte of an extended code).
const (
	sqliteBusy     = 5
	sqliteLocked   = 6
	sqliteReadOnly = 8
	sqliteIOErr    = 10
	sqliteFull     = 13
	sqliteCantOpen = 14
	sqlitePerm     = 3
)

// classify returns err as an *UnavailableError when the database's state
// caused it, or nil.
func classify(err error) *UnavailableError {
	if err == nil {
		return nil
	}
	var ue *UnavailableError
	if errors.As(err, &ue) {
		return ue
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqliteReadOnly, sqlitePerm:
			return &UnavailableError{Reason: ReasonReadOnly, Err: err}
		case sqliteFull:
			return &UnavailableError{Reason: ReasonFull, Err: err}
		case sqliteIOErr, sqliteCantOpen, sqliteBusy, sqliteLocked:
			return &UnavailableError{Reason: ReasonUnavailable, Err: err}
		}
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "25006": // read_only_sql_transaction
			return &UnavailableError{Reason: ReasonReadOnly, Err: err}
		case pe.Code == "53100": // disk_full
			return &UnavailableError{Reason: ReasonFull, Err: err}
		case len(pe.Code) == 5 && (pe.Code[:2] == "53" || pe.Code[:2] == "08" || pe.Code[:3] == "57P"):
			// insufficient resources, connection exceptions, operator
			// intervention (shutdown, cannot connect now)
			return &UnavailableError{Reason: ReasonUnavailable, Err: err}
		}
		return nil
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return &UnavailableError{Reason: ReasonUnavailable, Err: err}
	}
	return nil
}

// unavailable classifies err (see classify). A read-only or full error
// may come from a connection that stays so (a SQLite connection opened
// while the file was read-only, a PostgreSQL session that took
// default_transaction_read_only): the idle connections, the failed one
// among them once its transaction is rolled back, are closed, so that
// writes work again as soon as the database does.
func (s *SQLStore) unavailable(err error) error {
	ue := classify(err)
	if ue == nil {
		return err
	}
	if ue.Reason != ReasonUnavailable {
		n := s.db.Stats().MaxOpenConnections
		s.db.SetMaxIdleConns(0) // closes every idle connection
		s.db.SetMaxIdleConns(n)
	}
	if errors.Is(err, ErrUnavailable) {
		return err
	}
	return ue
}
