package pets_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/services/pets"
	"github.com/petmesh/petmesh/services/pets/store"
)

const (
	benchPets = 100_000
	// benchFixtureVersion changes whenever benchPet changes, so that the
	// cached database is rebuilt.
	benchFixtureVersion = 2
)

// benchPet is pet i of the benchmark data set: 40% dogs, 40% cats, 20%
// rabbits; 70% adoptable, 25% adopted, 5% found.
func benchPet(i int) store.PetInput {
	species := []string{"Dog", "Dog", "Cat", "Cat", "Rabbit"}[i%5]
	status := "adoptable"
	switch r := (i / 5) % 20; {
	case r < 5:
		status = "adopted"
	case r == 5:
		status = "found"
	}
	return store.PetInput{
		Source: "petfinder", SourceID: fmt.Sprint(i), Name: fmt.Sprintf("Pet %06d", (i*7919)%benchPets),
		Species: species,
		Breeds:  store.Breeds{Primary: []string{"Labrador Retriever", "Beagle", "Siamese", "Lop", "Tabby"}[i%5], Mixed: i%3 == 0},
		Age:     store.Ages[i%4], Gender: store.Genders[i%3], Size: store.Sizes[i%4], Status: status,
		Colors:         store.Colors{Primary: "Black", Secondary: "White"},
		Description:    fmt.Sprintf("Pet number %d is friendly, house-trained and good with children and other animals.", i),
		Photos:         []string{fmt.Sprintf("https://photos.example/%d/1.jpg", i), fmt.Sprintf("https://photos.example/%d/2.jpg", i)},
		OrganizationID: fmt.Sprintf("NJ%03d", i%500),
		Location:       store.Location{City: []string{"Newark", "Trenton", "Camden", "Princeton"}[i%4], State: "NJ", Postcode: "07101", Country: "US"},
		PublishedAt:    time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 7 * time.Minute),
		UpdatedAt:      time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration((i*31)%benchPets) * time.Minute),
	}
}

// benchDB returns a SQLite file with benchPets pets, cached in the temp
// directory by schema and fixture version so that reruns skip seeding.
func benchDB(b *testing.B) string {
	b.Helper()
	v, err := store.SchemaID("sqlite")
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(os.TempDir(), fmt.Sprintf("petmesh-pets-bench-%s-f%d-%d.db", v, benchFixtureVersion, benchPets))
	if _, err := os.Stat(path); err == nil {
		return path
	}
	// Seed into a private file, then rename: a cached file is complete.
	tmp := filepath.Join(b.TempDir(), "seed.db")
	ctx := context.Background()
	// A page cache that holds the whole database keeps the bulk insert
	// from spilling pages mid-transaction.
	st, err := store.Open(ctx, "sqlite://"+tmp+"?_pragma=cache_size(-1000000)&_pragma=synchronous(OFF)", store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	in := make([]store.PetInput, benchPets)
	for i := range in {
		in[i] = benchPet(i)
	}
	start := time.Now()
	// One transaction and one prepared statement for all rows.
	if res, err := st.Upsert(ctx, in); err != nil || res.Inserted != benchPets {
		b.Fatalf("seed: %+v, %v", res, err)
	}
	for _, q := range []string{`ANALYZE`, `PRAGMA wal_checkpoint(TRUNCATE)`, `PRAGMA journal_mode=DELETE`} {
		if _, err := st.DB().ExecContext(ctx, q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d pets in %v", benchPets, time.Since(start))
	if err := os.Rename(tmp, path); err != nil {
		b.Fatal(err)
	}
	return path
}

// cpuTime is the user+system CPU time used by this process so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchDSN is the DSN of the benchmark database, with the SQLite
// parameters of PETS_BENCH_DB_PARAMS (e.g. _pragma=mmap_size(0)) to
// compare settings.
func benchDSN(path string) string {
	if p := os.Getenv("PETS_BENCH_DB_PARAMS"); p != "" {
		return "sqlite://" + path + "?" + p
	}
	return "sqlite://" + path
}

// benchQuery is the list request of the target: two filters,
// 20 results.
const benchQuery = "/pets?species=Dog&status=adoptable&limit=20"

// benchPages returns the paths of the first n pages of benchQuery (the
// first without a cursor), read from the store.
func benchPages(b *testing.B, path string, n int) []string {
	b.Helper()
	st, err := store.Open(b.Context(), "sqlite://"+path, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	out := []string{benchQuery}
	q := store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20}
	buf := make([]byte, 0, 64<<10)
	for len(out) < n {
		_, next, err := st.AppendListJSON(b.Context(), buf[:0], q)
		if err != nil || next == "" {
			b.Fatalf("page %d: next %q, %v", len(out), next, err)
		}
		q.Cursor = next
		out = append(out, benchQuery+"&cursor="+next)
	}
	return out
}

// benchPageCount is how many distinct pages the miss scenarios cycle
// through: many times what benchMissCache holds, so that every request
// misses (a cyclic scan defeats LRU).
const (
	benchPageCount = 1000
	benchMissCache = 1 << 20 // about 60 pages of 20 pets
)

// listScenario is one load of the list benchmarks.
type listScenario struct {
	name       string
	cacheBytes int64
	// pages: cycle through benchPageCount distinct pages instead of
	// asking for the first page every time.
	pages bool
}

// listScenarios compare, in one run: the cache off (every request runs
// the SQL query), every request a hit, and a cycle of distinct pages
// with the cache off and with a small cache that misses every time (the
// miss path: query, ETag, copy and insertion into the cache).
var listScenarios = []listScenario{
	{name: "cache=off", cacheBytes: 0},
	{name: "cache=hit", cacheBytes: pets.DefaultListCacheBytes},
	{name: "pages/cache=off", cacheBytes: 0, pages: true},
	{name: "pages/cache=miss", cacheBytes: benchMissCache, pages: true},
}

// paths returns the request paths of the scenario; pages are read once
// into *pages and shared by the scenarios.
func (s listScenario) paths(b *testing.B, db string, pages *[]string) []string {
	if !s.pages {
		return []string{benchQuery}
	}
	if *pages == nil {
		*pages = benchPages(b, db, benchPageCount)
	}
	return *pages
}

// BenchmarkListPets measures GET /pets (two filters, 20 results)
// through the real handler (middleware, tracing, metrics) over a
// loopback socket, against 100k pets in SQLite, in each listScenario.
// The client runs in the same process and shares the CPUs; allocs/op
// count both sides.
func BenchmarkListPets(b *testing.B) {
	db := benchDB(b)
	var pages []string
	for _, sc := range listScenarios {
		b.Run(sc.name, func(b *testing.B) {
			paths := sc.paths(b, db, &pages)
			tel := telemetry.NewTest(io.Discard)
			st, err := store.Open(b.Context(), benchDSN(db), store.Options{Tracer: tel.Tracer("store"), Registerer: tel.Registry})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = st.Close() }()
			h, err := pets.NewHandler(st, tel, pets.HandlerOptions{ListCacheBytes: sc.cacheBytes})
			if err != nil {
				b.Fatal(err)
			}
			srv := httptest.NewServer(h)
			defer srv.Close()
			lookups := func() (hits, all float64) {
				hits = cacheLookups(b, tel.Registry, "hit")
				return hits, hits + cacheLookups(b, tel.Registry, "miss")
			}
			h0, a0 := lookups()
			load := runListLoad(b, srv.URL, paths)
			h1, a1 := lookups()
			load.report(b)
			// Requests per CPU-second of this process, server and client together.
			b.ReportMetric(float64(load.n)/load.cpu.Seconds(), "req/cpu-s")
			if sc.cacheBytes > 0 && a1 > a0 {
				b.ReportMetric(100*(h1-h0)/(a1-a0), "hit-%")
			}
		})
	}
}

// cacheLookups returns the list cache's lookups with result (hit or
// miss) counted in g.
func cacheLookups(b *testing.B, g prometheus.Gatherer, result string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "petmesh_pets_list_cache_lookups_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// seriesValue finds series in a text exposition and returns its value,
// or 0.
func seriesValue(text, series string) float64 {
	for line := range strings.Lines(text) {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return 0
}

// BenchmarkListPetsProcess is BenchmarkListPets against the real pets
// binary in its own process, so that the CPU time and the allocations of
// the server alone can be measured (from /proc and its /metrics), apart
// from the client's.
func BenchmarkListPetsProcess(b *testing.B) {
	db := benchDB(b)
	// PETS_BENCH_BIN runs another build of the server (e.g. of an older
	// commit) under the same load, for before/after comparisons.
	bin := os.Getenv("PETS_BENCH_BIN")
	if bin == "" {
		bin = testutil.BuildBinary(b, "./services/pets/cmd/pets")
	}
	var pages []string
	for _, sc := range listScenarios {
		b.Run(sc.name, func(b *testing.B) {
			paths := sc.paths(b, db, &pages)
			p := testutil.Start(b, bin, testutil.StartOptions{
				Args: []string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-db", benchDSN(db), "-pprof"},
				// By environment, which builds without the cache ignore.
				Env:       []string{"OTEL_TRACES_EXPORTER=none", "PETS_LIST_CACHE_BYTES=" + strconv.FormatInt(sc.cacheBytes, 10)},
				Listeners: []string{"http", "admin"},
			})
			defer p.Kill()
			pid := p.Cmd.Process.Pid
			metrics := func() string {
				resp, err := http.Get(p.URL("admin") + "/metrics")
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _ = resp.Body.Close() }()
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					b.Fatal(err)
				}
				return string(body)
			}
			m0 := metrics()
			cpu0, err := procCPU(pid)
			if err != nil {
				b.Skipf("no per-process CPU accounting: %v", err)
			}
			if out := os.Getenv("PETS_BENCH_SERVER_PROFILE"); out != "" {
				// Profile the server while the load runs.
				done := make(chan error, 1)
				go func() {
					done <- saveProfile(p.URL("admin")+"/debug/pprof/profile?seconds=5", strings.ReplaceAll(out, "%s", strings.ReplaceAll(sc.name, "/", "-")))
				}()
				defer func() {
					if err := <-done; err != nil {
						b.Error(err)
					}
				}()
			}
			load := runListLoad(b, p.URL("http"), paths)
			cpu, err := procCPU(pid)
			if err != nil {
				b.Fatal(err)
			}
			m1 := metrics()
			load.report(b)
			if d := cpu - cpu0; d > 0 {
				b.ReportMetric(float64(load.n)/d.Seconds(), "server-req/cpu-s")
			}
			// The two scrapes' own allocations are noise next to the load's.
			const mallocs = "go_memstats_mallocs_total"
			b.ReportMetric((seriesValue(m1, mallocs)-seriesValue(m0, mallocs))/float64(load.n), "server-allocs/req")
			if sc.cacheBytes > 0 {
				hit, miss := `petmesh_pets_list_cache_lookups_total{result="hit"}`, `petmesh_pets_list_cache_lookups_total{result="miss"}`
				hits := seriesValue(m1, hit) - seriesValue(m0, hit)
				if all := hits + seriesValue(m1, miss) - seriesValue(m0, miss); all > 0 {
					b.ReportMetric(100*hits/all, "hit-%")
				}
			}
		})
	}
}

func saveProfile(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// procCPU is the user+system CPU time of process pid, from /proc (tick
// resolution, so measure over seconds).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticksPerSecond, nil
}

// benchWarmup is the least number of requests sent before measuring.
const benchWarmup = 500

// listLoad is the outcome of runListLoad.
type listLoad struct {
	n         int
	elapsed   time.Duration
	cpu       time.Duration // of this process
	latencies []time.Duration
}

// runListLoad sends GET requests for paths, in turn from one shared
// sequence, to base from b.RunParallel goroutines over kept-alive
// connections.
func runListLoad(b *testing.B, base string, paths []string) listLoad {
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	urls := make([]string, len(paths))
	for i, p := range paths {
		urls[i] = base + p
	}
	get := func(url string) error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return err
	}
	// Warm up (prepared statements, connections, page caches): every
	// path once, and at least benchWarmup requests.
	for i := range max(len(urls), benchWarmup) {
		if err := get(urls[i%len(urls)]); err != nil {
			b.Fatal(err)
		}
	}

	var (
		mu  sync.Mutex
		all []time.Duration
		seq atomic.Uint64
	)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		local := make([]time.Duration, 0, 1024)
		for pb.Next() {
			url := urls[int(seq.Add(1)%uint64(len(urls)))]
			t0 := time.Now()
			if err := get(url); err != nil {
				b.Error(err)
				return
			}
			local = append(local, time.Since(t0))
		}
		mu.Lock()
		all = append(all, local...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	cpu := cpuTime(b) - cpu0
	b.StopTimer()
	slices.Sort(all)
	return listLoad{n: len(all), elapsed: elapsed, cpu: cpu, latencies: all}
}

// report reports throughput and latency percentiles.
func (l listLoad) report(b *testing.B) {
	if l.n == 0 {
		return
	}
	rps := float64(l.n) / l.elapsed.Seconds()
	b.ReportMetric(rps, "req/s")
	b.ReportMetric(rps/float64(runtime.GOMAXPROCS(0)), "req/s/core")
	b.ReportMetric(float64(l.latencies[l.n/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(l.latencies[l.n*99/100].Microseconds()), "p99-µs")
}

// BenchmarkListPetsStore is the store's share of BenchmarkListPets: the
// same query on the same data, without HTTP.
func BenchmarkListPetsStore(b *testing.B) {
	st, err := store.Open(b.Context(), "sqlite://"+benchDB(b), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	q := store.ListQuery{Species: "Dog", Status: "adoptable", Limit: 20}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	defer func() { b.ReportMetric(float64(b.N)/(cpuTime(b)-cpu0).Seconds(), "ops/cpu-s") }()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 0, 32<<10)
		for pb.Next() {
			out, next, err := st.AppendListJSON(b.Context(), buf[:0], q)
			if err != nil || next == "" || len(out) == 0 {
				b.Errorf("list: %v", err)
				return
			}
		}
	})
}
