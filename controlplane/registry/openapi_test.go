package registry_test

import (
	"encoding/json"
	"testing"

	"github.com/petmesh/petmesh/controlplane/registry"
)

// TestOpenAPIDocumentsEveryRoute keeps openapi.json in step with Handler.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(registry.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	for _, tc := range []struct{ desc, path, method string }{
		{desc: "register", path: "/v1/registry/instances", method: "post"},
		{desc: "list", path: "/v1/registry/instances", method: "get"},
		{desc: "heartbeat", path: "/v1/registry/instances/{id}/heartbeat", method: "put"},
		{desc: "deregister", path: "/v1/registry/instances/{id}", method: "delete"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if _, ok := doc.Paths[tc.path][tc.method]; !ok {
				t.Fatalf("%s %s not documented", tc.method, tc.path)
			}
		})
	}
}
