package meshauth

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// honoured lists, per message, the fields the adapter implements. Any other
// set field is rejected with its path (the configuration is NACKed).
var honoured = map[protoreflect.FullName][]protoreflect.Name{
	"envoy.extensions.filters.http.jwt_authn.v3.JwtProvider": {
		"issuer", "audiences", "remote_jwks", "local_jwks", "forward",
		"payload_in_metadata", "clock_skew_seconds", "claim_to_headers",
		"from_headers", "from_params", "requires_expiration",
	},
	"envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks":       {"http_uri", "cache_duration", "async_fetch"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader": {"claim_name", "header_name"},
	"envoy.extensions.filters.http.jwt_authn.v3.JwtHeader":        {"name", "value_prefix"},
	"envoy.config.core.v3.HttpUri":                                {"uri", "cluster", "timeout"},
	"envoy.config.core.v3.DataSource":                             {"filename", "inline_bytes", "inline_string"},
}

// leaves are messages accepted whole (their content is informational).
var leaves = map[protoreflect.FullName]bool{
	"google.protobuf.Duration":                                  true,
	"envoy.extensions.filters.http.jwt_authn.v3.JwksAsyncFetch": true,
}

// checkConfig validates the providers of a jwt_authn configuration. The
// requirement map and rules are checked against the providers by Auth; the
// data plane owns rule matching.
func checkConfig(cfg *jwtv3.JwtAuthentication) error {
	if cfg == nil {
		return errors.New("jwt_authn: empty configuration")
	}
	if len(cfg.GetProviders()) == 0 {
		return errors.New("providers: at least one provider is required")
	}
	names := make([]string, 0, len(cfg.GetProviders()))
	for n := range cfg.GetProviders() {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p := cfg.GetProviders()[n]
		path := fmt.Sprintf("providers[%q]", n)
		if err := checkFields(path, p.ProtoReflect()); err != nil {
			return err
		}
		if err := checkProvider(path, p); err != nil {
			return err
		}
	}
	return nil
}

func checkProvider(path string, p *jwtv3.JwtProvider) error {
	switch {
	case p.GetIssuer() == "":
		return fmt.Errorf("%s.issuer: required (tokens without a fixed issuer are not accepted)", path)
	case len(p.GetAudiences()) == 0:
		return fmt.Errorf("%s.audiences: at least one audience is required", path)
	case p.GetRemoteJwks() == nil && p.GetLocalJwks() == nil:
		return fmt.Errorf("%s: remote_jwks or local_jwks is required", path)
	}
	if rj := p.GetRemoteJwks(); rj != nil {
		u, err := url.Parse(rj.GetHttpUri().GetUri())
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s.remote_jwks.http_uri.uri: want an http(s) URL, got %q", path, rj.GetHttpUri().GetUri())
		}
		if d := rj.GetCacheDuration(); d != nil && d.AsDuration() < 0 {
			return fmt.Errorf("%s.remote_jwks.cache_duration: must not be negative", path)
		}
	}
	if lj := p.GetLocalJwks(); lj != nil && lj.GetFilename() == "" && lj.GetInlineString() == "" && len(lj.GetInlineBytes()) == 0 {
		return fmt.Errorf("%s.local_jwks: filename, inline_string or inline_bytes is required", path)
	}
	for i, h := range p.GetFromHeaders() {
		if !strings.EqualFold(h.GetName(), "Authorization") || !strings.EqualFold(strings.TrimSpace(h.GetValuePrefix()), "Bearer") {
			return fmt.Errorf("%s.from_headers[%d]: only the Authorization header with the Bearer prefix is supported", path, i)
		}
	}
	for i, q := range p.GetFromParams() {
		if !resource.ValidQueryParam(q) {
			return fmt.Errorf("%s.from_params[%d]: %q: want a query parameter name of letters, digits, '_', '.' and '-'", path, i, q)
		}
		if slices.Contains(p.GetFromParams()[:i], q) {
			return fmt.Errorf("%s.from_params[%d]: %q: listed twice", path, i, q)
		}
	}
	for i, c := range p.GetClaimToHeaders() {
		ok := (c.GetClaimName() == "sub" && strings.EqualFold(c.GetHeaderName(), identity.HeaderSubject)) ||
			(c.GetClaimName() == "roles" && strings.EqualFold(c.GetHeaderName(), identity.HeaderRoles))
		if !ok {
			return fmt.Errorf("%s.claim_to_headers[%d]: only sub → %s and roles → %s are supported", path, i,
				strings.ToLower(identity.HeaderSubject), strings.ToLower(identity.HeaderRoles))
		}
	}
	if s := p.GetClockSkewSeconds(); s > 300 {
		return fmt.Errorf("%s.clock_skew_seconds: %d: at most 300", path, s)
	}
	return nil
}

// checkFields rejects any set field not in honoured, recursively.
func checkFields(path string, m protoreflect.Message) error {
	name := m.Descriptor().FullName()
	if leaves[name] {
		return nil
	}
	allowed, known := honoured[name]
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fp := path + "." + string(fd.Name())
		if !known || !slices.Contains(allowed, fd.Name()) {
			err = fmt.Errorf("%s: unsupported field", fp)
			return false
		}
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if err = checkFields(fmt.Sprintf("%s[%d]", fp, i), l.Get(i).Message()); err != nil {
					return false
				}
			}
		case fd.IsMap():
			err = fmt.Errorf("%s: unsupported field", fp)
			return false
		default:
			err = checkFields(fp, v.Message())
		}
		return err == nil
	})
	return err
}
