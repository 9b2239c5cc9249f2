// Package pgtest gives tests an empty schema or database of their own on
// the real PostgreSQL named by PETMESH_TEST_POSTGRES_DSN (make test starts
// one with scripts/postgres.sh), dropped when the test ends.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/petmesh/petmesh/internal/testutil"
)

// EnvDSN names the test PostgreSQL.
const EnvDSN = "PETMESH_TEST_POSTGRES_DSN"

// DSN returns the test PostgreSQL's DSN. Without one the test is skipped,
// or failed when PETMESH_REQUIRE_REAL=1.
func DSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(EnvDSN)
	if dsn == "" {
		if os.Getenv(testutil.EnvRequireReal) == "1" {
			t.Fatalf("%s is not set and %s=1", EnvDSN, testutil.EnvRequireReal)
		}
		t.Skipf("%s is not set", EnvDSN)
	}
	return dsn
}

// FreshSchema creates an empty schema named prefix_<random> on dsn's
// database, dropped (with everything in it) when the test ends, and
// returns dsn with search_path set to it, so that every test and every
// run starts from an empty database.
func FreshSchema(t testing.TB, dsn, prefix string) string {
	t.Helper()
	admin := open(t, dsn)
	schema := prefix + "_" + random()
	exec(t, admin, `CREATE SCHEMA `+schema)
	t.Cleanup(func() { execCleanup(t, admin, `DROP SCHEMA `+schema+` CASCADE`) })
	u := parse(t, dsn)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// FreshDatabase creates a database named prefix_<random> of its own, for
// tests that change database-wide settings (ALTER DATABASE must not touch
// other tests), dropped when the test ends. It returns its DSN and name.
func FreshDatabase(t testing.TB, dsn, prefix string) (string, string) {
	t.Helper()
	admin := open(t, dsn)
	name := prefix + "_" + random()
	exec(t, admin, `CREATE DATABASE `+name)
	t.Cleanup(func() { execCleanup(t, admin, `DROP DATABASE `+name+` WITH (FORCE)`) })
	u := parse(t, dsn)
	u.Path = "/" + name
	return u.String(), name
}

func open(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("%s: %v", EnvDSN, err)
	}
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func parse(t testing.TB, dsn string) *url.URL {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("%s: %v", EnvDSN, err)
	}
	return u
}

func random() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func exec(t testing.TB, db *sql.DB, stmt string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

// execCleanup runs stmt at the test's end, reporting (not stopping) on error.
func execCleanup(t testing.TB, db *sql.DB, stmt string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		t.Errorf("%s: %v", stmt, err)
	}
}
