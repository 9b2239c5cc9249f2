package translate

import (
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
)

const anyFullName protoreflect.FullName = "google.protobuf.Any"

// canHoldAny caches CanHoldAny by message type.
var canHoldAny sync.Map // protoreflect.FullName → bool

// CanHoldAny reports whether a message of type md can contain a
// google.protobuf.Any at any depth, by its schema (every message type
// reachable through its fields, list elements and map values). Walks that
// look for the Anys inside a resource (typed filter configs, to validate
// or re-encode them) use it to skip subtrees that cannot hold one: a load
// assignment's thousands of endpoints and addresses, for one. The answer
// is exact and cached per type; safe for concurrent use.
func CanHoldAny(md protoreflect.MessageDescriptor) bool {
	if md == nil {
		return false
	}
	if v, ok := canHoldAny.Load(md.FullName()); ok {
		return v.(bool)
	}
	seen := map[protoreflect.FullName]bool{}
	var reach func(protoreflect.MessageDescriptor) bool
	reach = func(d protoreflect.MessageDescriptor) bool {
		if d.FullName() == anyFullName {
			return true
		}
		if seen[d.FullName()] {
			return false // being (or already) explored from another path
		}
		seen[d.FullName()] = true
		fields := d.Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			sub := fd.Message()
			if fd.IsMap() {
				sub = fd.MapValue().Message()
			}
			if sub != nil && reach(sub) {
				return true
			}
		}
		return false
	}
	res := reach(md)
	canHoldAny.Store(md.FullName(), res)
	return res
}

// fieldCanHoldAny reports whether field fd's messages (the value, each
// list element or each map value) can hold an Any.
func fieldCanHoldAny(fd protoreflect.FieldDescriptor) bool {
	if fd.IsMap() {
		return CanHoldAny(fd.MapValue().Message())
	}
	return CanHoldAny(fd.Message())
}
