package syncsvc

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/petstest"
	"github.com/petmesh/petmesh/services/pets"
)

// hookClock records the waits of the client and runs a hook at the first
// one, without waiting.
type hookClock struct {
	mu     sync.Mutex
	sleeps []time.Duration
	hook   func()
}

func (c *hookClock) Now() time.Time { return time.Now() }

func (c *hookClock) Sleep(_ context.Context, d time.Duration) error {
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	hook := c.hook
	c.hook = nil
	c.mu.Unlock()
	if hook != nil {
		hook()
	}
	return nil
}

// TestBatchUpsertWaitsRetryAfter runs the real pets API over a SQLite file
// made immutable (chattr +i, as a file system remounted read-only): pets
// answers 503 with Retry-After, the client waits at least that long, the
// database becomes writable during the wait, and the retry writes the pet
// once; sending the batch again changes nothing (no duplicate).
func TestBatchUpsertWaitsRetryAfter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pets.db")
	srv := petstest.Serve(t, "sqlite://"+path, telemetry.NewTest(io.Discard), pets.HandlerOptions{})

	clock := &hookClock{}
	c := NewPetsClient(PetsConfig{BaseURL: srv.URL, Clock: clock, Rand: func() float64 { return 0.5 }, Telemetry: telemetry.NewTest(io.Discard)})
	first := []PetInput{{Source: "petfinder", SourceID: "1", Name: "Rex", Species: "Dog", Age: "Adult", Gender: "Male", Size: "Small", Status: "adoptable"}}
	if res, err := c.BatchUpsert(t.Context(), first); err != nil || res.Inserted != 1 {
		t.Fatalf("first batch: %+v %v", res, err)
	}

	files := []string{path}
	if _, err := os.Stat(path + "-wal"); err == nil {
		files = append(files, path+"-wal")
	}
	chattr := func(flag string) error {
		return exec.Command("chattr", append([]string{flag}, files...)...).Run()
	}
	if err := chattr("+i"); err != nil {
		if os.Getenv(testutil.EnvRequireReal) == "1" {
			t.Fatalf("chattr +i: %v", err)
		}
		t.Skipf("cannot make the database immutable (root on a file system with inode flags only): %v", err)
	}
	t.Cleanup(func() { _ = chattr("-i") })
	healed := false
	clock.hook = func() {
		if err := chattr("-i"); err != nil {
			t.Errorf("chattr -i: %v", err)
		}
		healed = true
	}
	second := []PetInput{{Source: "petfinder", SourceID: "2", Name: "Tom", Species: "Cat", Age: "Young", Gender: "Female", Size: "Small", Status: "adoptable"}}
	res, err := c.BatchUpsert(t.Context(), second)
	if err != nil || res.Inserted != 1 {
		t.Fatalf("batch while read-only, healed during the wait: %+v %v", res, err)
	}
	if !healed || len(clock.sleeps) != 1 {
		t.Fatalf("waits %v, want exactly one (the 503 while read-only)", clock.sleeps)
	}
	// Backoff alone would be 0.5 × 200 ms; pets asked for 5 s.
	if clock.sleeps[0] < pets.DefaultRetryAfter {
		t.Errorf("waited %v after a 503 with Retry-After, want at least %v", clock.sleeps[0], pets.DefaultRetryAfter)
	}
	res, err = c.BatchUpsert(t.Context(), second)
	if err != nil || res.Unchanged != 1 || res.Inserted != 0 {
		t.Fatalf("the same batch again: %+v %v, want unchanged", res, err)
	}
	if n, err := srv.Store.Count(t.Context()); err != nil || n != 2 {
		t.Fatalf("pets in the store: %d %v, want 2", n, err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		desc, v string
		want    time.Duration
	}{
		{"empty", "", 0},
		{"seconds", "5", 5 * time.Second},
		{"zero", "0", 0},
		{"negative", "-3", 0},
		{"http date", now.Add(7 * time.Second).Format(httpTimeFormat), 7 * time.Second},
		{"date in the past", now.Add(-time.Minute).Format(httpTimeFormat), 0},
		{"garbage", "soon", 0},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if got := parseRetryAfter(tc.v, now); got != tc.want {
				t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.v, got, tc.want)
			}
		})
	}
}

const httpTimeFormat = "Mon, 02 Jan 2006 15:04:05 GMT"
