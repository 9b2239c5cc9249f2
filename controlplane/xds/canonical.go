package xds

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/petmesh/petmesh/controlplane/translate"
)

// canonical returns m, or a copy of m in which every nested Any (typed
// filter configs and the like, at any depth) holds the deterministic
// encoding of its message. Deterministic marshalling does not reach into
// an Any's bytes, and an Any packed with anypb.New encodes maps in random
// order (jwt_authn's requirement_map, for one): without this, equal
// content could give a different version at every rebuild and be resent
// to every proxy. m itself is never modified (the translator's resources
// are also served by the API); Anys whose type is not linked in are kept
// as they are.
func canonical(m proto.Message) proto.Message {
	if !hasAny(m.ProtoReflect(), 0) {
		return m
	}
	c := proto.Clone(m)
	canonicalize(c.ProtoReflect())
	return c
}

const anyName protoreflect.FullName = "google.protobuf.Any"

// hasAny reports whether m holds an Any with bytes, at any depth.
func hasAny(m protoreflect.Message, depth int) bool {
	if depth > 100 {
		return true
	}
	if m.Descriptor().FullName() == anyName {
		return true
	}
	found := false
	eachMessage(m, func(sub protoreflect.Message) bool {
		found = hasAny(sub, depth+1)
		return !found
	})
	return found
}

func canonicalize(m protoreflect.Message) {
	if m.Descriptor().FullName() == anyName {
		a, ok := m.Interface().(*anypb.Any)
		if !ok {
			return
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			return // type not linked in: keep the bytes
		}
		canonicalize(inner.ProtoReflect())
		if b, err := (proto.MarshalOptions{Deterministic: true}).Marshal(inner); err == nil {
			a.Value = b
		}
		return
	}
	eachMessage(m, func(sub protoreflect.Message) bool {
		canonicalize(sub)
		return true
	})
}

// eachMessage calls f with every message-valued field, list element and
// map value set in m that can hold an Any (translate.CanHoldAny: the
// others are skipped without a look), until f returns false.
func eachMessage(m protoreflect.Message, f func(protoreflect.Message) bool) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		md := fd.Message()
		if fd.IsMap() {
			md = fd.MapValue().Message()
		}
		if !translate.CanHoldAny(md) {
			return true
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			more := true
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				more = f(mv.Message())
				return more
			})
			return more
		case fd.IsList():
			if fd.Message() == nil {
				return true
			}
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if !f(l.Get(i).Message()) {
					return false
				}
			}
			return true
		case fd.Message() != nil:
			return f(v.Message())
		}
		return true
	})
}
