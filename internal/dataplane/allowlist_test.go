package dataplane

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
)

func checkAllowList(t *testing.T) {
	for name, fields := range allowed {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
		if err != nil {
			t.Errorf("allow-list names unknown message %s", name)
			continue
		}
		md, ok := d.(protoreflect.MessageDescriptor)
		if !ok {
			t.Errorf("%s is not a message", name)
			continue
		}
		for f := range fields {
			if md.Fields().ByName(protoreflect.Name(f)) == nil {
				t.Errorf("allow-list: %s has no field %s", name, f)
			}
		}
	}
}
