package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestPrecedence(t *testing.T) {
	env := map[string]string{"X_ADDR": "env:1", "X_N": "7", "X_D": "2s", "X_L": "a, b"}
	tests := []struct {
		desc string
		args []string
		want string
		n    int
		d    time.Duration
		l    []string
	}{
		{desc: "env over default", args: nil, want: "env:1", n: 7, d: 2 * time.Second, l: []string{"a", "b"}},
		{desc: "flag over env", args: []string{"-addr", "flag:2", "-n", "9", "-d", "1m", "-l", "c"}, want: "flag:2", n: 9, d: time.Minute, l: []string{"c"}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			f := New("x", func(k string) string { return env[k] }, io.Discard)
			var (
				addr string
				n    int
				d    time.Duration
				l    []string
			)
			f.String(&addr, "addr", "X_ADDR", "def", "address")
			f.Int(&n, "n", "X_N", 1, "n")
			f.Duration(&d, "d", "X_D", time.Second, "d")
			f.StringList(&l, "l", "X_L", "", "l")
			if err := f.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if addr != tc.want || n != tc.n || d != tc.d || strings.Join(l, ",") != strings.Join(tc.l, ",") {
				t.Fatalf("got %q %d %v %v", addr, n, d, l)
			}
		})
	}
}

func TestBadEnvNamesVariable(t *testing.T) {
	f := New("x", func(k string) string { return map[string]string{"X_N": "seven", "X_D": "soon"}[k] }, io.Discard)
	var n int
	var d time.Duration
	f.Int(&n, "n", "X_N", 1, "n")
	f.Duration(&d, "d", "X_D", time.Second, "d")
	err := f.Parse(nil)
	if err == nil || !strings.Contains(err.Error(), "X_N") || !strings.Contains(err.Error(), "X_D") {
		t.Fatalf("want errors naming X_N and X_D, got %v", err)
	}
}
