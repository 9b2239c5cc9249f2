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
	"syscall"
	"testing"
	"time"

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

// BenchmarkListPets measures GET /pets with two filters and limit=20
// through the real handler (middleware, tracing, metrics) over a
// loopback socket, against 100k pets in SQLite. The client runs in the
// same process and shares the CPUs.
// cpuTime is the user+system CPU time used by this process so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkListPets(b *testing.B) {
	path := benchDB(b)
	tel := telemetry.NewTest(io.Discard)
	st, err := store.Open(b.Context(), "sqlite://"+path, store.Options{Tracer: tel.Tracer("store"), Registerer: tel.Registry})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	h, err := pets.NewHandler(st, tel, pets.HandlerOptions{})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	load := runListLoad(b, srv.URL)
	load.report(b)
	// Requests per CPU-second of this process, server and client together.
	b.ReportMetric(float64(load.n)/load.cpu.Seconds(), "req/cpu-s")
}

// BenchmarkListPetsProcess is BenchmarkListPets against the real pets
// binary in its own process, so that the CPU time the server alone
// spends per request can be measured (from /proc), apart from the
// client's.
func BenchmarkListPetsProcess(b *testing.B) {
	path := benchDB(b)
	bin := testutil.BuildBinary(b, "./services/pets/cmd/pets")
	p := testutil.Start(b, bin, testutil.StartOptions{
		Args:      []string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-db", "sqlite://" + path, "-pprof"},
		Env:       []string{"OTEL_TRACES_EXPORTER=none"},
		Listeners: []string{"http", "admin"},
	})
	pid := p.Cmd.Process.Pid
	cpu0, err := procCPU(pid)
	if err != nil {
		b.Skipf("no per-process CPU accounting: %v", err)
	}
	if out := os.Getenv("PETS_BENCH_SERVER_PROFILE"); out != "" {
		// Profile the server while the load runs.
		done := make(chan error, 1)
		go func() { done <- saveProfile(p.URL("admin")+"/debug/pprof/profile?seconds=5", out) }()
		defer func() {
			if err := <-done; err != nil {
				b.Error(err)
			}
		}()
	}
	load := runListLoad(b, p.URL("http"))
	cpu, err := procCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	load.report(b)
	if d := cpu - cpu0; d > 0 {
		b.ReportMetric(float64(load.n)/d.Seconds(), "server-req/cpu-s")
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

// listLoad is the outcome of runListLoad.
type listLoad struct {
	n         int
	elapsed   time.Duration
	cpu       time.Duration // of this process
	latencies []time.Duration
}

// runListLoad sends GET /pets?species=Dog&status=adoptable&limit=20 to
// base from b.RunParallel goroutines over kept-alive connections.
func runListLoad(b *testing.B, base string) listLoad {
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := base + "/pets?species=Dog&status=adoptable&limit=20"
	get := func() error {
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
	if err := get(); err != nil { // warm up: prepared statement, connections
		b.Fatal(err)
	}

	var (
		mu  sync.Mutex
		all []time.Duration
	)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		local := make([]time.Duration, 0, 1024)
		for pb.Next() {
			t0 := time.Now()
			if err := get(); err != nil {
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
