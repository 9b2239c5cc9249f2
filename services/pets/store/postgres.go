package store

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// OpenPostgres connects to the PostgreSQL database of dsn (a postgres://
// URL; pgx options and runtime parameters such as search_path may be
// given as query parameters) and applies pending migrations.
func OpenPostgres(ctx context.Context, dsn string, opts Options) (*SQLStore, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: postgres dsn: %v", ErrInvalid, err)
	}
	db := stdlib.OpenDB(*cfg)
	n := opts.MaxOpenConns
	if n <= 0 {
		n = 10
	}
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("connect postgres %s@%s:%d/%s: %w", cfg.User, cfg.Host, cfg.Port, cfg.Database, err)
	}
	s, err := newSQLStore(db, dialect{system: "postgresql", dollar: true, textDoc: true}, opts)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	// Two instances starting at once would both see the migrations table
	// missing; a transaction-scoped advisory lock per schema serializes
	// them (released at commit or rollback).
	lock := func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.pets_schema_migrations'))`)
		return err
	}
	if err := s.migrate(ctx, "postgres", lock); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("migrate postgres: %w", err)
	}
	return s, nil
}
