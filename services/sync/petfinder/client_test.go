package petfinder_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	standin "github.com/petmesh/petmesh/dev/petfinder-standin"
	"github.com/petmesh/petmesh/services/sync/petfinder"
)

// fakeClock records the waits asked for and never sleeps.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	slept []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slept = append(c.slept, d)
	c.now = c.now.Add(d)
	return ctx.Err()
}

func (c *fakeClock) sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.slept)
}

type env struct {
	srv   *standin.Server
	url   string
	clock *fakeClock
	kinds []string
	mu    sync.Mutex
}

func newEnv(t *testing.T, n int, faults string) *env {
	t.Helper()
	fs, err := standin.ParseFaults(faults)
	if err != nil {
		t.Fatal(err)
	}
	s := standin.New(standin.Options{Animals: standin.Generate(1, n), Faults: fs})
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return &env{srv: s, url: ts.URL, clock: &fakeClock{now: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}}
}

func (e *env) client(t *testing.T, mod func(*petfinder.Config)) *petfinder.Client {
	t.Helper()
	cfg := petfinder.Config{
		BaseURL: e.url, ClientID: standin.DefaultClientID, ClientSecret: standin.DefaultClientSecret,
		MaxAttempts: 5, BaseBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, MaxRetryAfter: 2 * time.Minute,
		RequestTimeout: 5 * time.Second,
		Clock:          e.clock, Rand: func() float64 { return 0.5 },
		OnError: func(kind string) { e.mu.Lock(); e.kinds = append(e.kinds, kind); e.mu.Unlock() },
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := petfinder.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) errorKinds() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.kinds)
}

var allStatuses = []string{"adoptable", "adopted", "found"}

func TestEachFollowsPagination(t *testing.T) {
	e := newEnv(t, 250, "")
	c := e.client(t, nil)
	seen := map[int64]bool{}
	pages := 0
	err := c.Each(context.Background(), petfinder.Query{Statuses: allStatuses}, func(_ context.Context, p *petfinder.Page) error {
		pages++
		for _, a := range p.Animals {
			if seen[a.ID] {
				t.Fatalf("animal %d twice", a.ID)
			}
			seen[a.ID] = true
			if a.PublishedAt.IsZero() || a.Name == "" || a.Contact.Address.City == "" || a.Breeds.Primary == "" {
				t.Fatalf("animal not decoded: %+v", a)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if pages != 3 || len(seen) != 250 {
		t.Fatalf("pages %d animals %d, want 3 and 250", pages, len(seen))
	}
	t.Run("after filters on published_at", func(t *testing.T) {
		n := 0
		after := standin.FixtureEpoch().Add(-97*5*time.Minute + time.Second)
		err := c.Each(context.Background(), petfinder.Query{Statuses: allStatuses, After: after, Limit: 2}, func(_ context.Context, p *petfinder.Page) error {
			n += len(p.Animals)
			return nil
		})
		if err != nil || n != 5 {
			t.Fatalf("got %d animals (%v), want 5", n, err)
		}
	})
}

func TestRetries(t *testing.T) {
	httpDate := time.Date(2026, 11, 1, 0, 0, 10, 0, time.UTC).Format(http.TimeFormat)
	tests := []struct {
		desc        string
		faults      string
		mod         func(*petfinder.Config)
		wantErr     bool
		wantStatus  int // of the final *APIError, when wantErr
		wantAuthErr bool
		wantSleeps  []time.Duration
		wantKinds   []string
		wantTokens  int
		// loose: the transport may itself retry a GET whose reused
		// connection was dropped, so only the kinds are checked.
		loose bool
	}{
		{desc: "429 with delay-seconds", faults: `{"status":429,"retry_after":"3","count":2}`,
			wantSleeps: []time.Duration{3 * time.Second, 3 * time.Second}, wantKinds: []string{"rate_limited", "rate_limited"}, wantTokens: 1},
		{desc: "429 with an HTTP date", faults: `{"status":429,"retry_after":"` + httpDate + `"}`,
			wantSleeps: []time.Duration{10 * time.Second}, wantKinds: []string{"rate_limited"}, wantTokens: 1},
		{desc: "429 asking too long is capped", faults: `{"status":429,"retry_after":"86400"}`,
			wantSleeps: []time.Duration{2 * time.Minute}, wantKinds: []string{"rate_limited"}, wantTokens: 1},
		{desc: "429 without Retry-After backs off", faults: `{"status":429}`,
			wantSleeps: []time.Duration{50 * time.Millisecond}, wantKinds: []string{"rate_limited"}, wantTokens: 1},
		{desc: "5xx backs off exponentially with jitter", faults: `[{"status":503,"count":2},{"status":500}]`,
			wantSleeps: []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}, wantKinds: []string{"server", "server", "server"}, wantTokens: 1},
		{desc: "backoff is capped", faults: `{"status":502,"count":4}`,
			wantSleeps: []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}, wantKinds: []string{"server", "server", "server", "server"}, wantTokens: 1,
			mod: func(c *petfinder.Config) { c.MaxBackoff = 800 * time.Millisecond }},
		{desc: "dropped connections are retried", faults: `{"drop":true,"count":3}`, loose: true,
			wantKinds: []string{"network"}, wantTokens: 1},
		{desc: "slow response times out and is retried", faults: `{"delay":"3s"}`,
			mod:        func(c *petfinder.Config) { c.RequestTimeout = 200 * time.Millisecond },
			wantSleeps: []time.Duration{50 * time.Millisecond}, wantKinds: []string{"timeout"}, wantTokens: 1},
		{desc: "attempts are bounded", faults: `{"status":500,"count":-1}`, wantErr: true, wantStatus: 500,
			wantSleeps: []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}, wantKinds: []string{"server", "server", "server", "server", "server"}, wantTokens: 1},
		{desc: "other 4xx is not retried", faults: `{"status":404}`, wantErr: true, wantStatus: 404,
			wantKinds: []string{"client"}, wantTokens: 1},
		{desc: "401 fetches a new token once", faults: `{"status":401}`,
			wantSleeps: []time.Duration{0}, wantKinds: []string{"unauthorized"}, wantTokens: 2},
		{desc: "401 twice is an auth error", faults: `{"status":401,"count":2}`, wantErr: true, wantAuthErr: true,
			wantSleeps: []time.Duration{0}, wantKinds: []string{"unauthorized", "unauthorized"}, wantTokens: 2},
		{desc: "token endpoint 5xx is retried", faults: `{"path":"token","status":503}`,
			wantSleeps: []time.Duration{50 * time.Millisecond}, wantKinds: []string{"token"}, wantTokens: 2},
		{desc: "bad credentials are not retried", wantErr: true, wantAuthErr: true,
			mod:       func(c *petfinder.Config) { c.ClientSecret = "wrong" },
			wantKinds: []string{"token"}, wantTokens: 1},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			e := newEnv(t, 30, tc.faults)
			c := e.client(t, tc.mod)
			p, err := c.Animals(context.Background(), petfinder.Query{Statuses: allStatuses, Limit: 10})
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				var apiErr *petfinder.APIError
				if tc.wantStatus != 0 && (!errors.As(err, &apiErr) || apiErr.Status != tc.wantStatus) {
					t.Fatalf("error %v, want status %d", err, tc.wantStatus)
				}
				if tc.wantAuthErr != errors.Is(err, petfinder.ErrAuth) {
					t.Fatalf("error %v: ErrAuth %v, want %v", err, errors.Is(err, petfinder.ErrAuth), tc.wantAuthErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if len(p.Animals) != 10 || p.Pagination.TotalPages != 3 {
				t.Fatalf("page %+v", p.Pagination)
			}
			if tc.loose {
				kinds := e.errorKinds()
				if len(kinds) == 0 || slices.IndexFunc(kinds, func(k string) bool { return k != tc.wantKinds[0] }) >= 0 {
					t.Fatalf("error kinds %v, want only %v", kinds, tc.wantKinds[0])
				}
				return
			}
			if got := e.clock.sleeps(); !slices.Equal(got, tc.wantSleeps) {
				t.Fatalf("sleeps %v, want %v", got, tc.wantSleeps)
			}
			if got := e.errorKinds(); !slices.Equal(got, tc.wantKinds) {
				t.Fatalf("error kinds %v, want %v", got, tc.wantKinds)
			}
			st := stats(t, e)
			if st.TokenRequests != tc.wantTokens {
				t.Fatalf("token requests %d, want %d", st.TokenRequests, tc.wantTokens)
			}
		})
	}
}

func TestTokenIsCached(t *testing.T) {
	e := newEnv(t, 30, "")
	c := e.client(t, nil)
	for range 3 {
		if _, err := c.Animals(context.Background(), petfinder.Query{}); err != nil {
			t.Fatal(err)
		}
	}
	if st := stats(t, e); st.TokenRequests != 1 || st.AnimalRequests != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCancelStopsRetrying(t *testing.T) {
	e := newEnv(t, 30, `{"status":503,"count":-1}`)
	ctx, cancel := context.WithCancel(context.Background())
	c := e.client(t, func(cfg *petfinder.Config) {
		cfg.OnError = func(string) { cancel() }
	})
	_, err := c.Animals(ctx, petfinder.Query{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if st := stats(t, e); st.AnimalRequests != 1 {
		t.Fatalf("%d requests after cancel", st.AnimalRequests)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		desc string
		cfg  petfinder.Config
	}{
		{desc: "no base url", cfg: petfinder.Config{ClientID: "a", ClientSecret: "b"}},
		{desc: "bad scheme", cfg: petfinder.Config{BaseURL: "ftp://x", ClientID: "a", ClientSecret: "b"}},
		{desc: "no secret", cfg: petfinder.Config{BaseURL: "http://127.0.0.1:1", ClientID: "a"}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := petfinder.New(tc.cfg); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestParseTime(t *testing.T) {
	tests := []struct {
		desc, in string
		want     time.Time
		err      bool
	}{
		{desc: "petfinder layout", in: "2020-08-31T20:59:35+0000", want: time.Date(2020, 8, 31, 20, 59, 35, 0, time.UTC)},
		{desc: "rfc3339 with offset", in: "2020-08-31T22:59:35+02:00", want: time.Date(2020, 8, 31, 20, 59, 35, 0, time.UTC)},
		{desc: "garbage", in: "yesterday", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := petfinder.ParseTime(tc.in)
			if (err != nil) != tc.err || (!tc.err && !got.Equal(tc.want)) {
				t.Fatalf("got %v %v", got, err)
			}
		})
	}
}

func stats(t *testing.T, e *env) standin.Stats {
	t.Helper()
	return e.srv.Stats()
}
