package resource

import (
	"errors"
	"reflect"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

func TestNodeID(t *testing.T) {
	tests := []struct {
		desc    string
		id      string
		want    NodeID
		wantErr bool
	}{
		{desc: "edge", id: "edge~e1", want: NodeID{Kind: KindEdge, Instance: "e1"}},
		{desc: "sidecar", id: "sidecar~pets~pets-1", want: NodeID{Kind: KindSidecar, Service: "pets", Instance: "pets-1"}},
		{desc: "grpc", id: "grpc~echo~c1", want: NodeID{Kind: KindGRPC, Service: "echo", Instance: "c1"}},
		{desc: "edge with service", id: "edge~a~b", wantErr: true},
		{desc: "sidecar without instance", id: "sidecar~pets", wantErr: true},
		{desc: "empty part", id: "sidecar~~x", wantErr: true},
		{desc: "unknown kind", id: "router~x", wantErr: true},
		{desc: "empty", id: "", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := ParseNodeID(tc.id)
			if tc.wantErr {
				if !errors.Is(err, ErrBadNodeID) {
					t.Fatalf("ParseNodeID(%q) err = %v, want ErrBadNodeID", tc.id, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if got.String() != tc.id {
				t.Fatalf("String() = %q, want %q", got.String(), tc.id)
			}
		})
	}
	if EdgeNodeID("x") != "edge~x" || SidecarNodeID("a", "b") != "sidecar~a~b" || GRPCNodeID("a", "b") != "grpc~a~b" {
		t.Fatal("node id builders disagree with the documented format")
	}
}

func TestCluster(t *testing.T) {
	if Cluster("pets", "") != "pets" || Cluster("pets", "v2") != "pets~v2" {
		t.Fatal("cluster names")
	}
	s, v := ParseCluster("pets~v2")
	if s != "pets" || v != "v2" {
		t.Fatalf("ParseCluster = %q %q", s, v)
	}
	s, v = ParseCluster("pets")
	if s != "pets" || v != "" {
		t.Fatalf("ParseCluster = %q %q", s, v)
	}
}

func TestNodeMeta(t *testing.T) {
	m := NodeMeta{Service: "pets", Version: "v2", InboundPort: 15001, OutboundPort: 15002, AppPort: 8080, Proxyless: true}
	got, err := ParseNodeMeta(m.Struct())
	if err != nil {
		t.Fatal(err)
	}
	if got != m {
		t.Fatalf("round trip: got %+v, want %+v", got, m)
	}
	bad := []struct {
		desc string
		in   map[string]any
	}{
		{desc: "port out of range", in: map[string]any{MetaAppPort: 70000}},
		{desc: "fractional port", in: map[string]any{MetaAppPort: 1.5}},
		{desc: "port not a number", in: map[string]any{MetaInboundPort: "x"}},
		{desc: "service not a string", in: map[string]any{MetaService: 3}},
		{desc: "proxyless not a bool", in: map[string]any{MetaProxyless: 3}},
	}
	for _, tc := range bad {
		t.Run(tc.desc, func(t *testing.T) {
			s, err := structpb.NewStruct(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ParseNodeMeta(s); err == nil {
				t.Fatal("want an error")
			}
		})
	}
	s, _ := structpb.NewStruct(map[string]any{MetaAppPort: "8081", MetaProxyless: "true", "other": 1})
	got, err = ParseNodeMeta(s)
	if err != nil || got.AppPort != 8081 || !got.Proxyless {
		t.Fatalf("string forms: %+v %v", got, err)
	}
	if got, err := ParseNodeMeta(nil); err != nil || got != (NodeMeta{}) {
		t.Fatalf("nil: %+v %v", got, err)
	}
}

func TestRolesRBAC(t *testing.T) {
	p := RolesRBACPerRoute([]string{"admin", "viewer"})
	if err := p.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	roles, err := RolesFromRBACPerRoute(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(roles, []string{"admin", "viewer"}) {
		t.Fatalf("roles = %v", roles)
	}
	p.GetRbac().GetRules().GetPolicies()["roles"].GetPrincipals()[1].GetSourcedMetadata().GetMetadataMatcher().Filter = "other"
	if _, err := RolesFromRBACPerRoute(p); !errors.Is(err, ErrUnsupportedRBAC) {
		t.Fatalf("err = %v, want ErrUnsupportedRBAC", err)
	}
	if _, err := RolesFromRBACPerRoute(nil); !errors.Is(err, ErrUnsupportedRBAC) {
		t.Fatalf("nil: err = %v", err)
	}
}

func TestMetadata(t *testing.T) {
	md := Metadata(map[string]any{ClusterMetaCacheTTL: "30s"})
	if MetadataValue(md, ClusterMetaCacheTTL).GetStringValue() != "30s" {
		t.Fatal("metadata round trip")
	}
	if MetadataValue(nil, "x") != nil {
		t.Fatal("nil metadata")
	}
}
