package bench

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// WrkConfig is one closed-loop wrk run.
type WrkConfig struct {
	Bin      string // wrk binary (default "wrk" on PATH)
	URL      string
	Header   string // one "Name: value" header, or empty
	Threads  int
	Conns    int
	Duration time.Duration
}

// WrkResult is what wrk reports (latencies in milliseconds).
type WrkResult struct {
	Requests int64   `json:"requests"`
	Seconds  float64 `json:"seconds"`
	RPS      float64 `json:"rps"`
	P50      float64 `json:"p50_ms"`
	P90      float64 `json:"p90_ms"`
	P99      float64 `json:"p99_ms"`
	// Errors is wrk's socket errors (connect, read, write, timeout) plus
	// non-2xx/3xx responses.
	Errors int64 `json:"errors"`
	Non2xx int64 `json:"non_2xx"`
}

// Args is the wrk command line for c.
func (c WrkConfig) Args() []string {
	secs := max(int(c.Duration.Round(time.Second)/time.Second), 1)
	args := []string{"-t" + strconv.Itoa(c.Threads), "-c" + strconv.Itoa(c.Conns), "-d" + strconv.Itoa(secs) + "s", "--latency", "--timeout", "10s"}
	if c.Header != "" {
		args = append(args, "-H", c.Header)
	}
	return append(args, c.URL)
}

// RunWrk runs wrk and parses its report.
func RunWrk(ctx context.Context, c WrkConfig) (*WrkResult, error) {
	bin := c.Bin
	if bin == "" {
		bin = "wrk"
	}
	out, err := exec.CommandContext(ctx, bin, c.Args()...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("wrk %s: %w\n%s", c.URL, err, out)
	}
	r, err := ParseWrk(string(out))
	if err != nil {
		return nil, fmt.Errorf("wrk %s: %w\n%s", c.URL, err, out)
	}
	return r, nil
}

// ParseWrk reads wrk's text report (run with --latency).
func ParseWrk(out string) (*WrkResult, error) {
	r := &WrkResult{}
	var haveRPS, haveP99, haveReqs bool
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "Requests/sec:" && len(f) == 2:
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return nil, fmt.Errorf("requests/sec %q: %w", f[1], err)
			}
			r.RPS, haveRPS = v, true
		case len(f) == 2 && (f[0] == "50%" || f[0] == "90%" || f[0] == "99%"):
			v, err := parseWrkDuration(f[1])
			if err != nil {
				return nil, err
			}
			switch f[0] {
			case "50%":
				r.P50 = v
			case "90%":
				r.P90 = v
			case "99%":
				r.P99, haveP99 = v, true
			}
		case len(f) >= 4 && f[1] == "requests" && f[2] == "in":
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("requests %q: %w", f[0], err)
			}
			d, err := parseWrkDuration(strings.TrimSuffix(f[3], ","))
			if err != nil {
				return nil, err
			}
			r.Requests, r.Seconds, haveReqs = n, d/1000, true
		case f[0] == "Socket" && len(f) > 2 && f[1] == "errors:":
			// Socket errors: connect 0, read 0, write 0, timeout 0
			for i := 2; i+1 < len(f); i += 2 {
				n, err := strconv.ParseInt(strings.TrimSuffix(f[i+1], ","), 10, 64)
				if err != nil {
					return nil, fmt.Errorf("socket errors %q: %w", sc.Text(), err)
				}
				r.Errors += n
			}
		case f[0] == "Non-2xx" && len(f) == 5:
			n, err := strconv.ParseInt(f[4], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("non-2xx %q: %w", sc.Text(), err)
			}
			r.Non2xx = n
			r.Errors += n
		}
	}
	if !haveRPS || !haveP99 || !haveReqs {
		return nil, fmt.Errorf("not a wrk --latency report (requests/sec %v, 99%% %v, requests %v)", haveRPS, haveP99, haveReqs)
	}
	return r, nil
}

// parseWrkDuration turns wrk's "850.00us", "1.23ms", "1.02s", "2.00m" into
// milliseconds.
func parseWrkDuration(s string) (float64, error) {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 1e-3}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("wrk duration %q: %w", s, err)
			}
			return f * u.ms, nil
		}
	}
	return 0, fmt.Errorf("wrk duration %q: unknown unit", s)
}
