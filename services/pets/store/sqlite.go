package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"time"

	"modernc.org/sqlite" // also registers the pure-Go "sqlite" driver
)

// SQLite connection settings. WAL lets readers run beside the one writer
// (also across processes); busy_timeout makes a writer wait for the lock
// held by another connection or process instead of failing; _txlock=
// immediate takes the write lock at BEGIN, so that a transaction never has
// to upgrade a read lock (the upgrade is what fails with SQLITE_BUSY when
// processes race).
var sqlitePragmas = []string{
	"busy_timeout(10000)",
	"journal_mode(WAL)",
	"synchronous(NORMAL)",
	"foreign_keys(1)",
	"cache_size(-16384)", // 16 MiB of page cache per connection
	// Reads through a shared memory map instead of read(2) into each
	// connection's cache: list pages whose rows are not in that cache
	// cost about 1.4x less CPU (README, Benchmark).
	"mmap_size(268435456)",
}

// SQLitePath returns the file path of a SQLite DSN: sqlite://PATH,
// sqlite:PATH, file:PATH or PATH, with any ?query removed.
func SQLitePath(dsn string) string {
	p := dsn
	for _, prefix := range []string{"sqlite://", "sqlite:", "file:"} {
		if strings.HasPrefix(p, prefix) {
			p = strings.TrimPrefix(p, prefix)
			break
		}
	}
	p, _, _ = strings.Cut(p, "?")
	return p
}

// OpenSQLite opens (creating if needed) the SQLite database of dsn and
// applies pending migrations. Query parameters of dsn are passed to the
// driver after the defaults (e.g. ?_pragma=cache_size(-20000)).
func OpenSQLite(ctx context.Context, dsn string, opts Options) (*SQLStore, error) {
	path := SQLitePath(dsn)
	if path == "" {
		return nil, fmt.Errorf("%w: sqlite dsn %q names no file", ErrInvalid, dsn)
	}
	if path == ":memory:" || strings.Contains(dsn, "mode=memory") {
		return nil, fmt.Errorf("%w: in-memory sqlite is not supported (each connection would see its own database); use a file", ErrInvalid)
	}
	q := url.Values{}
	if _, raw, ok := strings.Cut(dsn, "?"); ok {
		extra, err := url.ParseQuery(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: sqlite dsn query: %v", ErrInvalid, err)
		}
		q = extra
	}
	q["_pragma"] = append(append([]string{}, sqlitePragmas...), q["_pragma"]...)
	q.Set("_txlock", "immediate")
	dsnFull := "file:" + path + "?" + q.Encode()
	db, err := sql.Open("sqlite", dsnFull)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	n := opts.MaxOpenConns
	if n <= 0 {
		n = max(4, runtime.GOMAXPROCS(0)*2)
	}
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	s, err := newSQLStore(db, dialect{system: "sqlite"}, opts)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	if s.shared, err = newDataVersionWatch(dsnFull, path); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	if err := migrateSQLite(ctx, s); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("migrate sqlite %s: %w", path, err)
	}
	// A read-only database (the process restarted while its file was
	// made read-only) still serves reads: the statistics wait for a
	// start on a writable one.
	if err := tuneStats(ctx, db); err != nil && classify(err) == nil {
		_ = db.Close()
		return nil, fmt.Errorf("optimize sqlite %s: %w", path, err)
	}
	return s, nil
}

// migrateSQLite applies the migrations, trying again for a few seconds
// while SQLite answers SQLITE_BUSY. busy_timeout does not cover every
// case: a connection can get SQLITE_BUSY at once while another one
// switches a new file to WAL or recovers its WAL, which is what two pets
// instances starting together on one new file (make run) do; seen in
// TestConcurrentMigrations under load, about 5 in 100 runs.
func migrateSQLite(ctx context.Context, s *SQLStore) error {
	for try := 1; ; try++ {
		err := s.migrate(ctx, "sqlite", nil)
		if err == nil || !isSQLiteBusy(err) || try == 20 {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(min(try, 5)) * 50 * time.Millisecond):
		}
	}
}

// isSQLiteBusy reports SQLITE_BUSY or SQLITE_LOCKED (any extended code).
func isSQLiteBusy(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code() & 0xff
	return c == sqliteBusy || c == sqliteLocked
}

// tuneStats refreshes the planner statistics cheaply (a no-op when they
// are fresh) and then drops the STAT4 samples that ANALYZE collects in
// this build. With STAT4 samples SQLite recompiles a prepared statement
// whenever a bound value could change the plan, i.e. on nearly every list
// query, which costs more than the plans it could improve here; the
// per-index averages of STAT1 stay.
func tuneStats(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `PRAGMA optimize=0x10002`); err != nil {
		return err
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat4'`).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	var samples int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_stat4`).Scan(&samples); err != nil {
		return err
	}
	if samples > 0 {
		if _, err := db.ExecContext(ctx, `DELETE FROM sqlite_stat4`); err != nil {
			return err
		}
		// Make the connections reload the statistics.
		if _, err := db.ExecContext(ctx, `ANALYZE sqlite_schema`); err != nil {
			return err
		}
	}
	return nil
}
