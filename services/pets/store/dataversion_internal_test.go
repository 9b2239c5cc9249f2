package store

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

func TestReadWALHeader(t *testing.T) {
	mem := make([]byte, 4096)
	for i := range walHdrWords {
		binary.NativeEndian.PutUint32(mem[4*i:], uint32(100+i))
		binary.NativeEndian.PutUint32(mem[4*(walHdrWords+i):], uint32(100+i))
	}
	var hdr [walHdrWords]uint32
	if !readWALHeader(mem, &hdr) || hdr[0] != 100 || hdr[walHdrWords-1] != 100+walHdrWords-1 {
		t.Fatalf("consistent header: read %v", hdr)
	}
	// A writer between the two copies: the reader must not trust it.
	binary.NativeEndian.PutUint32(mem[4*(walHdrWords+2):], 7)
	if readWALHeader(mem, &hdr) {
		t.Fatal("copies that differ were read as a consistent header")
	}
	if readWALHeader(mem[:2*4*walHdrWords-1], &hdr) {
		t.Fatal("a short mapping was read")
	}
}

// TestDataVersionSkipsPragma checks that, with no commit, DataVersion
// answers from the WAL-index header without running the PRAGMA, and
// that any commit (through the store's pool or another store) makes it
// run it again and return a new version.
func TestDataVersionSkipsPragma(t *testing.T) {
	ctx := t.Context()
	dsn := "sqlite://" + filepath.Join(t.TempDir(), "pets.db")
	a, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	b, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	version := func() uint64 {
		t.Helper()
		v, err := a.DataVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// The first checks map the -shm file and record its header.
	v := version()
	version()
	if a.shared.idx == nil || a.shared.snap.Load() == nil {
		t.Fatal("no WAL-index mapping after two checks")
	}
	checks := a.shared.checks.Load()
	for range 100 {
		if got := version(); got != v {
			t.Fatalf("version moved from %d to %d without a write", v, got)
		}
	}
	if n := a.shared.checks.Load() - checks; n != 0 {
		t.Fatalf("%d PRAGMA checks for 100 calls without a commit, want 0", n)
	}
	for i, w := range []*SQLStore{a, b, b} {
		in := PetInput{Source: "test", SourceID: fmt.Sprint(i), Name: "n", Species: "Dog", UpdatedAt: time.Now()}
		if _, err := w.Upsert(ctx, []PetInput{in}); err != nil {
			t.Fatal(err)
		}
		before := a.shared.checks.Load()
		got := version()
		if got == v {
			t.Fatalf("write %d: version unchanged", i)
		}
		if a.shared.checks.Load() == before {
			t.Fatalf("write %d: no PRAGMA check after a commit", i)
		}
		v = got
	}
}
