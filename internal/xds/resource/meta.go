package resource

import (
	"fmt"
	"math"
	"strconv"

	"google.golang.org/protobuf/types/known/structpb"
)

// Node metadata keys (core.Node.metadata). Ports are numbers (a decimal
// string is accepted too); proxyless is a bool.
const (
	MetaService = "petmesh.service"
	MetaVersion = "petmesh.version"
	// MetaListenPort is the port of the edge's public listener.
	MetaListenPort = "petmesh.listen_port"
	// MetaInboundPort is the port of a sidecar's inbound listener.
	MetaInboundPort = "petmesh.inbound_port"
	// MetaOutboundPort is the port of a sidecar's loopback egress listener.
	MetaOutboundPort = "petmesh.outbound_port"
	// MetaAppPort is the port of the app beside a sidecar (127.0.0.1).
	MetaAppPort = "petmesh.app_port"
	// MetaProxyless asks for the proxyless gRPC flavour (API listeners).
	MetaProxyless = "petmesh.proxyless"
)

// NodeMeta is the petmesh part of a node's metadata.
type NodeMeta struct {
	Service      string
	Version      string
	ListenPort   int
	InboundPort  int
	OutboundPort int
	AppPort      int
	Proxyless    bool
}

// Struct encodes m as node metadata; zero fields are left out.
func (m NodeMeta) Struct() *structpb.Struct {
	f := map[string]*structpb.Value{}
	if m.Service != "" {
		f[MetaService] = structpb.NewStringValue(m.Service)
	}
	if m.Version != "" {
		f[MetaVersion] = structpb.NewStringValue(m.Version)
	}
	for k, p := range map[string]int{MetaListenPort: m.ListenPort, MetaInboundPort: m.InboundPort, MetaOutboundPort: m.OutboundPort, MetaAppPort: m.AppPort} {
		if p != 0 {
			f[k] = structpb.NewNumberValue(float64(p))
		}
	}
	if m.Proxyless {
		f[MetaProxyless] = structpb.NewBoolValue(true)
	}
	return &structpb.Struct{Fields: f}
}

// ParseNodeMeta decodes the petmesh keys of node metadata; other keys are
// ignored. A nil struct gives the zero NodeMeta.
func ParseNodeMeta(s *structpb.Struct) (NodeMeta, error) {
	var m NodeMeta
	f := s.GetFields()
	var err error
	str := func(k string) string {
		v, ok := f[k]
		if !ok {
			return ""
		}
		sv, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			if err == nil {
				err = fmt.Errorf("node metadata %s: must be a string", k)
			}
			return ""
		}
		return sv.StringValue
	}
	port := func(k string) int {
		v, ok := f[k]
		if !ok {
			return 0
		}
		var n float64
		switch x := v.GetKind().(type) {
		case *structpb.Value_NumberValue:
			n = x.NumberValue
		case *structpb.Value_StringValue:
			p, perr := strconv.Atoi(x.StringValue)
			if perr != nil {
				n = -1
			} else {
				n = float64(p)
			}
		default:
			n = -1
		}
		if n < 0 || n > 65535 || n != math.Trunc(n) {
			if err == nil {
				err = fmt.Errorf("node metadata %s: must be a port number 0-65535", k)
			}
			return 0
		}
		return int(n)
	}
	m.Service = str(MetaService)
	m.Version = str(MetaVersion)
	m.ListenPort = port(MetaListenPort)
	m.InboundPort = port(MetaInboundPort)
	m.OutboundPort = port(MetaOutboundPort)
	m.AppPort = port(MetaAppPort)
	if v, ok := f[MetaProxyless]; ok {
		switch x := v.GetKind().(type) {
		case *structpb.Value_BoolValue:
			m.Proxyless = x.BoolValue
		case *structpb.Value_StringValue:
			b, perr := strconv.ParseBool(x.StringValue)
			if perr != nil && err == nil {
				err = fmt.Errorf("node metadata %s: must be a bool", MetaProxyless)
			}
			m.Proxyless = b
		default:
			if err == nil {
				err = fmt.Errorf("node metadata %s: must be a bool", MetaProxyless)
			}
		}
	}
	if err != nil {
		return NodeMeta{}, err
	}
	return m, nil
}
