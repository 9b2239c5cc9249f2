package pets_test

import (
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/petmesh/petmesh/services/pets"
)

// TestRunRejectsBadConfig checks that bad flags and environment values
// stop the process before it serves, with an error naming the flag.
func TestRunRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		desc string
		args []string
		env  map[string]string
		want string
	}{
		{desc: "body limit too small", args: []string{"-max-body", "10"}, want: "-max-body"},
		{desc: "bad log level", args: []string{"-log-level", "loud"}, want: "-log-level"},
		{desc: "negative pool", args: []string{"-db-max-conns", "-1"}, want: "-db-max-conns"},
		{desc: "negative cache size", args: []string{"-list-cache-bytes", "-1"}, want: "-list-cache-bytes"},
		{desc: "negative cache ttl", env: map[string]string{"PETS_LIST_CACHE_TTL": "-1s"}, want: "-list-cache-ttl"},
		{desc: "retry-after under a second", args: []string{"-retry-after", "500ms"}, want: "-retry-after"},
		{desc: "zero shutdown timeout", args: []string{"-shutdown-timeout", "0s"}, want: "-shutdown-timeout"},
		{desc: "unknown db scheme", args: []string{"-db", "mysql://x"}, want: "-db"},
		{desc: "in-memory sqlite", args: []string{"-db", "sqlite://:memory:"}, want: "-db"},
		{desc: "sqlite in a missing directory", args: []string{"-db", filepath.Join(dir, "no", "such", "pets.db")}, want: "-db"},
		{desc: "bad env value", env: map[string]string{"PETS_MAX_BODY": "lots"}, want: "PETS_MAX_BODY"},
		{desc: "unknown flag", args: []string{"-colour", "red"}, want: "colour"},
		{desc: "address in use by nonsense", args: []string{"-db", filepath.Join(dir, "ok.db"), "-addr", "not-an-address"}, want: "-addr"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			args := append([]string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}, tc.args...)
			getenv := func(k string) string {
				if k == "OTEL_TRACES_EXPORTER" {
					return "none"
				}
				return tc.env[k]
			}
			err := pets.Run(t.Context(), args, getenv, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %s", err, tc.want)
			}
		})
	}
}
