package client

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	// Register the extension types that typed_config fields may name so
	// that protojson can resolve them.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// LoadBootstrap reads an Envoy v3 Bootstrap (JSON, or YAML when the file
// name ends in .yaml or .yml) and returns its static_resources as a
// Snapshot of listeners and clusters by name. Route configurations are
// expected inline in the listeners (HttpConnectionManager route_config) and
// endpoints inline in the clusters (STATIC clusters with load_assignment),
// as in any Envoy bootstrap. Unknown fields are errors.
func LoadBootstrap(path string) (*Snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bootstrap: %w", err)
	}
	if ext := strings.ToLower(filepath.Ext(path)); ext == ".yaml" || ext == ".yml" {
		var v any
		if err := yaml.Unmarshal(b, &v); err != nil {
			return nil, fmt.Errorf("bootstrap %s: %w", path, err)
		}
		if b, err = json.Marshal(v); err != nil {
			return nil, fmt.Errorf("bootstrap %s: %w", path, err)
		}
	}
	var bs bootstrap.Bootstrap
	if err := protojson.Unmarshal(b, &bs); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	s := emptySnapshot()
	for i, l := range bs.GetStaticResources().GetListeners() {
		if l.GetName() == "" {
			return nil, fmt.Errorf("bootstrap %s: static_resources.listeners[%d].name: empty", path, i)
		}
		s.Listeners[l.GetName()] = l
	}
	for i, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == "" {
			return nil, fmt.Errorf("bootstrap %s: static_resources.clusters[%d].name: empty", path, i)
		}
		s.Clusters[c.GetName()] = c
	}
	return s, nil
}
