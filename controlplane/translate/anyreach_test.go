package translate

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestCanHoldAny(t *testing.T) {
	tests := []struct {
		desc string
		msg  proto.Message
		want bool
	}{
		{desc: "Any itself", msg: &anypb.Any{}, want: true},
		{desc: "listener (typed filter configs)", msg: &listenerv3.Listener{}, want: true},
		{desc: "http connection manager (http filters)", msg: &hcm.HttpConnectionManager{}, want: true},
		{desc: "load assignment (endpoint metadata's typed_filter_metadata)", msg: &endpointv3.ClusterLoadAssignment{}, want: true},
		{desc: "socket address", msg: &core.SocketAddress{}, want: false},
		{desc: "wrapper", msg: &wrapperspb.UInt32Value{}, want: false},
		{desc: "Struct (recursive through Value, no Any)", msg: &structpb.Struct{}, want: false},
		{desc: "Value (the same cycle entered elsewhere)", msg: &structpb.Value{}, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			for range 2 { // computed, then cached
				if got := CanHoldAny(tc.msg.ProtoReflect().Descriptor()); got != tc.want {
					t.Fatalf("CanHoldAny(%s) = %v, want %v", tc.msg.ProtoReflect().Descriptor().FullName(), got, tc.want)
				}
			}
		})
	}
}
