package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/petmesh/petmesh/dev/launcher"
)

// TestQueryTokenThroughTheMesh runs the mesh with the control plane's
// -jwt-query-param access_token (CONTROLPLANE_JWT_QUERY_PARAM): the edge
// takes a token from that query parameter, removes it from the URL and
// hands it on in the Authorization header, so the pets sidecar verifies
// it again and pets, which answers 400 to any query parameter it does not
// know, never sees it. (TestMeshBuiltin's auth scenario checks that the
// default mesh refuses such a token with 401.)
func TestQueryTokenThroughTheMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	m := startMesh(t, "builtin", "", func(o *launcher.Options) {
		o.Env = append(o.Env, "CONTROLPLANE_JWT_QUERY_PARAM=access_token")
	})
	alice := m.token("alice")
	for _, tc := range []struct {
		desc, path, header string
		want               int
		wantMessage        string
	}{
		{desc: "token in the parameter, no header", path: "/pets?limit=2&access_token=" + alice, want: http.StatusOK},
		{desc: "the parameter first in the query", path: "/pets?access_token=" + alice + "&limit=2", want: http.StatusOK},
		{desc: "the header wins over a bad parameter", path: "/pets?limit=2&access_token=not-a-jwt", header: alice, want: http.StatusOK},
		{desc: "a bad token in the parameter", path: "/pets?limit=2&access_token=not-a-jwt", want: http.StatusUnauthorized},
		{desc: "two tokens in the query", path: "/pets?access_token=" + alice + "&access_token=" + alice, want: http.StatusUnauthorized,
			wantMessage: "more than one token in the query string"},
		{desc: "pets still refuses its own unknown parameters", path: "/pets?colour=red&access_token=" + alice, want: http.StatusBadRequest,
			wantMessage: "colour"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			resp, body, err := m.do(http.MethodGet, m.edgeURL(tc.path), tc.header, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.want {
				t.Fatalf("GET %.60s…: status %d, want %d: %s", tc.path, resp.StatusCode, tc.want, body)
			}
			if !strings.Contains(string(body), tc.wantMessage) {
				t.Fatalf("body %s, want it to mention %q", body, tc.wantMessage)
			}
			if strings.Contains(string(body), alice) {
				t.Fatal("the response echoes the token")
			}
		})
	}
}
