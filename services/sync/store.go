package syncsvc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// Run statuses.
const (
	StatusRunning     = "running"
	StatusSucceeded   = "succeeded"
	StatusFailed      = "failed"
	StatusInterrupted = "interrupted"
)

// Run triggers.
const (
	TriggerSchedule = "schedule"
	TriggerStart    = "start"
	TriggerManual   = "manual"
)

// RunRecord is one sync run as stored and served.
type RunRecord struct {
	ID         string     `json:"id"`
	Status     string     `json:"status"`
	Trigger    string     `json:"trigger"`
	Full       bool       `json:"full"`
	Since      *time.Time `json:"since"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	Pages      int        `json:"pages"`
	Fetched    int        `json:"fetched"`
	Upserted   int        `json:"upserted"`
	Inserted   int        `json:"inserted"`
	Updated    int        `json:"updated"`
	Unchanged  int        `json:"unchanged"`
	Failed     int        `json:"failed"`
	Error      string     `json:"error"`
	// HighWater is the newest published_at seen by the run (carried over
	// from the previous run when nothing new was seen); the next
	// incremental run asks for animals published after it.
	HighWater *time.Time `json:"high_water"`
	Instance  string     `json:"instance"`
}

// ErrNotFound is returned for an unknown run id.
var ErrNotFound = errors.New("run not found")

// Store keeps the run history in SQLite (WAL, so several processes may
// share one file). It is safe for concurrent use.
type Store struct{ db *sql.DB }

const tsLayout = "2006-01-02T15:04:05.000000000Z"

const schema = `
CREATE TABLE IF NOT EXISTS runs (
	id          TEXT PRIMARY KEY,
	status      TEXT NOT NULL,
	trigger     TEXT NOT NULL,
	full        INTEGER NOT NULL,
	since       TEXT,
	started_at  TEXT NOT NULL,
	finished_at TEXT,
	pages       INTEGER NOT NULL DEFAULT 0,
	fetched     INTEGER NOT NULL DEFAULT 0,
	inserted    INTEGER NOT NULL DEFAULT 0,
	updated     INTEGER NOT NULL DEFAULT 0,
	unchanged   INTEGER NOT NULL DEFAULT 0,
	failed      INTEGER NOT NULL DEFAULT 0,
	error       TEXT NOT NULL DEFAULT '',
	high_water  TEXT,
	instance    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, started_at DESC);
`

// OpenStore opens (creating if needed) the SQLite database at path.
func OpenStore(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(4)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Ping checks the database.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

func fmtTime(t *time.Time) any {
	if t == nil || t.IsZero() {
		return nil
	}
	return t.UTC().Format(tsLayout)
}

// Insert stores a new run.
func (s *Store) Insert(ctx context.Context, r RunRecord) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO runs (id, status, trigger, full, since, started_at, instance) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.Status, r.Trigger, r.Full, fmtTime(r.Since), r.StartedAt.UTC().Format(tsLayout), r.Instance)
	if err != nil {
		return fmt.Errorf("insert run: %w", err)
	}
	return nil
}

// Update writes the progress or outcome of r.
func (s *Store) Update(ctx context.Context, r RunRecord) error {
	_, err := s.db.ExecContext(ctx, `UPDATE runs SET status = ?, finished_at = ?, pages = ?, fetched = ?, inserted = ?, updated = ?,
		unchanged = ?, failed = ?, error = ?, high_water = ? WHERE id = ?`,
		r.Status, fmtTime(r.FinishedAt), r.Pages, r.Fetched, r.Inserted, r.Updated, r.Unchanged, r.Failed, r.Error, fmtTime(r.HighWater), r.ID)
	if err != nil {
		return fmt.Errorf("update run %s: %w", r.ID, err)
	}
	return nil
}

// MarkInterrupted marks every run still "running" as interrupted. Call
// it only while holding the executor lock: then no live process can be
// executing them.
func (s *Store) MarkInterrupted(ctx context.Context, now time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE status = ?`,
		StatusInterrupted, now.UTC().Format(tsLayout), "the process stopped before the run finished", StatusRunning)
	if err != nil {
		return 0, fmt.Errorf("mark interrupted runs: %w", err)
	}
	return res.RowsAffected()
}

const cols = `id, status, trigger, full, since, started_at, finished_at, pages, fetched, inserted, updated, unchanged, failed, error, high_water, instance`

func scanRun(sc interface{ Scan(...any) error }) (RunRecord, error) {
	var (
		r                     RunRecord
		since, finished, high sql.NullString
		started               string
	)
	if err := sc.Scan(&r.ID, &r.Status, &r.Trigger, &r.Full, &since, &started, &finished, &r.Pages, &r.Fetched,
		&r.Inserted, &r.Updated, &r.Unchanged, &r.Failed, &r.Error, &high, &r.Instance); err != nil {
		return RunRecord{}, err
	}
	parse := func(ns sql.NullString) *time.Time {
		if !ns.Valid {
			return nil
		}
		t, err := time.Parse(tsLayout, ns.String)
		if err != nil {
			return nil
		}
		return &t
	}
	r.Since, r.FinishedAt, r.HighWater = parse(since), parse(finished), parse(high)
	if t := parse(sql.NullString{String: started, Valid: true}); t != nil {
		r.StartedAt = *t
	}
	r.Upserted = r.Inserted + r.Updated
	return r, nil
}

// Get returns one run or ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (RunRecord, error) {
	r, err := scanRun(s.db.QueryRowContext(ctx, `SELECT `+cols+` FROM runs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return RunRecord{}, ErrNotFound
	}
	if err != nil {
		return RunRecord{}, fmt.Errorf("get run %s: %w", id, err)
	}
	return r, nil
}

// List returns up to limit runs, newest first.
func (s *Store) List(ctx context.Context, limit int) ([]RunRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+cols+` FROM runs ORDER BY started_at DESC, id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	defer rows.Close()
	out := []RunRecord{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, fmt.Errorf("list runs: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// LastSucceeded returns the newest succeeded run (a full one when
// fullOnly), or ErrNotFound.
func (s *Store) LastSucceeded(ctx context.Context, fullOnly bool) (RunRecord, error) {
	q := `SELECT ` + cols + ` FROM runs WHERE status = ?`
	if fullOnly {
		q += ` AND full = 1`
	}
	r, err := scanRun(s.db.QueryRowContext(ctx, q+` ORDER BY started_at DESC, id DESC LIMIT 1`, StatusSucceeded))
	if errors.Is(err, sql.ErrNoRows) {
		return RunRecord{}, ErrNotFound
	}
	if err != nil {
		return RunRecord{}, fmt.Errorf("last succeeded run: %w", err)
	}
	return r, nil
}
