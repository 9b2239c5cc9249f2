package pgtest_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/petmesh/petmesh/internal/testutil/pgtest"
)

func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// TestFreshSchemaIsEmptyAndOwn: two fresh schemas are empty, separate, and
// a table made in one is not seen from the other; the schema is gone after
// its test.
func TestFreshSchemaIsEmptyAndOwn(t *testing.T) {
	dsn := pgtest.DSN(t)
	var first string
	t.Run("first", func(t *testing.T) {
		a := openDB(t, pgtest.FreshSchema(t, dsn, "pgtest"))
		if err := a.QueryRowContext(context.Background(), `SELECT current_schema()`).Scan(&first); err != nil {
			t.Fatal(err)
		}
		if _, err := a.ExecContext(context.Background(), `CREATE TABLE t (x int)`); err != nil {
			t.Fatal(err)
		}
		b := openDB(t, pgtest.FreshSchema(t, dsn, "pgtest"))
		var n int
		if err := b.QueryRowContext(context.Background(), `SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("a second fresh schema holds %d tables, want 0", n)
		}
	})
	var n int
	if err := openDB(t, dsn).QueryRowContext(context.Background(), `SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1`, first).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if first == "" || n != 0 {
		t.Errorf("schema %q still exists after its test (%d)", first, n)
	}
}

func TestFreshDatabase(t *testing.T) {
	dsn := pgtest.DSN(t)
	fresh, name := pgtest.FreshDatabase(t, dsn, "pgtest")
	var got string
	if err := openDB(t, fresh).QueryRowContext(context.Background(), `SELECT current_database()`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != name {
		t.Errorf("connected to %q, want %q", got, name)
	}
}
