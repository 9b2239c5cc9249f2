package identity

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/petmesh/petmesh/internal/httpx"
)

func TestRequire(t *testing.T) {
	tests := []struct {
		desc    string
		headers map[string]string
		roles   []string
		status  int
	}{
		{desc: "anonymous", roles: []string{RoleAdmin}, status: http.StatusUnauthorized},
		{desc: "missing role", headers: map[string]string{HeaderSubject: "alice", HeaderRoles: "viewer"}, roles: []string{RoleAdmin}, status: http.StatusForbidden},
		{desc: "has role", headers: map[string]string{HeaderSubject: "ops", HeaderRoles: "viewer, admin"}, roles: []string{RoleAdmin}, status: 0},
		{desc: "any identity", headers: map[string]string{HeaderSubject: "bob"}, status: 0},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			_, err := Require(r, tc.roles...)
			var he *httpx.Error
			switch {
			case tc.status == 0 && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.status != 0 && (!errors.As(err, &he) || he.Status != tc.status):
				t.Fatalf("want status %d, got %v", tc.status, err)
			}
		})
	}
}

func TestStripHeaders(t *testing.T) {
	h := http.Header{}
	h.Set("X-Petmesh-Subject", "mallory")
	h["x-petmesh-roles"] = []string{"admin"}
	h.Set("Accept", "*/*")
	StripHeaders(h)
	if len(h) != 1 || h.Get("Accept") == "" {
		t.Fatalf("got %v", h)
	}
}
