package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Store persists pets. Implementations are safe for concurrent use by
// many goroutines, and several processes may share one database.
type Store interface {
	// Upsert writes pets keyed by (Source, SourceID) in one transaction
	// and counts what changed; identical content is left untouched and
	// counted as unchanged. Inputs must have been validated.
	Upsert(ctx context.Context, pets []PetInput) (UpsertResult, error)
	// Get returns the pet or an error wrapping ErrNotFound.
	Get(ctx context.Context, id string) (Pet, error)
	// GetJSON is Get returning the pet's JSON encoding as stored.
	GetJSON(ctx context.Context, id string) (json.RawMessage, error)
	// List returns one page; errors wrap ErrBadCursor or ErrInvalid for
	// bad queries.
	List(ctx context.Context, q ListQuery) (ListResult, error)
	// AppendListJSON is List appending the page's pets to dst as the
	// elements of a JSON array (the stored encodings, comma-separated,
	// without brackets). It is the fast path of the API, which neither
	// decodes nor re-encodes pets.
	AppendListJSON(ctx context.Context, dst []byte, q ListQuery) (out []byte, nextCursor string, err error)
	// Delete removes the pet or returns an error wrapping ErrNotFound.
	Delete(ctx context.Context, id string) error
	// Count returns the number of pets.
	Count(ctx context.Context) (int64, error)
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Close releases the connections.
	Close() error
}

// Options tune a store. The zero value is valid.
type Options struct {
	// Tracer starts a client span per database call; none when nil.
	Tracer trace.Tracer
	// Registerer receives petmesh_pets_store_* metrics; none when nil.
	Registerer prometheus.Registerer
	// MaxOpenConns bounds the connection pool; 0 picks a default per store.
	MaxOpenConns int
}

// Open opens the store named by dsn and applies pending migrations:
// postgres:// or postgresql:// URLs open PostgreSQL; sqlite://PATH,
// file:PATH or a plain file path open SQLite.
func Open(ctx context.Context, dsn string, opts Options) (*SQLStore, error) {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return OpenPostgres(ctx, dsn, opts)
	case dsn == "":
		return nil, fmt.Errorf("%w: empty database dsn", ErrInvalid)
	default:
		if i := strings.Index(dsn, "://"); i >= 0 && dsn[:i] != "sqlite" {
			return nil, fmt.Errorf("%w: unsupported database scheme %q (want sqlite or postgres)", ErrInvalid, dsn[:i])
		}
		return OpenSQLite(ctx, dsn, opts)
	}
}

// dialect holds what differs between the SQL databases.
type dialect struct {
	// system is the OpenTelemetry db.system value.
	system string
	// dollar placeholders ($1) instead of ?.
	dollar bool
	// textDoc binds doc as text rather than bytes.
	textDoc bool
}

// SQLStore is the database/sql implementation of Store used for both
// SQLite and PostgreSQL.
type SQLStore struct {
	db     *sql.DB
	d      dialect
	tracer trace.Tracer
	dur    *prometheus.HistogramVec

	mu    sync.RWMutex
	stmts map[string]*sql.Stmt

	// writes counts writes through this store and shared watches other
	// processes' commits (SQLite only), for DataVersion.
	writes atomic.Uint64
	shared *dataVersionWatch
}

var _ Store = (*SQLStore)(nil)

func newSQLStore(db *sql.DB, d dialect, opts Options) (*SQLStore, error) {
	s := &SQLStore{db: db, d: d, tracer: opts.Tracer, stmts: map[string]*sql.Stmt{}}
	if s.tracer == nil {
		s.tracer = noop.NewTracerProvider().Tracer("")
	}
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "petmesh_pets_store_query_duration_seconds",
		Help:    "Duration of pets store operations by operation and result.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"operation", "result"})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(dur); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("register store metrics: %w", err)
			}
			dur = are.ExistingCollector.(*prometheus.HistogramVec)
		}
	}
	s.dur = dur
	return s, nil
}

// DB exposes the handle for tests and tools (bulk seeding).
func (s *SQLStore) DB() *sql.DB { return s.db }

// System is the OpenTelemetry db.system of the store: sqlite or postgresql.
func (s *SQLStore) System() string { return s.d.system }

// Close implements Store.
func (s *SQLStore) Close() error {
	s.mu.Lock()
	for k, st := range s.stmts {
		_ = st.Close()
		delete(s.stmts, k)
	}
	s.mu.Unlock()
	if s.shared != nil {
		s.shared.close()
	}
	return s.db.Close()
}

// observe starts a client span for one database operation and returns the
// context to run it with and a func that ends the span and records the
// duration.
func (s *SQLStore) observe(ctx context.Context, op, verb string) (context.Context, func(error)) {
	start := time.Now()
	ctx, span := s.tracer.Start(ctx, verb+" pets",
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			// The current database semantic conventions, and the
			// pre-1.26 names that older backends and dashboards read.
			semconv.DBSystemNameKey.String(s.d.system),
			semconv.DBOperationName(verb),
			semconv.DBCollectionName("pets"),
			attribute.String("db.system", s.d.system),
			attribute.String("db.operation", verb),
			attribute.String("db.sql.table", "pets"),
			attribute.String("petmesh.store.operation", op),
		))
	return ctx, func(err error) {
		result := "ok"
		if err != nil && !errors.Is(err, ErrNotFound) {
			result = "error"
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		s.dur.WithLabelValues(op, result).Observe(time.Since(start).Seconds())
	}
}

// rebind turns ? placeholders into $n for PostgreSQL. Queries in this
// package never hold a ? inside a literal.
func (s *SQLStore) rebind(q string) string {
	if !s.d.dollar {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// stmt returns a prepared statement for q (in ? form), preparing it once.
// The set of queries is bounded (filter combinations × sorts), so the
// cache is too.
func (s *SQLStore) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	s.mu.RLock()
	st, ok := s.stmts[q]
	s.mu.RUnlock()
	if ok {
		return st, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.stmts[q]; ok {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, s.rebind(q))
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	s.stmts[q] = st
	return st, nil
}

// decodePet decodes a stored doc.
func decodePet(doc []byte, p *Pet) error {
	if err := json.Unmarshal(doc, p); err != nil {
		return fmt.Errorf("decode stored pet: %w", err)
	}
	if p.Photos == nil {
		p.Photos = []string{}
	}
	return nil
}

// Get implements Store.
func (s *SQLStore) Get(ctx context.Context, id string) (Pet, error) {
	var p Pet
	doc, err := s.GetJSON(ctx, id)
	if err != nil {
		return p, err
	}
	return p, decodePet(doc, &p)
}

// GetJSON implements Store.
func (s *SQLStore) GetJSON(ctx context.Context, id string) (doc json.RawMessage, err error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	ctx, done := s.observe(ctx, "get", "SELECT")
	defer func() { done(err) }()
	defer func() { err = s.unavailable(err) }()
	st, err := s.stmt(ctx, `SELECT doc FROM pets WHERE id = ?`)
	if err != nil {
		return nil, err
	}
	if err := st.QueryRowContext(ctx, id).Scan((*[]byte)(&doc)); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, fmt.Errorf("get pet %s: %w", id, err)
	}
	return doc, nil
}

// Delete implements Store.
func (s *SQLStore) Delete(ctx context.Context, id string) (err error) {
	if !ValidID(id) {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	ctx, done := s.observe(ctx, "delete", "DELETE")
	defer func() { done(err) }()
	defer func() { err = s.unavailable(err) }()
	defer s.wrote()
	res, err := s.db.ExecContext(ctx, s.rebind(`DELETE FROM pets WHERE id = ?`), id)
	if err != nil {
		return fmt.Errorf("delete pet %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete pet %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil
}

// Count implements Store.
func (s *SQLStore) Count(ctx context.Context) (n int64, err error) {
	ctx, done := s.observe(ctx, "count", "SELECT")
	defer func() { done(err) }()
	defer func() { err = s.unavailable(err) }()
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM pets`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count pets: %w", err)
	}
	return n, nil
}

// Ping implements Store.
func (s *SQLStore) Ping(ctx context.Context) (err error) {
	ctx, done := s.observe(ctx, "ping", "SELECT")
	defer func() { done(err) }()
	defer func() { err = s.unavailable(err) }()
	var one int
	if err := s.db.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	return nil
}

const upsertSQL = `INSERT INTO pets (id, source, source_id, name, species, breed_primary, breed_secondary, breed_mixed,
 age, gender, size, color_primary, color_secondary, color_tertiary, status, description, photos,
 organization_id, city, state, postcode, country, published_at, updated_at,
 species_key, breed_primary_key, breed_secondary_key, city_key, state_key, search_text, content_hash, doc, version)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
ON CONFLICT (id) DO UPDATE SET
 name = excluded.name, species = excluded.species,
 breed_primary = excluded.breed_primary, breed_secondary = excluded.breed_secondary, breed_mixed = excluded.breed_mixed,
 age = excluded.age, gender = excluded.gender, size = excluded.size,
 color_primary = excluded.color_primary, color_secondary = excluded.color_secondary, color_tertiary = excluded.color_tertiary,
 status = excluded.status, description = excluded.description, photos = excluded.photos,
 organization_id = excluded.organization_id, city = excluded.city, state = excluded.state,
 postcode = excluded.postcode, country = excluded.country,
 published_at = CASE WHEN ? THEN excluded.published_at ELSE pets.published_at END,
 updated_at = excluded.updated_at,
 species_key = excluded.species_key, breed_primary_key = excluded.breed_primary_key,
 breed_secondary_key = excluded.breed_secondary_key, city_key = excluded.city_key, state_key = excluded.state_key,
 search_text = excluded.search_text, content_hash = excluded.content_hash, doc = excluded.doc,
 version = pets.version + 1
WHERE pets.content_hash <> excluded.content_hash
RETURNING version, published_at`

// upsertRow is what upsertSQL writes for one normalized input. A missing
// published_at is now on insert and kept on update; a missing updated_at
// is the time of the write.
type upsertRow struct {
	pet      Pet
	pubGiven bool
	hash     string
}

func newUpsertRow(in PetInput, now time.Time) upsertRow {
	r := upsertRow{pet: Pet{ID: PetID(in.Source, in.SourceID), PetInput: in}, pubGiven: !in.PublishedAt.IsZero(), hash: contentHash(in)}
	if !r.pubGiven {
		r.pet.PublishedAt = now
	}
	if r.pet.UpdatedAt.IsZero() {
		r.pet.UpdatedAt = now
	}
	return r
}

// docArg is the pet's JSON as a statement argument: bytes for SQLite,
// which then stores a BLOB that reads back without a copy; text for
// PostgreSQL.
func (r *upsertRow) docArg(d dialect) any {
	b, _ := json.Marshal(r.pet) // cannot fail: plain strings, bools and times
	if d.textDoc {
		return string(b)
	}
	return b
}

func (r *upsertRow) args(d dialect) []any {
	p := &r.pet
	photos, _ := json.Marshal(p.Photos) // cannot fail
	return []any{
		p.ID, p.Source, p.SourceID, p.Name, p.Species,
		p.Breeds.Primary, p.Breeds.Secondary, p.Breeds.Mixed,
		p.Age, p.Gender, p.Size, p.Colors.Primary, p.Colors.Secondary, p.Colors.Tertiary,
		p.Status, p.Description, string(photos), p.OrganizationID,
		p.Location.City, p.Location.State, p.Location.Postcode, p.Location.Country,
		p.PublishedAt.UnixMicro(), p.UpdatedAt.UnixMicro(),
		key(p.Species), key(p.Breeds.Primary), key(p.Breeds.Secondary), key(p.Location.City), key(p.Location.State),
		strings.ToLower(p.Name + "\n" + p.Description), r.hash, r.docArg(d),
		r.pubGiven,
	}
}

// Upsert implements Store. Pets are written in id order so that
// concurrent batches lock rows in the same order and cannot deadlock.
//
// On PostgreSQL two batches that insert the same new pet at once can
// collide on the (source, source_id) unique index, which ON CONFLICT (id)
// does not arbitrate: the second then fails with a unique violation once
// the first commits. The batch is then run again, up to maxUpsertTries
// times in all; by then the row exists and takes the ON CONFLICT path.
// (SQLite runs one writer at a time.)
func (s *SQLStore) Upsert(ctx context.Context, pets []PetInput) (res UpsertResult, err error) {
	if len(pets) == 0 {
		return res, nil
	}
	ctx, done := s.observe(ctx, "upsert", "INSERT")
	defer func() { done(err) }()
	defer func() { err = s.unavailable(err) }()
	defer s.wrote()
	now := time.Now().UTC().Truncate(time.Microsecond)
	rows := make([]upsertRow, len(pets))
	for i, p := range pets {
		rows[i] = newUpsertRow(normalize(p), now)
	}
	slices.SortStableFunc(rows, func(a, b upsertRow) int { return strings.Compare(a.pet.ID, b.pet.ID) })
	for try := 1; ; try++ {
		// upsertTx renders a row's doc again with the stored published_at:
		// each try starts from the rows as given.
		res, err = s.upsertTx(ctx, slices.Clone(rows))
		if try == maxUpsertTries || !isUniqueViolation(err) || ctx.Err() != nil {
			return res, err
		}
	}
}

// maxUpsertTries bounds the runs of one Upsert batch (see Upsert).
const maxUpsertTries = 3

// isUniqueViolation reports a PostgreSQL unique_violation (SQLSTATE 23505).
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// upsertTx writes rows in one transaction.
func (s *SQLStore) upsertTx(ctx context.Context, rows []upsertRow) (res UpsertResult, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return res, fmt.Errorf("begin upsert: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	st, err := tx.PrepareContext(ctx, s.rebind(upsertSQL))
	if err != nil {
		return res, fmt.Errorf("prepare upsert: %w", err)
	}
	defer func() { _ = st.Close() }()
	for i := range rows {
		r := &rows[i]
		var version, pub int64
		err := st.QueryRowContext(ctx, r.args(s.d)...).Scan(&version, &pub)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			res.Unchanged++
			continue
		case err != nil:
			return UpsertResult{}, fmt.Errorf("upsert pet %s/%s: %w", r.pet.Source, r.pet.SourceID, err)
		case version == 1:
			res.Inserted++
		default:
			res.Updated++
		}
		// An update without published_at kept the stored one: render
		// the doc again with it (the row is locked by this transaction).
		if pub != r.pet.PublishedAt.UnixMicro() {
			r.pet.PublishedAt = fromMicros(pub)
			if _, err := tx.ExecContext(ctx, s.rebind(`UPDATE pets SET doc = ? WHERE id = ?`), r.docArg(s.d), r.pet.ID); err != nil {
				return UpsertResult{}, fmt.Errorf("upsert pet %s/%s: %w", r.pet.Source, r.pet.SourceID, err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return UpsertResult{}, fmt.Errorf("commit upsert: %w", err)
	}
	return res, nil
}

// List implements Store.
func (s *SQLStore) List(ctx context.Context, q ListQuery) (ListResult, error) {
	docs, next, err := s.AppendListJSON(ctx, []byte{'['}, q)
	if err != nil {
		return ListResult{}, err
	}
	res := ListResult{Pets: []Pet{}, NextCursor: next}
	if err := json.Unmarshal(append(docs, ']'), &res.Pets); err != nil {
		return ListResult{}, fmt.Errorf("decode stored pets: %w", err)
	}
	for i := range res.Pets {
		if res.Pets[i].Photos == nil {
			res.Pets[i].Photos = []string{}
		}
	}
	return res, nil
}

// AppendListJSON implements Store.
func (s *SQLStore) AppendListJSON(ctx context.Context, dst []byte, q ListQuery) (out []byte, next string, err error) {
	sort := q.Sort
	if sort == "" {
		sort = DefaultSort
	}
	if _, ok := ParseSort(string(sort)); !ok {
		return dst, "", fmt.Errorf("%w: sort %q", ErrInvalid, sort)
	}
	limit := q.Limit
	if limit == 0 {
		limit = DefaultLimit
	}
	if limit < 1 || limit > MaxLimit {
		return dst, "", fmt.Errorf("%w: limit %d is not in 1..%d", ErrInvalid, limit, MaxLimit)
	}
	var cur *cursor
	if q.Cursor != "" {
		c, err := decodeCursor(sort, q.Cursor)
		if err != nil {
			return dst, "", err
		}
		cur = &c
	}

	var b strings.Builder
	args := make([]any, 0, 12)
	col, op, dir := sort.column(), ">", "ASC"
	if sort.desc() {
		op, dir = "<", "DESC"
	}
	b.WriteString(`SELECT doc FROM pets WHERE 1=1`)
	eq := func(col, v string) {
		if v != "" {
			b.WriteString(` AND ` + col + ` = ?`)
			args = append(args, v)
		}
	}
	// Enumerations are stored canonically; an unknown value matches nothing.
	enum := func(col string, values []string, v string) {
		if v == "" {
			return
		}
		if c, ok := Canonical(values, v); ok {
			v = c
		}
		eq(col, v)
	}
	enum("status", Statuses, q.Status)
	eq("species_key", key(q.Species))
	enum("age", Ages, q.Age)
	enum("gender", Genders, q.Gender)
	enum("size", Sizes, q.Size)
	eq("state_key", key(q.State))
	eq("city_key", key(q.City))
	if br := key(q.Breed); br != "" {
		b.WriteString(` AND (breed_primary_key = ? OR breed_secondary_key = ?)`)
		args = append(args, br, br)
	}
	if text := strings.ToLower(strings.TrimSpace(q.Q)); text != "" {
		b.WriteString(` AND search_text LIKE ? ESCAPE '\'`)
		args = append(args, "%"+escapeLike(text)+"%")
	}
	if cur != nil {
		b.WriteString(` AND (` + col + `, id) ` + op + ` (?, ?)`)
		if sort.byName() {
			args = append(args, cur.Name, cur.ID)
		} else {
			args = append(args, cur.Time, cur.ID)
		}
	}
	b.WriteString(` ORDER BY ` + col + ` ` + dir + `, id ` + dir + ` LIMIT ?`)
	args = append(args, limit+1)

	ctx, done := s.observe(ctx, "list", "SELECT")
	defer func() { done(err) }()
	defer func() { err = s.unavailable(err) }()
	st, err := s.stmt(ctx, b.String())
	if err != nil {
		return dst, "", err
	}
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return dst, "", fmt.Errorf("list pets: %w", err)
	}
	defer func() { _ = rows.Close() }()
	// Only the docs are read; the cursor comes from the last one (its
	// id, name and times are exactly the stored columns).
	var (
		doc     sql.RawBytes
		lastDoc []byte
		n       int
	)
	for rows.Next() {
		if n == limit {
			// One more row than the page: there is a next page.
			c, err := cursorFromDoc(sort, lastDoc)
			if err != nil {
				return dst, "", err
			}
			next = c.encode()
			break
		}
		if err := rows.Scan(&doc); err != nil {
			return dst, "", fmt.Errorf("list pets: %w", err)
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		start := len(dst)
		dst = append(dst, doc...)
		lastDoc = dst[start:]
		n++
	}
	if err := rows.Err(); err != nil {
		return dst, "", fmt.Errorf("list pets: %w", err)
	}
	return dst, next, nil
}

// cursorFromDoc is the cursor positioned after the pet encoded in doc.
func cursorFromDoc(sort Sort, doc []byte) (cursor, error) {
	if c, ok := cursorFromDocFast(sort, doc); ok {
		return c, nil
	}
	var k struct {
		ID          string    `json:"id"`
		Name        string    `json:"name"`
		PublishedAt time.Time `json:"published_at"`
		UpdatedAt   time.Time `json:"updated_at"`
	}
	if err := json.Unmarshal(doc, &k); err != nil {
		return cursor{}, fmt.Errorf("decode stored pet: %w", err)
	}
	c := cursor{Sort: sort, ID: k.ID}
	switch sort.column() {
	case "name":
		c.Name = k.Name
	case "published_at":
		c.Time = k.PublishedAt.UnixMicro()
	case "updated_at":
		c.Time = k.UpdatedAt.UnixMicro()
	}
	return c, nil
}

func escapeLike(s string) string {
	if !strings.ContainsAny(s, `\%_`) {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}
