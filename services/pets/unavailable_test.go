package pets_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/petstest"
	"github.com/petmesh/petmesh/internal/testutil/pgtest"
	"github.com/petmesh/petmesh/services/pets"
	"github.com/petmesh/petmesh/services/pets/store"
)

// countLogs returns how many JSON log lines in logs have a msg containing
// sub.
func countLogs(logs *testutil.SyncBuffer, sub string) int {
	n := 0
	for line := range strings.Lines(logs.String()) {
		var rec struct{ Msg string }
		if json.Unmarshal([]byte(line), &rec) == nil && strings.Contains(rec.Msg, sub) {
			n++
		}
	}
	return n
}

// dbServer is the API over a real store on a real loopback socket.
type dbServer struct {
	t    *testing.T
	url  string
	logs *testutil.SyncBuffer
	seq  int
}

func newDBServer(t *testing.T, dsn string) *dbServer {
	t.Helper()
	logs := &testutil.SyncBuffer{}
	srv := petstest.Serve(t, dsn, telemetry.NewTest(logs), pets.HandlerOptions{ListCacheBytes: 1 << 20})
	return &dbServer{t: t, url: srv.URL, logs: logs}
}

// answer is what a request got.
type answer struct {
	status            int
	retryAfter        string
	code, message     string
	inserted, updated int
}

func (a answer) String() string {
	return fmt.Sprintf("%d %s %q (Retry-After %q)", a.status, a.code, a.message, a.retryAfter)
}

func (s *dbServer) do(method, path string, body any) answer {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(s.t.Context(), method, s.url+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	identity.SetHeaders(req.Header, identity.Identity{Subject: "sync", Roles: []string{identity.RoleSync}})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	var e struct {
		Error             struct{ Code, Message string }
		Inserted, Updated int
	}
	_ = json.Unmarshal(b, &e)
	a.code, a.message, a.inserted, a.updated = e.Error.Code, e.Error.Message, e.Inserted, e.Updated
	return a
}

// write upserts one new pet, with a description of descLen bytes.
func (s *dbServer) write(descLen int) answer {
	s.seq++
	p := pet(s.seq)
	p["description"] = strings.Repeat("d", descLen)
	return s.do(http.MethodPost, "/pets:batchUpsert", map[string]any{"pets": []map[string]any{p}})
}

// wantUnavailable checks a 503 in the JSON error shape with Retry-After
// and, when reason is not empty, the reason in the message.
func wantUnavailable(t *testing.T, a answer, reason string) {
	t.Helper()
	if a.status != http.StatusServiceUnavailable || a.code != "unavailable" || a.retryAfter != "5" {
		t.Fatalf("got %v, want 503 unavailable with Retry-After 5", a)
	}
	if reason != "" && !strings.Contains(a.message, reason) {
		t.Fatalf("got %v, want a message naming %q", a, reason)
	}
}

// unavailableThenRecovered runs the common part of every case: while
// the fault holds, writes are 503 (logged once), reads still served;
// after heal, writes succeed again by themselves (recovery logged once).
func unavailableThenRecovered(t *testing.T, s *dbServer, reason string, heal func()) {
	t.Helper()
	failed, recovered := countLogs(s.logs, "answering 503"), countLogs(s.logs, "database recovered")
	for range 3 {
		wantUnavailable(t, s.write(10), reason)
	}
	if a := s.do(http.MethodGet, "/pets?limit=5&q=read-during-fault", nil); a.status != http.StatusOK {
		t.Errorf("GET /pets during the fault: %v, want 200", a)
	}
	if a := s.do(http.MethodGet, "/pets?limit=5", nil); a.status != http.StatusOK {
		t.Errorf("GET /pets during the fault: %v, want 200", a)
	}
	if n := countLogs(s.logs, "answering 503") - failed; n > 1 || (failed == 0 && n != 1) {
		t.Errorf("%d log lines about the unavailable database for 3 failed writes, want 1", n)
	}
	heal()
	testutil.Eventually(t, 10*time.Second, func() error {
		a := s.write(10)
		switch a.status {
		case http.StatusOK:
			return nil
		case http.StatusServiceUnavailable:
			return fmt.Errorf("still %v", a)
		}
		t.Fatalf("write after the fault healed: %v, want 200 (or 503 until it takes)", a)
		return nil
	})
	if a := s.write(10); a.status != http.StatusOK || a.inserted != 1 {
		t.Fatalf("second write after recovery: %v", a)
	}
	if n := countLogs(s.logs, "database recovered") - recovered; n != 1 {
		t.Errorf("%d recovery log lines, want 1", n)
	}
}

// chattr sets or clears the immutable flag: writes fail even through open
// descriptors and even for root, as on a file system remounted read-only.
// Only root on a file system with inode flags can: without it the test
// skips (fails with PETMESH_REQUIRE_REAL=1).
func chattr(t *testing.T, flag string, files ...string) {
	t.Helper()
	out, err := exec.Command("chattr", append([]string{flag}, files...)...).CombinedOutput()
	if err != nil {
		if flag == "+i" && os.Getenv(testutil.EnvRequireReal) != "1" {
			t.Skipf("cannot make the database immutable: %v: %s", err, out)
		}
		t.Fatalf("chattr %s: %v: %s", flag, err, out)
	}
}

func existing(paths ...string) []string {
	var out []string
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func TestUnavailableSQLite(t *testing.T) {
	t.Run("files made immutable under the running store", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "pets.db")
		s := newDBServer(t, "sqlite://"+path)
		if a := s.write(10); a.status != http.StatusOK {
			t.Fatalf("first write: %v", a)
		}
		files := existing(path, path+"-wal")
		chattr(t, "+i", files...)
		t.Cleanup(func() { _ = exec.Command("chattr", append([]string{"-i"}, files...)...).Run() })
		unavailableThenRecovered(t, s, "", func() { chattr(t, "-i", files...) })
	})
	t.Run("opened while read-only (SQLITE_READONLY)", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "pets.db")
		seed, err := store.Open(t.Context(), "sqlite://"+path, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := seed.Close(); err != nil {
			t.Fatal(err)
		}
		// The connections SQLite opens now are read-only and stay so:
		// recovery needs the store to drop them.
		chattr(t, "+i", path)
		t.Cleanup(func() { _ = exec.Command("chattr", "-i", path).Run() })
		s := newDBServer(t, "sqlite://"+path)
		unavailableThenRecovered(t, s, "read-only", func() { chattr(t, "-i", path) })
	})
	t.Run("full (SQLITE_FULL)", func(t *testing.T) {
		// max_page_count caps the file as a full disk would.
		path := filepath.Join(t.TempDir(), "pets.db")
		s := newDBServer(t, "sqlite://"+path+"?_pragma=max_page_count(64)")
		for i := 0; ; i++ {
			a := s.write(8000)
			if a.status == http.StatusServiceUnavailable {
				wantUnavailable(t, a, "full")
				break
			}
			if a.status != http.StatusOK || i > 200 {
				t.Fatalf("write %d: %v, want 200 until the database is full, then 503", i, a)
			}
		}
		wantUnavailable(t, s.write(8000), "full")
		if a := s.do(http.MethodGet, "/pets?limit=5", nil); a.status != http.StatusOK {
			t.Errorf("GET /pets when full: %v, want 200", a)
		}
		if n := countLogs(s.logs, "database full: answering 503"); n != 1 {
			t.Errorf("%d log lines about the full database, want 1", n)
		}
	})
}

func TestUnavailablePostgres(t *testing.T) {
	dsn, name := pgtest.FreshDatabase(t, pgtest.DSN(t), "pets_ro")
	// Connected to the test's own database (the trigger lives there).
	own, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	admin := stdlib.OpenDB(*own)
	t.Cleanup(func() { _ = admin.Close() })
	exec := func(q string) {
		t.Helper()
		if _, err := admin.ExecContext(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s := newDBServer(t, dsn)
	if a := s.write(10); a.status != http.StatusOK {
		t.Fatalf("first write: %v", a)
	}

	t.Run("read-only database (SQLSTATE 25006)", func(t *testing.T) {
		// As after a failover to a standby: the sessions are cut and new
		// ones are read-only. A session cut under a request is 503 too.
		exec(`ALTER DATABASE ` + name + ` SET default_transaction_read_only = on`)
		exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '` + name + `' AND pid <> pg_backend_pid()`)
		testutil.Eventually(t, 10*time.Second, func() error {
			a := s.write(10)
			wantUnavailable(t, a, "")
			if !strings.Contains(a.message, "read-only") {
				return fmt.Errorf("%v: not yet the read-only answer", a)
			}
			return nil
		})
		unavailableThenRecovered(t, s, "read-only", func() {
			// The read-only sessions stay read-only: recovery needs the
			// store to drop them.
			exec(`ALTER DATABASE ` + name + ` RESET default_transaction_read_only`)
		})
	})
	t.Run("disk full (SQLSTATE 53100)", func(t *testing.T) {
		// The server raises the disk-full SQLSTATE on every write to
		// the table, as it does when its disk is full.
		exec(`CREATE FUNCTION pets_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$`)
		exec(`CREATE TRIGGER pets_disk_full BEFORE INSERT OR UPDATE ON pets FOR EACH ROW EXECUTE FUNCTION pets_disk_full()`)
		unavailableThenRecovered(t, s, "full", func() { exec(`DROP TRIGGER pets_disk_full ON pets`) })
	})
}

// TestBinaryReadOnlyDatabase runs the real binary (-retry-after 2s) over
// a SQLite file made immutable while it serves: writes are 503 with
// Retry-After 2, reads are served, the cause is logged once at ERROR in
// its JSON log, and writes work again once the file is writable.
func TestBinaryReadOnlyDatabase(t *testing.T) {
	db := filepath.Join(t.TempDir(), "pets.db")
	p := startPets(t, db, "-retry-after", "2s")
	c := newClient(t, p.URL("http"))
	write := func(i int) response {
		b, _ := json.Marshal(map[string]any{"pets": []map[string]any{pet(i)}})
		return c.do(http.MethodPost, "/pets:batchUpsert", roles("sync"), bytes.NewReader(b))
	}
	if r := write(1); r.status != http.StatusOK {
		t.Fatalf("first write: %d %s", r.status, r.body)
	}
	files := existing(db, db+"-wal")
	chattr(t, "+i", files...)
	t.Cleanup(func() { _ = exec.Command("chattr", append([]string{"-i"}, files...)...).Run() })
	for i := 2; i < 6; i++ {
		r := write(i)
		var e struct {
			Error struct{ Code, Message string }
		}
		_ = json.Unmarshal(r.body, &e)
		if r.status != http.StatusServiceUnavailable || e.Error.Code != "unavailable" || r.header.Get("Retry-After") != "2" {
			t.Fatalf("write while read-only: %d Retry-After %q %s, want 503 unavailable with Retry-After 2", r.status, r.header.Get("Retry-After"), r.body)
		}
	}
	if r := c.do(http.MethodGet, "/pets?limit=5", nil, nil); r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"name"`)) {
		t.Fatalf("read while read-only: %d %s, want 200 with the pet", r.status, r.body)
	}
	logged := func(level, sub string) int {
		n := 0
		for line := range strings.Lines(p.Output()) {
			var rec struct{ Level, Msg, Error string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Level == level && strings.Contains(rec.Msg, sub) {
				n++
			}
		}
		return n
	}
	if n := logged("ERROR", "answering 503"); n != 1 {
		t.Errorf("%d ERROR lines about the database for 4 failed writes, want 1:\n%s", n, p.Output())
	}
	chattr(t, "-i", files...)
	testutil.Eventually(t, 10*time.Second, func() error {
		if r := write(10); r.status != http.StatusOK {
			return fmt.Errorf("write after the file became writable: %d %s", r.status, r.body)
		}
		return nil
	})
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := logged("INFO", "database recovered"); n != 1 {
			return fmt.Errorf("%d recovery lines, want 1", n)
		}
		return nil
	})
}
