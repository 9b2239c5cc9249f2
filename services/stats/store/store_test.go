package store

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

func openTest(t testing.TB) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "stats.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// within reports whether got is within HDR precision (2 significant digits:
// 1%) of want.
func within(got, want float64) bool {
	return math.Abs(got-want) <= want*0.01+0.001
}

var t0 = time.Date(2026, 11, 20, 10, 30, 0, 0, time.UTC)

func ev(at time.Time, route string, status int, latency float64, subject string) Event {
	return Event{Time: at, Route: route, Method: "GET", Path: "/pets", Status: status, LatencyMS: latency, Subject: subject}
}

func TestPercentiles(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	// 1..1000 ms, one request each, written in several batches to
	// exercise read-merge-write of the stored histograms.
	var evs []Event
	for i := 1; i <= 1000; i++ {
		evs = append(evs, ev(t0.Add(time.Duration(i%50)*time.Second), "pets-list", 200, float64(i), "alice"))
	}
	for i := 0; i < len(evs); i += 300 {
		if err := s.Write(ctx, evs[i:min(i+300, len(evs))]); err != nil {
			t.Fatal(err)
		}
	}
	w, _ := ParseWindow("1h")
	rep, err := s.Requests(ctx, w, ByRoute, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Overall.Count != 1000 {
		t.Fatalf("count = %d, want 1000", rep.Overall.Count)
	}
	for _, c := range []struct {
		desc      string
		got, want float64
	}{
		{"p50", rep.Overall.Latency.P50, 500},
		{"p90", rep.Overall.Latency.P90, 900},
		{"p99", rep.Overall.Latency.P99, 990},
	} {
		t.Run(c.desc, func(t *testing.T) {
			if !within(c.got, c.want) {
				t.Errorf("%s = %v, want %v within 1%%", c.desc, c.got, c.want)
			}
		})
	}
}

func TestSubMillisecondAndClamping(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	evs := []Event{
		ev(t0, "a", 200, 0.25, ""),
		ev(t0, "b", 200, 2*3600*1000, ""), // 2 h: recorded as 1 h
		ev(t0, "c", 200, 0, ""),
	}
	if err := s.Write(ctx, evs); err != nil {
		t.Fatal(err)
	}
	w, _ := ParseWindow("1h")
	rep, err := s.Requests(ctx, w, ByRoute, t0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, g := range rep.Groups {
		got[g.Key] = g.Latency.P99
	}
	for _, c := range []struct {
		desc string
		key  string
		want float64
	}{
		{"sub-millisecond kept", "a", 0.25},
		{"over range clamped", "b", 3600 * 1000},
		{"zero", "c", 0},
	} {
		t.Run(c.desc, func(t *testing.T) {
			if !within(got[c.key], c.want) {
				t.Errorf("p99 of %s = %v, want %v", c.key, got[c.key], c.want)
			}
		})
	}
}

func TestWindowsAndBuckets(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := time.Date(2026, 11, 20, 12, 7, 30, 0, time.UTC)
	evs := []Event{
		ev(now, "r", 200, 1, "alice"),                              // current minute
		ev(now.Add(-5*time.Minute), "r", 500, 10, "bob"),           // 12:02
		ev(now.Add(-59*time.Minute), "r", 200, 1, "alice"),         // 11:08, first 1h bucket
		ev(now.Add(-61*time.Minute), "r", 200, 1, "alice"),         // 11:06: outside 1h
		ev(now.Add(-23*time.Hour), "r", 404, 1, "carol"),           // 13:07 yesterday
		ev(now.Add(-25*time.Hour), "r", 200, 1, "carol"),           // outside 24h
		ev(now.Add(-6*24*time.Hour), "r", 200, 1, "dave"),          // inside 7d
		ev(now.Add(-7*24*time.Hour-time.Hour), "r", 200, 1, "old"), // outside 7d
	}
	if err := s.Write(ctx, evs); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		desc        string
		window      string
		wantBuckets int
		wantBucket  string
		wantFrom    time.Time
		wantCount   int64
		wantErrors  int64
		// bucket index -> count
		wantAt map[int]int64
	}{
		{
			desc: "1h in minutes", window: "1h", wantBuckets: 60, wantBucket: "1m0s",
			wantFrom:  time.Date(2026, 11, 20, 11, 8, 0, 0, time.UTC),
			wantCount: 3, wantErrors: 1,
			wantAt: map[int]int64{0: 1, 54: 1, 59: 1, 1: 0},
		},
		{
			desc: "24h in quarters", window: "24h", wantBuckets: 96, wantBucket: "15m0s",
			wantFrom:  time.Date(2026, 11, 19, 12, 15, 0, 0, time.UTC),
			wantCount: 5, wantErrors: 1,
			wantAt: map[int]int64{3: 1, 95: 2, 91: 2},
		},
		{
			desc: "7d in hours", window: "7d", wantBuckets: 168, wantBucket: "1h0m0s",
			wantFrom:  time.Date(2026, 11, 13, 13, 0, 0, 0, time.UTC),
			wantCount: 7, wantErrors: 1,
			wantAt: map[int]int64{167: 2, 166: 2, 144: 1, 142: 1, 23: 1, 143: 0},
		},
	} {
		t.Run(c.desc, func(t *testing.T) {
			w, ok := ParseWindow(c.window)
			if !ok {
				t.Fatalf("window %q not parsed", c.window)
			}
			rep, err := s.Requests(ctx, w, BySubject, now)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Buckets) != c.wantBuckets || rep.Bucket != c.wantBucket {
				t.Fatalf("buckets = %d of %s, want %d of %s", len(rep.Buckets), rep.Bucket, c.wantBuckets, c.wantBucket)
			}
			if !rep.From.Equal(c.wantFrom) || !rep.Buckets[0].Start.Equal(c.wantFrom) {
				t.Errorf("from = %v (first bucket %v), want %v", rep.From, rep.Buckets[0].Start, c.wantFrom)
			}
			if rep.Overall.Count != c.wantCount || rep.Overall.Errors != c.wantErrors {
				t.Errorf("overall = %d/%d errors, want %d/%d", rep.Overall.Count, rep.Overall.Errors, c.wantCount, c.wantErrors)
			}
			if want := float64(c.wantErrors) / float64(c.wantCount); rep.Overall.ErrorRatio != want {
				t.Errorf("error ratio = %v, want %v", rep.Overall.ErrorRatio, want)
			}
			var sum int64
			for _, b := range rep.Buckets {
				sum += b.Count
			}
			if sum != c.wantCount {
				t.Errorf("sum of buckets = %d, want %d", sum, c.wantCount)
			}
			for i, want := range c.wantAt {
				if got := rep.Buckets[i].Count; got != want {
					t.Errorf("bucket %d (%v) count = %d, want %d", i, rep.Buckets[i].Start, got, want)
				}
			}
		})
	}
}

func TestGroupBy(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	evs := []Event{
		ev(t0, "pets-list", 200, 1, "alice"),
		ev(t0, "pets-list", 200, 3, "alice"),
		ev(t0, "pets-get", 503, 100, "bob"),
		ev(t0, "pets-get", 200, 2, "alice"),
		ev(t0, "pets-list", 200, 1, "bob"),
	}
	if err := s.Write(ctx, evs); err != nil {
		t.Fatal(err)
	}
	w, _ := ParseWindow("1h")
	for _, c := range []struct {
		desc string
		by   string
		want []Group // only key, count, errors compared
	}{
		{"route", ByRoute, []Group{{Key: "pets-list", Summary: Summary{Count: 3}}, {Key: "pets-get", Summary: Summary{Count: 2, Errors: 1}}}},
		{"status", ByStatus, []Group{{Key: "200", Summary: Summary{Count: 4}}, {Key: "503", Summary: Summary{Count: 1, Errors: 1}}}},
		{"subject", BySubject, []Group{{Key: "alice", Summary: Summary{Count: 3}}, {Key: "bob", Summary: Summary{Count: 2, Errors: 1}}}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			rep, err := s.Requests(ctx, w, c.by, t0)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Groups) != len(c.want) {
				t.Fatalf("groups = %+v, want %+v", rep.Groups, c.want)
			}
			for i, g := range rep.Groups {
				if g.Key != c.want[i].Key || g.Count != c.want[i].Count || g.Errors != c.want[i].Errors {
					t.Errorf("group %d = %s %d/%d, want %s %d/%d", i, g.Key, g.Count, g.Errors, c.want[i].Key, c.want[i].Count, c.want[i].Errors)
				}
			}
		})
	}
	t.Run("unknown dimension", func(t *testing.T) {
		if _, err := s.Requests(ctx, w, "path", t0); err == nil {
			t.Fatal("want an error")
		}
	})
}

func TestRetention(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	evs := []Event{
		ev(now.Add(-10*time.Minute), "recent", 200, 1, ""),
		ev(now.Add(-3*time.Hour), "hours-ago", 200, 1, ""),
		ev(now.Add(-30*time.Hour), "day-ago", 200, 1, ""),
		ev(now.Add(-8*24*time.Hour), "week-ago", 200, 1, ""),
	}
	evs[3].PetID = "pet_old"
	evs[0].PetID = "pet_new"
	if err := s.Write(ctx, evs); err != nil {
		t.Fatal(err)
	}
	n, err := s.Prune(ctx, now, 7*24*time.Hour+time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Deleted: minute rows of hours-ago, day-ago, week-ago (3); quarter
	// rows of day-ago, week-ago (2); hour row of week-ago (1); 1 view.
	if n != 7 {
		t.Errorf("pruned %d rows, want 7", n)
	}
	count := func(res time.Duration) map[string]bool {
		rows, err := s.db.QueryContext(ctx, `SELECT route FROM agg WHERE res = ?`, int64(res/time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		got := map[string]bool{}
		for rows.Next() {
			var r string
			if err := rows.Scan(&r); err != nil {
				t.Fatal(err)
			}
			got[r] = true
		}
		return got
	}
	for _, c := range []struct {
		desc string
		res  time.Duration
		want []string
	}{
		{"minute rows kept 2h", ResMinute, []string{"recent"}},
		{"quarter rows kept 25h", ResQuarter, []string{"recent", "hours-ago"}},
		{"hour rows kept for the retention", ResHour, []string{"recent", "hours-ago", "day-ago"}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			got := count(c.res)
			if len(got) != len(c.want) {
				t.Errorf("rows = %v, want %v", got, c.want)
			}
			for _, r := range c.want {
				if !got[r] {
					t.Errorf("row %q missing; have %v", r, got)
				}
			}
		})
	}
	top, err := s.TopViewed(ctx, 30*24*time.Hour, 10, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(top) != 1 || top[0].PetID != "pet_new" {
		t.Errorf("views after prune = %+v, want only pet_new", top)
	}

	t.Run("short retention wins over horizons", func(t *testing.T) {
		// A bucket goes once it has ended before the cutoff.
		if _, err := s.Prune(ctx, now.Add(time.Hour), time.Minute); err != nil {
			t.Fatal(err)
		}
		for _, res := range resolutions {
			if got := count(res); len(got) != 0 {
				t.Errorf("%v rows left: %v", res, got)
			}
		}
	})
}

func TestViewedPet(t *testing.T) {
	for _, c := range []struct {
		desc string
		e    Event
		want string
	}{
		{"pet_id wins", Event{Method: "POST", Path: "/x", Status: 200, PetID: "pet_a"}, "pet_a"},
		{"get by path", Event{Method: "GET", Path: "/pets/pet_b", Status: 200}, "pet_b"},
		{"get by path with query", Event{Method: "GET", Path: "/pets/pet_b?x=1", Status: 304}, "pet_b"},
		{"list is no view", Event{Method: "GET", Path: "/pets", Status: 200}, ""},
		{"list with slash is no view", Event{Method: "GET", Path: "/pets/", Status: 200}, ""},
		{"sub-resource is no view", Event{Method: "GET", Path: "/pets/pet_b/photos", Status: 200}, ""},
		{"custom verb is no view", Event{Method: "GET", Path: "/pets:batchUpsert", Status: 200}, ""},
		{"delete is no view", Event{Method: "DELETE", Path: "/pets/pet_b", Status: 204}, ""},
		{"not found is no view", Event{Method: "GET", Path: "/pets/pet_x", Status: 404}, ""},
		{"failed with pet_id is no view", Event{Method: "GET", Status: 500, PetID: "pet_a"}, ""},
	} {
		t.Run(c.desc, func(t *testing.T) {
			if got := c.e.ViewedPet(); got != c.want {
				t.Errorf("ViewedPet() = %q, want %q", got, c.want)
			}
		})
	}
}

func TestTopViewed(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := time.Date(2026, 11, 20, 12, 30, 0, 0, time.UTC)
	var evs []Event
	add := func(pet string, n int, at time.Time) {
		for range n {
			evs = append(evs, Event{Time: at, Route: "pets-get", Method: "GET", Path: "/pets/" + pet, Status: 200, LatencyMS: 1})
		}
	}
	add("pet_a", 3, now)
	add("pet_b", 5, now.Add(-2*time.Hour))
	add("pet_c", 3, now.Add(-30*time.Minute))
	add("pet_d", 9, now.Add(-3*24*time.Hour))
	if err := s.Write(ctx, evs); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		desc string
		span time.Duration
		n    int
		want []PetViews
	}{
		{"current hour", time.Hour, 10, []PetViews{{"pet_a", 3}, {"pet_c", 3}}},
		{"24h top 2", 24 * time.Hour, 2, []PetViews{{"pet_b", 5}, {"pet_a", 3}}},
		{"7d", 7 * 24 * time.Hour, 10, []PetViews{{"pet_d", 9}, {"pet_b", 5}, {"pet_a", 3}, {"pet_c", 3}}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			got, err := s.TopViewed(ctx, c.span, c.n, now)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("top = %+v, want %+v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("top[%d] = %+v, want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}

func TestHistogramRoundTrip(t *testing.T) {
	h := newHist()
	for _, v := range []int64{0, 1, 999, 1700, 123456, histHighest} {
		if err := h.RecordValue(v); err != nil {
			t.Fatalf("record %d: %v", v, err)
		}
	}
	snap := h.Export()
	b := encodeCounts(snap.Counts)
	cs, err := decodeCounters(nil, b, len(snap.Counts))
	if err != nil {
		t.Fatal(err)
	}
	c := newCounts()
	addCounters(c, cs)
	if got := histFromCounts(c); !got.Equals(h) {
		t.Error("decoded histogram differs from the original")
	}
	other := hdrhistogram.New(1, 1000, 3).Export()
	for _, bad := range []struct {
		desc string
		b    []byte
	}{
		{"empty", nil},
		{"garbage", []byte("not a histogram")},
		{"truncated", b[:len(b)-1]},
		{"index out of range", append(b[:len(b):len(b)], 0xff, 0xff, 0x03, 0x01)},
		{"zero gap", append(b[:len(b):len(b)], 0x00, 0x01)},
		{"other configuration", func() []byte {
			e := []byte{encodingV1}
			e = binary.AppendUvarint(e, uint64(other.LowestTrackableValue))
			e = binary.AppendUvarint(e, uint64(other.HighestTrackableValue))
			return binary.AppendUvarint(e, uint64(other.SignificantFigures))
		}()},
	} {
		t.Run(bad.desc, func(t *testing.T) {
			if _, err := decodeCounters(nil, bad.b, len(snap.Counts)); !errors.Is(err, errBadEncoding) {
				t.Errorf("err = %v, want errBadEncoding", err)
			}
		})
	}
}
