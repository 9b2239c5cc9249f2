package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

//go:embed migrations
var migrationFS embed.FS

// migrationsTable records applied migrations. It carries the component
// name so that the pets tables can share a PostgreSQL schema with other
// services' tables.
const migrationsTable = "pets_schema_migrations"

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads migrations/<dir>/NNNN_name.sql in version order.
func loadMigrations(dir string) ([]migration, error) {
	root := path.Join("migrations", dir)
	entries, err := fs.ReadDir(migrationFS, root)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.sql", name)
		}
		b, err := fs.ReadFile(migrationFS, path.Join(root, name))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		ms = append(ms, migration{version: v, name: strings.TrimSuffix(name, ".sql"), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s share a version", ms[i-1].name, ms[i].name)
		}
	}
	return ms, nil
}

// migrate applies the pending migrations of dir in one transaction. lock
// runs first inside the transaction and must serialize concurrent
// migrators (SQLite: the transaction is BEGIN IMMEDIATE, which already
// holds the write lock; PostgreSQL: an advisory lock), so that two
// instances starting at once apply each migration exactly once.
func (s *SQLStore) migrate(ctx context.Context, dir string, lock func(ctx context.Context, tx *sql.Tx) error) (err error) {
	ctx, done := s.observe(ctx, "migrate", "CREATE")
	defer func() { done(err) }()
	ms, err := loadMigrations(dir)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin migration: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if lock != nil {
		if err := lock(ctx, tx); err != nil {
			return fmt.Errorf("lock migrations: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+migrationsTable+` (
  version    BIGINT NOT NULL PRIMARY KEY,
  name       TEXT   NOT NULL,
  applied_at BIGINT NOT NULL
)`); err != nil {
		return fmt.Errorf("create %s: %w", migrationsTable, err)
	}
	applied := map[int]bool{}
	rows, err := tx.QueryContext(ctx, `SELECT version FROM `+migrationsTable)
	if err != nil {
		return fmt.Errorf("read %s: %w", migrationsTable, err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			_ = rows.Close()
			return fmt.Errorf("read %s: %w", migrationsTable, err)
		}
		applied[v] = true
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("read %s: %w", migrationsTable, err)
	}
	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("apply migration %s: %w", m.name, err)
		}
		if _, err := tx.ExecContext(ctx, s.rebind(`INSERT INTO `+migrationsTable+` (version, name, applied_at) VALUES (?, ?, ?)`),
			m.version, m.name, time.Now().UnixMicro()); err != nil {
			return fmt.Errorf("record migration %s: %w", m.name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit migrations: %w", err)
	}
	return nil
}

// SchemaID names the schema that the embedded migrations for dialect dir
// ("sqlite" or "postgres") build: the newest version and a hash of every
// migration's text. Caches of seeded databases key on it.
func SchemaID(dir string) (string, error) {
	ms, err := loadMigrations(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	v := 0
	for _, m := range ms {
		h.Write([]byte(m.sql))
		v = m.version
	}
	return fmt.Sprintf("v%d-%x", v, h.Sum(nil)[:4]), nil
}
