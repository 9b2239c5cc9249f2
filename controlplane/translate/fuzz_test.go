package translate

import (
	"errors"
	"os"
	"testing"

	"github.com/petmesh/petmesh/controlplane/routes"
)

// FuzzTranslate: every table routes.Load accepts translates, for the
// edge, a sidecar of each of its services and a proxyless client, with
// and without OmitResilienceFields, into resources that pass Consistent
// (names, references and every protoc-gen-validate rule, Anys included);
// never a panic or an error. A failure is a gap between the route table's
// validation and the resources it promises.
func FuzzTranslate(f *testing.F) {
	f.Add(routes.DefaultYAML, false)
	f.Add([]byte(resilienceTable), true)
	f.Add([]byte(retries), true)
	f.Add([]byte(authRoles), false)
	full, err := os.ReadFile("../routes/testdata/valid/full.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full, true)
	f.Fuzz(func(t *testing.T, data []byte, omitResilience bool) {
		tab, err := routes.Load(data, routes.ValidateOptions{})
		if err != nil {
			return
		}
		opts := testOpts
		opts.OmitResilienceFields = omitResilience
		nodes := []Node{edgeNode(), grpcNode(), sidecarNode("pets")}
		for _, s := range newInput(tab, testInstances, opts).services {
			nodes = append(nodes, sidecarNode(s))
		}
		for _, n := range nodes {
			res, err := Translate(tab, testInstances, n, opts)
			if err != nil {
				if errors.Is(err, ErrNoJWTProvider) {
					t.Fatalf("%s: %v although providers are configured", n.ID, err)
				}
				t.Fatalf("%s: %v", n.ID, err)
			}
			if err := Consistent(res); err != nil {
				t.Fatalf("%s: inconsistent: %v\ntable:\n%s", n.ID, err, tab.YAML())
			}
		}
	})
}
