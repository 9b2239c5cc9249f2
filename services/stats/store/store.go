// Package store keeps request statistics in SQLite as pre-aggregated rows
// holding serialized HDR histograms, and answers window queries from them.
//
// Each event is folded into three resolutions at write time: 1-minute,
// 15-minute and 1-hour rows keyed by (bucket start, route, status,
// subject). A query reads only the resolution its window needs (see
// ParseWindow), so a 7-day query reads at most 168 rows per key instead
// of 10,080 minute rows. Pet views (events naming a pet) are counted per
// hour and pet id.
//
// A Store is safe for concurrent use. Writes are serialized by the Store;
// reads run concurrently with writes (WAL).
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Event is one request seen by the edge.
type Event struct {
	Time      time.Time
	Route     string
	Method    string
	Path      string
	Status    int
	LatencyMS float64
	Subject   string
	PetID     string
	TraceID   string
	Upstream  string
}

// IsError reports whether the event counts as an error (5xx).
func (e Event) IsError() bool { return e.Status >= 500 }

// ViewedPet returns the pet an event counts as a view of, or "". A view is
// a successful (status below 400) event that names a pet in pet_id, or a
// successful GET of /pets/{id}.
func (e Event) ViewedPet() string {
	if e.Status >= 400 {
		return ""
	}
	if e.PetID != "" {
		return e.PetID
	}
	if e.Method != "GET" {
		return ""
	}
	p, _, _ := strings.Cut(e.Path, "?")
	id, ok := strings.CutPrefix(p, "/pets/")
	if !ok || id == "" || strings.ContainsAny(id, "/:") {
		return ""
	}
	return id
}

// Resolutions (bucket widths) of the stored rows.
const (
	ResMinute  = time.Minute
	ResQuarter = 15 * time.Minute
	ResHour    = time.Hour
)

var resolutions = [...]time.Duration{ResMinute, ResQuarter, ResHour}

// horizon is how long rows of a resolution are useful: the longest window
// read at that resolution plus one bucket of slack. Retention may shorten it.
func horizon(res time.Duration) time.Duration {
	switch res {
	case ResMinute:
		return 2 * time.Hour
	case ResQuarter:
		return 25 * time.Hour
	default:
		return 0 // only the retention applies
	}
}

// Window is a query window: Span of time split into buckets of Res.
type Window struct {
	Name string
	Span time.Duration
	Res  time.Duration
}

// Buckets is the number of buckets in the window.
func (w Window) Buckets() int { return int(w.Span / w.Res) }

// Range returns the start of the first bucket and the start of the last
// (current, partial) bucket at now. Windows are aligned to bucket
// boundaries: the last bucket is the one holding now.
func (w Window) Range(now time.Time) (first, last time.Time) {
	last = now.UTC().Truncate(w.Res)
	first = last.Add(-time.Duration(w.Buckets()-1) * w.Res)
	return first, last
}

// WindowNames lists the accepted window names.
const WindowNames = "1h, 24h or 7d"

// ParseWindow maps 1h, 24h and 7d to their bucket resolution: 1h in
// 1-minute buckets, 24h in 15-minute buckets, 7d in 1-hour buckets.
func ParseWindow(s string) (Window, bool) {
	switch s {
	case "1h":
		return Window{Name: s, Span: time.Hour, Res: ResMinute}, true
	case "24h":
		return Window{Name: s, Span: 24 * time.Hour, Res: ResQuarter}, true
	case "7d":
		return Window{Name: s, Span: 7 * 24 * time.Hour, Res: ResHour}, true
	}
	return Window{}, false
}

// Dimensions a query may group by.
const (
	ByRoute   = "route"
	ByStatus  = "status"
	BySubject = "subject"
)

// ValidBy reports whether s names a dimension.
func ValidBy(s string) bool { return s == ByRoute || s == ByStatus || s == BySubject }

// Store is the SQLite-backed statistics store.
type Store struct {
	db *sql.DB
	// wmu serializes writers (ingest and retention) so that a
	// read-modify-write transaction never races another writer.
	wmu sync.Mutex
}

const schema = `
CREATE TABLE IF NOT EXISTS agg (
	res     INTEGER NOT NULL, -- bucket width in seconds
	start   INTEGER NOT NULL, -- bucket start, unix seconds
	route   TEXT    NOT NULL,
	status  INTEGER NOT NULL,
	subject TEXT    NOT NULL,
	count   INTEGER NOT NULL,
	errors  INTEGER NOT NULL,
	hist    BLOB    NOT NULL, -- HdrHistogram V2 compressed encoding, microseconds
	PRIMARY KEY (res, start, route, status, subject)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS views (
	start  INTEGER NOT NULL, -- hour start, unix seconds
	pet_id TEXT    NOT NULL,
	count  INTEGER NOT NULL,
	PRIMARY KEY (start, pet_id)
) WITHOUT ROWID;
`

// Open opens (creating if needed) the database at path in WAL mode.
func Open(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("create schema in %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("ping sqlite: %w", err)
	}
	return nil
}

type aggKey struct {
	res     int64
	start   int64
	route   string
	status  int
	subject string
}

type acc struct {
	count, errors int64
	h             *hdrhistogram.Histogram
}

type viewKey struct {
	start int64
	pet   string
}

// Write folds evs into the stored aggregates in one transaction.
func (s *Store) Write(ctx context.Context, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	aggs := make(map[aggKey]*acc)
	views := make(map[viewKey]int64)
	for _, e := range evs {
		t := e.Time.UTC()
		v := micros(e.LatencyMS)
		for _, res := range resolutions {
			k := aggKey{res: int64(res / time.Second), start: t.Truncate(res).Unix(), route: e.Route, status: e.Status, subject: e.Subject}
			a := aggs[k]
			if a == nil {
				a = &acc{h: newHist()}
				aggs[k] = a
			}
			a.count++
			if e.IsError() {
				a.errors++
			}
			_ = a.h.RecordValue(v) // v is clamped into the trackable range
		}
		if pet := e.ViewedPet(); pet != "" {
			views[viewKey{start: t.Truncate(ResHour).Unix(), pet: pet}]++
		}
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	sel, err := tx.PrepareContext(ctx, `SELECT count, errors, hist FROM agg WHERE res=? AND start=? AND route=? AND status=? AND subject=?`)
	if err != nil {
		return fmt.Errorf("prepare select: %w", err)
	}
	defer sel.Close()
	up, err := tx.PrepareContext(ctx, `INSERT INTO agg (res, start, route, status, subject, count, errors, hist) VALUES (?,?,?,?,?,?,?,?)
		ON CONFLICT (res, start, route, status, subject) DO UPDATE SET count=excluded.count, errors=excluded.errors, hist=excluded.hist`)
	if err != nil {
		return fmt.Errorf("prepare upsert: %w", err)
	}
	defer up.Close()
	var cs []counter
	for k, a := range aggs {
		var (
			count, errs int64
			blob        []byte
		)
		snap := a.h.Export()
		err := sel.QueryRowContext(ctx, k.res, k.start, k.route, k.status, k.subject).Scan(&count, &errs, &blob)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return fmt.Errorf("read aggregate: %w", err)
		default:
			if cs, err = decodeCounters(cs[:0], blob, len(snap.Counts)); err != nil {
				return fmt.Errorf("aggregate %s/%d/%d: %w", k.route, k.status, k.start, err)
			}
			addCounters(snap.Counts, cs)
			a.count += count
			a.errors += errs
		}
		if _, err := up.ExecContext(ctx, k.res, k.start, k.route, k.status, k.subject, a.count, a.errors, encodeCounts(snap.Counts)); err != nil {
			return fmt.Errorf("write aggregate: %w", err)
		}
	}
	for k, n := range views {
		if _, err := tx.ExecContext(ctx, `INSERT INTO views (start, pet_id, count) VALUES (?,?,?)
			ON CONFLICT (start, pet_id) DO UPDATE SET count = count + excluded.count`, k.start, k.pet, n); err != nil {
			return fmt.Errorf("write views: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// Prune deletes rows that ended before now-retention, and rows of the
// finer resolutions that no window reads any more. It returns the number
// of rows deleted.
func (s *Store) Prune(ctx context.Context, now time.Time, retention time.Duration) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var total int64
	for _, res := range resolutions {
		keep := retention
		if h := horizon(res); h > 0 && h < keep {
			keep = h
		}
		cutoff := now.Add(-keep).Unix()
		r, err := s.db.ExecContext(ctx, `DELETE FROM agg WHERE res = ? AND start + res <= ?`, int64(res/time.Second), cutoff)
		if err != nil {
			return total, fmt.Errorf("prune %v rows: %w", res, err)
		}
		n, _ := r.RowsAffected()
		total += n
	}
	r, err := s.db.ExecContext(ctx, `DELETE FROM views WHERE start + 3600 <= ?`, now.Add(-retention).Unix())
	if err != nil {
		return total, fmt.Errorf("prune views: %w", err)
	}
	n, _ := r.RowsAffected()
	return total + n, nil
}

// Summary is the count, errors and latency of a set of requests.
type Summary struct {
	Count      int64   `json:"count"`
	Errors     int64   `json:"errors"`
	ErrorRatio float64 `json:"error_ratio"`
	Latency    Latency `json:"latency_ms"`
}

// Group is the summary of one value of the grouping dimension.
type Group struct {
	Key string `json:"key"`
	Summary
}

// Bucket is one time bucket of a window.
type Bucket struct {
	Start  time.Time `json:"start"`
	Count  int64     `json:"count"`
	Errors int64     `json:"errors"`
	P99    float64   `json:"p99_ms"`
}

// Report answers a requests query.
type Report struct {
	Window  string    `json:"window"`
	By      string    `json:"by"`
	Bucket  string    `json:"bucket"`
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	Overall Summary   `json:"overall"`
	Groups  []Group   `json:"groups"`
	Buckets []Bucket  `json:"buckets"`
}

// merged accumulates rows: counts of the stored histogram configuration.
type merged struct {
	count, errors int64
	counts        []int64
}

func (m *merged) add(count, errs int64, cs []counter) {
	if m.counts == nil {
		m.counts = newCounts()
	}
	m.count += count
	m.errors += errs
	addCounters(m.counts, cs)
}

func (m *merged) latency() Latency {
	if m.counts == nil {
		return Latency{}
	}
	return latencyOf(histFromCounts(m.counts))
}

func (m *merged) summary() Summary {
	s := Summary{Count: m.count, Errors: m.errors, Latency: m.latency()}
	if m.count > 0 {
		s.ErrorRatio = float64(m.errors) / float64(m.count)
	}
	return s
}

// Requests summarizes the window ending at now, grouped by by (one of
// ByRoute, ByStatus, BySubject).
func (s *Store) Requests(ctx context.Context, w Window, by string, now time.Time) (*Report, error) {
	if !ValidBy(by) {
		return nil, fmt.Errorf("group by %q: want route, status or subject", by)
	}
	first, last := w.Range(now)
	res := int64(w.Res / time.Second)
	rows, err := s.db.QueryContext(ctx, `SELECT start, route, status, subject, count, errors, hist FROM agg
		WHERE res = ? AND start >= ? AND start <= ?`, res, first.Unix(), last.Unix())
	if err != nil {
		return nil, fmt.Errorf("query aggregates: %w", err)
	}
	defer rows.Close()
	n := w.Buckets()
	buckets := make([]merged, n)
	groups := make(map[string]*merged)
	var (
		overall   merged
		cs        []counter
		countsLen = len(newCounts())
	)
	for rows.Next() {
		var (
			start, count, errs int64
			route, subject     string
			status             int
			blob               []byte
		)
		if err := rows.Scan(&start, &route, &status, &subject, &count, &errs, &blob); err != nil {
			return nil, fmt.Errorf("scan aggregate: %w", err)
		}
		if cs, err = decodeCounters(cs[:0], blob, countsLen); err != nil {
			return nil, fmt.Errorf("aggregate %s/%d/%d: %w", route, status, start, err)
		}
		var key string
		switch by {
		case ByRoute:
			key = route
		case ByStatus:
			key = strconv.Itoa(status)
		case BySubject:
			key = subject
		}
		g := groups[key]
		if g == nil {
			g = &merged{}
			groups[key] = g
		}
		g.add(count, errs, cs)
		overall.add(count, errs, cs)
		if i := int((start - first.Unix()) / res); i >= 0 && i < n {
			buckets[i].add(count, errs, cs)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read aggregates: %w", err)
	}
	rep := &Report{
		Window:  w.Name,
		By:      by,
		Bucket:  w.Res.String(),
		From:    first,
		To:      now.UTC(),
		Overall: overall.summary(),
		Groups:  make([]Group, 0, len(groups)),
		Buckets: make([]Bucket, n),
	}
	for k, g := range groups {
		rep.Groups = append(rep.Groups, Group{Key: k, Summary: g.summary()})
	}
	slices.SortFunc(rep.Groups, func(a, b Group) int {
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Key, b.Key)
	})
	for i := range buckets {
		b := Bucket{Start: first.Add(time.Duration(i) * w.Res), Count: buckets[i].count, Errors: buckets[i].errors}
		b.P99 = buckets[i].latency().P99
		rep.Buckets[i] = b
	}
	return rep, nil
}

// PetViews is the view count of one pet.
type PetViews struct {
	PetID string `json:"pet_id"`
	Views int64  `json:"views"`
}

// TopViewed returns the n most viewed pets in the hours of the window
// ending at now (aligned to whole hours), most viewed first.
func (s *Store) TopViewed(ctx context.Context, span time.Duration, n int, now time.Time) ([]PetViews, error) {
	last := now.UTC().Truncate(ResHour)
	hours := int(span / ResHour)
	if hours < 1 {
		hours = 1
	}
	first := last.Add(-time.Duration(hours-1) * ResHour)
	rows, err := s.db.QueryContext(ctx, `SELECT pet_id, SUM(count) AS c FROM views WHERE start >= ? AND start <= ?
		GROUP BY pet_id ORDER BY c DESC, pet_id ASC LIMIT ?`, first.Unix(), last.Unix(), n)
	if err != nil {
		return nil, fmt.Errorf("query views: %w", err)
	}
	defer rows.Close()
	out := []PetViews{}
	for rows.Next() {
		var pv PetViews
		if err := rows.Scan(&pv.PetID, &pv.Views); err != nil {
			return nil, fmt.Errorf("scan views: %w", err)
		}
		out = append(out, pv)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read views: %w", err)
	}
	return out, nil
}
