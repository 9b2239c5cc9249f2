package bench

import (
	"strings"
	"testing"
	"time"
)

const wrkReport = `Running 10s test @ http://127.0.0.1:8080/pets/1
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.21ms    6.02ms 112.33ms   91.20%
    Req/Sec     9.12k     1.31k   12.40k    70.50%
  Latency Distribution
     50%    2.10ms
     75%    4.00ms
     90%    9.52ms
     99%   31.07ms
  181234 requests in 10.00s, 38.20MB read
Requests/sec:  18118.42
Transfer/sec:      3.82MB
`

func TestParseWrk(t *testing.T) {
	for _, tc := range []struct {
		desc string
		in   string
		want WrkResult
		err  string
	}{
		{desc: "clean run", in: wrkReport, want: WrkResult{Requests: 181234, Seconds: 10, RPS: 18118.42, P50: 2.10, P90: 9.52, P99: 31.07}},
		{desc: "errors and non-2xx", in: strings.Replace(wrkReport, "Requests/sec:",
			"  Socket errors: connect 1, read 2, write 0, timeout 4\n  Non-2xx or 3xx responses: 10\nRequests/sec:", 1),
			want: WrkResult{Requests: 181234, Seconds: 10, RPS: 18118.42, P50: 2.10, P90: 9.52, P99: 31.07, Errors: 17, Non2xx: 10}},
		{desc: "units", in: strings.NewReplacer("2.10ms", "850.00us", "31.07ms", "1.02s", "10.00s,", "1.00m,").Replace(wrkReport),
			want: WrkResult{Requests: 181234, Seconds: 60, RPS: 18118.42, P50: 0.85, P90: 9.52, P99: 1020}},
		{desc: "no latency distribution", in: strings.Replace(wrkReport, "     99%   31.07ms\n", "", 1), err: "not a wrk --latency report"},
		{desc: "not wrk", in: "unable to connect to 127.0.0.1:1 Connection refused\n", err: "not a wrk --latency report"},
		{desc: "bad unit", in: strings.Replace(wrkReport, "31.07ms", "31.07xs", 1), err: `wrk duration "31.07xs"`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := ParseWrk(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
			if got.Requests != tc.want.Requests || !near(got.Seconds, tc.want.Seconds) || !near(got.RPS, tc.want.RPS) ||
				!near(got.P50, tc.want.P50) || !near(got.P90, tc.want.P90) || !near(got.P99, tc.want.P99) ||
				got.Errors != tc.want.Errors || got.Non2xx != tc.want.Non2xx {
				t.Fatalf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
}

func TestWrkArgs(t *testing.T) {
	got := strings.Join(WrkConfig{URL: "http://x/", Header: "Authorization: Bearer t", Threads: 2, Conns: 64, Duration: 1500 * time.Millisecond}.Args(), " ")
	want := "-t2 -c64 -d2s --latency --timeout 10s -H Authorization: Bearer t http://x/"
	if got != want {
		t.Fatalf("args %q, want %q", got, want)
	}
}
