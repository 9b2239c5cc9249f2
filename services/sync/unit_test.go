package syncsvc

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petmesh/petmesh/services/sync/petfinder"
)

// fakeClock hands out timers that fire only when the test advances it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	created chan time.Duration
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop() bool          { return true }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	c.created <- d
	return t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.c <- c.now
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

func TestScheduler(t *testing.T) {
	start := time.Date(2026, 11, 1, 1, 0, 0, 0, time.UTC)
	daily3am, err := ParseCron("0 3 * * *")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc       string
		schedule   Schedule
		jitter     time.Duration
		runAtStart bool
		wantWaits  []time.Duration // the timers asked for, in order
		wantFires  []string
	}{
		{desc: "interval", schedule: Every(24 * time.Hour), wantWaits: []time.Duration{24 * time.Hour, 24 * time.Hour}, wantFires: []string{"schedule", "schedule"}},
		{desc: "interval with run at start", schedule: Every(time.Hour), runAtStart: true, wantWaits: []time.Duration{time.Hour, time.Hour}, wantFires: []string{"start", "schedule", "schedule"}},
		{desc: "jitter is added", schedule: Every(time.Hour), jitter: 10 * time.Minute, wantWaits: []time.Duration{time.Hour + 5*time.Minute, time.Hour + 5*time.Minute}, wantFires: []string{"schedule", "schedule"}},
		{desc: "cron", schedule: daily3am, wantWaits: []time.Duration{2 * time.Hour, 24 * time.Hour}, wantFires: []string{"schedule", "schedule"}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			clock := &fakeClock{now: start, created: make(chan time.Duration, 10)}
			fires := make(chan string, 10)
			s := &Scheduler{Schedule: tc.schedule, Jitter: tc.jitter, RunAtStart: tc.runAtStart, Clock: clock,
				Rand: func() float64 { return 0.5 },
				Fire: func(_ context.Context, trigger string) {
					fires <- trigger
					if trigger == "schedule" && len(fires) == 1 && !tc.runAtStart {
						panic("a panicking run must not stop the scheduler")
					}
				}}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			var got []string
			if tc.runAtStart {
				got = append(got, <-fires)
			}
			for i, want := range tc.wantWaits {
				if d := <-clock.created; d != want {
					t.Fatalf("timer %d: %v, want %v", i, d, want)
				}
				clock.advance(want)
				got = append(got, <-fires)
			}
			<-clock.created
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, ",") != strings.Join(tc.wantFires, ",") {
				t.Fatalf("fires %v, want %v", got, tc.wantFires)
			}
		})
	}
}

func TestMapAnimal(t *testing.T) {
	pub := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	base := petfinder.Animal{
		ID: 42, OrganizationID: "NJ333", Type: "Dog", Species: "Dog", Name: "Rex &amp; Co",
		Breeds: petfinder.Breeds{Primary: "Beagle", Secondary: "Boxer", Mixed: true},
		Colors: petfinder.Colors{Primary: "Black"}, Age: "adult", Gender: "Male", Size: "Extra Large",
		Description: " Loves &#039;walks&#039; ", Status: "adoptable",
		Photos:      []petfinder.Photo{{Large: "l1", Full: "f1"}, {Large: "l2"}, {}},
		PublishedAt: petfinder.Time{Time: pub}, StatusChangedAt: petfinder.Time{Time: pub.Add(time.Hour)},
		Contact: petfinder.Contact{Address: petfinder.Address{City: "Trenton", State: "NJ", Postcode: "08608", Country: "US"}},
	}
	got, err := MapAnimal(base)
	if err != nil {
		t.Fatal(err)
	}
	if got.Source != "petfinder" || got.SourceID != "42" || got.Name != "Rex & Co" || got.Age != "Adult" || got.Size != "Extra Large" ||
		got.Description != "Loves 'walks'" || strings.Join(got.Photos, ",") != "f1,l2" || got.Location.City != "Trenton" ||
		!got.PublishedAt.Equal(pub) || !got.UpdatedAt.Equal(pub.Add(time.Hour)) || got.Breeds.Secondary != "Boxer" {
		t.Fatalf("mapped %+v", got)
	}
	tests := []struct {
		desc  string
		mod   func(*petfinder.Animal)
		field string
	}{
		{desc: "no id", mod: func(a *petfinder.Animal) { a.ID = 0 }, field: "id"},
		{desc: "unknown age", mod: func(a *petfinder.Animal) { a.Age = "Ancient" }, field: "age"},
		{desc: "unknown size", mod: func(a *petfinder.Animal) { a.Size = "Huge" }, field: "size"},
		{desc: "unknown status", mod: func(a *petfinder.Animal) { a.Status = "lost" }, field: "status"},
		{desc: "no published_at", mod: func(a *petfinder.Animal) { a.PublishedAt = petfinder.Time{} }, field: "published_at"},
		{desc: "missing gender is Unknown", mod: func(a *petfinder.Animal) { a.Gender = "" }},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			a := base
			tc.mod(&a)
			got, err := MapAnimal(a)
			if tc.field == "" {
				if err != nil || got.Gender != "Unknown" {
					t.Fatalf("got %+v %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.field+":") {
				t.Fatalf("error %v, want one naming %s", err, tc.field)
			}
		})
	}
}

func TestFileLocker(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sync.lock")
	a, b := &FileLocker{Path: path}, &FileLocker{Path: path}
	lease, err := a.TryLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryLock(context.Background()); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	if err := lease.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	lease2, err := b.TryLock(context.Background())
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	_ = lease2.Release(context.Background())
}

func TestStoreReconcile(t *testing.T) {
	ctx := context.Background()
	st, err := OpenStore(ctx, filepath.Join(t.TempDir(), "sync.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	hw := now.Add(-time.Hour)
	for i, r := range []RunRecord{
		{ID: "a", Status: StatusSucceeded, Trigger: TriggerStart, Full: true, StartedAt: now},
		{ID: "b", Status: StatusRunning, Trigger: TriggerManual, StartedAt: now.Add(time.Minute)},
	} {
		if err := st.Insert(ctx, r); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			r.HighWater = &hw
			if err := st.Update(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	s := NewSyncer(Options{Store: st, Locker: &FileLocker{Path: filepath.Join(t.TempDir(), "l")}, Now: func() time.Time { return now }})
	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := st.Get(ctx, "b")
	if err != nil || b.Status != StatusInterrupted || b.FinishedAt == nil {
		t.Fatalf("b %+v %v", b, err)
	}
	runs, _ := st.List(ctx, 10)
	if len(runs) != 2 || runs[0].ID != "b" {
		t.Fatalf("list %+v", runs)
	}
	last, err := st.LastSucceeded(ctx, false)
	if err != nil || last.ID != "a" || last.HighWater == nil || !last.HighWater.Equal(hw) {
		t.Fatalf("last %+v %v", last, err)
	}
	if _, err := st.Get(ctx, "zzz"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
}
