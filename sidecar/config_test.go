package sidecar

import (
	"io"
	"strings"
	"testing"
	"time"
)

// parseCase parses the flags of one table case on top of a minimal valid
// command line. With wantErr set it checks that parsing failed naming it
// and reports ok false; otherwise parsing must succeed.
func parseCase(t *testing.T, args []string, env map[string]string, wantErr string) (c Config, ok bool) {
	t.Helper()
	base := []string{"-service", "pets", "-app-addr", "127.0.0.1:7001", "-registry", "none"}
	c, err := parseConfig(append(base, args...), func(k string) string { return env[k] }, io.Discard)
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %v, want one naming %s", err, wantErr)
		}
		return c, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return c, true
}

func TestCPUsFlag(t *testing.T) {
	tests := []struct {
		desc    string
		args    []string
		env     map[string]string
		want    int
		wantErr string
	}{
		{desc: "default is one CPU, as Linkerd's proxy", want: 1},
		{desc: "zero keeps the Go default", args: []string{"-cpus", "0"}, want: 0},
		{desc: "flag", args: []string{"-cpus", "1"}, want: 1},
		{desc: "environment variable", env: map[string]string{"SIDECAR_CPUS": "2"}, want: 2},
		{desc: "negative is refused naming the flag", args: []string{"-cpus", "-1"}, wantErr: "-cpus"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			c, ok := parseCase(t, tc.args, tc.env, tc.wantErr)
			if ok && c.CPUs != tc.want {
				t.Fatalf("CPUs %d, want %d", c.CPUs, tc.want)
			}
		})
	}
}

func TestHealthThresholdFlags(t *testing.T) {
	tests := []struct {
		desc               string
		args               []string
		env                map[string]string
		unhealthy, healthy int
		delta              bool
		wantErr            string
	}{
		{desc: "defaults: 3 failures, 2 passes, delta xDS", unhealthy: 3, healthy: 2, delta: true},
		{desc: "flags", args: []string{"-unhealthy-threshold", "5", "-healthy-threshold", "1", "-xds-delta=false"}, unhealthy: 5, healthy: 1},
		{desc: "environment variables", env: map[string]string{"SIDECAR_UNHEALTHY_THRESHOLD": "4", "SIDECAR_HEALTHY_THRESHOLD": "3", "SIDECAR_XDS_DELTA": "false"}, unhealthy: 4, healthy: 3},
		{desc: "zero failures refused naming the flag", args: []string{"-unhealthy-threshold", "0"}, wantErr: "-unhealthy-threshold"},
		{desc: "too many passes refused naming the flag", args: []string{"-healthy-threshold", "101"}, wantErr: "-healthy-threshold"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			c, ok := parseCase(t, tc.args, tc.env, tc.wantErr)
			if ok && (c.UnhealthyThreshold != tc.unhealthy || c.HealthyThreshold != tc.healthy || c.XDSDelta != tc.delta) {
				t.Fatalf("thresholds %d/%d delta %v, want %d/%d %v", c.UnhealthyThreshold, c.HealthyThreshold, c.XDSDelta, tc.unhealthy, tc.healthy, tc.delta)
			}
		})
	}
}

func TestAccessLogFlushFlag(t *testing.T) {
	tests := []struct {
		desc    string
		args    []string
		env     map[string]string
		want    time.Duration
		wantErr string
	}{
		{desc: "default is Envoy's 1s", want: time.Second},
		{desc: "flag", args: []string{"-access-log-flush-interval", "50ms"}, want: 50 * time.Millisecond},
		{desc: "environment variable", env: map[string]string{"SIDECAR_ACCESS_LOG_FLUSH_INTERVAL": "5s"}, want: 5 * time.Second},
		{desc: "zero is refused naming the flag", args: []string{"-access-log-flush-interval", "0s"}, wantErr: "-access-log-flush-interval"},
		{desc: "over a minute is refused naming the flag", args: []string{"-access-log-flush-interval", "2m"}, wantErr: "-access-log-flush-interval"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			c, ok := parseCase(t, tc.args, tc.env, tc.wantErr)
			if ok && c.AccessLogFlush != tc.want {
				t.Fatalf("flush interval %v, want %v", c.AccessLogFlush, tc.want)
			}
		})
	}
}
