package dataplane

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// testClusterOf builds an EDS cluster of n endpoints (10.x.y.z:8080, all
// healthy) with the real clock and random numbers, for tests and
// benchmarks of endpoint picking.
func testClusterOf(t testing.TB, n int) *clusterRT {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now, Rand: rand.Uint64N}
	urls := make([]string, n)
	for i := range urls {
		urls[i] = fmt.Sprintf("http://10.%d.%d.%d:8080", i>>16&255, i>>8&255, i&255)
	}
	cl, err := buildCluster(edsCluster("a"), loadAssignment(t, "a", urls...), nil, &opts, m)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}
