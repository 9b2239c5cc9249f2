package dataplane

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// routeTable selects a virtual host by the request's host and then the
// first route whose match holds. Everything is compiled at build time.
type routeTable struct {
	exact    map[string]*vhostRT
	suffixes []domainVH // "*.example.com" and "*-suffix"
	prefixes []domainVH // "example.*"
	any      *vhostRT
}

type domainVH struct {
	s  string
	vh *vhostRT
}

type vhostRT struct {
	name   string
	routes []*routeRT
}

type routeRT struct {
	name    string
	match   pathMatcher
	headers []headerMatcher
	handler http.Handler
	timeout routeTimeout
	// stats count what a filter answers before a cluster is chosen (401,
	// 403, 413, 429: cluster label empty); the router replaces them.
	stats *rcStats
}

type routeTimeout struct {
	d   int64 // nanoseconds; 0 means none
	set bool
}

func (t *routeTable) match(r *http.Request) *routeRT {
	vh := t.vhost(r.Host)
	if vh == nil {
		return nil
	}
	for _, rt := range vh.routes {
		if rt.matches(r) {
			return rt
		}
	}
	return nil
}

func (t *routeTable) vhost(host string) *vhostRT {
	if len(t.exact) > 0 || len(t.suffixes) > 0 || len(t.prefixes) > 0 {
		h := strings.ToLower(host)
		if vh, ok := t.exact[h]; ok {
			return vh
		}
		if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
			if vh, ok := t.exact[h[:i]]; ok {
				return vh
			}
			h = h[:i]
		}
		for _, d := range t.suffixes {
			if strings.HasSuffix(h, d.s) {
				return d.vh
			}
		}
		for _, d := range t.prefixes {
			if strings.HasPrefix(h, d.s) {
				return d.vh
			}
		}
	}
	return t.any
}

type pathKind int

const (
	pathPrefix pathKind = iota
	pathExact
	pathRegex
)

type pathMatcher struct {
	kind       pathKind
	s          string
	re         *regexp.Regexp
	ignoreCase bool
}

func (m *pathMatcher) matches(path string) bool {
	switch m.kind {
	case pathExact:
		if m.ignoreCase {
			return strings.EqualFold(path, m.s)
		}
		return path == m.s
	case pathRegex:
		return m.re.MatchString(path)
	default:
		if m.ignoreCase {
			return len(path) >= len(m.s) && strings.EqualFold(path[:len(m.s)], m.s)
		}
		return strings.HasPrefix(path, m.s)
	}
}

// template is the path template of the match, the span's http.route: the
// prefix or exact path as configured, or the regex.
func (m *pathMatcher) template() string {
	if m.kind == pathRegex {
		return m.re.String()
	}
	return m.s
}

func (rt *routeRT) matches(r *http.Request) bool {
	if !rt.match.matches(r.URL.Path) {
		return false
	}
	for i := range rt.headers {
		if !rt.headers[i].matches(r) {
			return false
		}
	}
	return true
}

type headerMatcher struct {
	name    string // canonical header name, or ":method", ":authority", ":path", ":scheme"
	present bool   // present_match
	str     *stringMatcher
	invert  bool
}

func (h *headerMatcher) value(r *http.Request) (string, bool) {
	switch h.name {
	case ":method":
		return r.Method, true
	case ":authority":
		return r.Host, true
	case ":path":
		return r.URL.RequestURI(), true
	case ":scheme":
		if r.TLS != nil {
			return "https", true
		}
		return "http", true
	}
	vs, ok := r.Header[h.name]
	if !ok {
		return "", false
	}
	if len(vs) == 1 {
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

func (h *headerMatcher) matches(r *http.Request) bool {
	v, ok := h.value(r)
	var res bool
	switch {
	case h.str != nil:
		res = ok && h.str.matches(v)
	default: // present_match
		res = ok == h.present
	}
	return res != h.invert
}

type stringMatcher struct {
	exact, prefix, suffix, contains string
	kind                            int // 0 exact, 1 prefix, 2 suffix, 3 contains, 4 regex
	re                              *regexp.Regexp
	ignoreCase                      bool
}

func (m *stringMatcher) matches(v string) bool {
	if m.ignoreCase && m.kind != 4 {
		v = strings.ToLower(v)
	}
	switch m.kind {
	case 0:
		return v == m.exact
	case 1:
		return strings.HasPrefix(v, m.prefix)
	case 2:
		return strings.HasSuffix(v, m.suffix)
	case 3:
		return strings.Contains(v, m.contains)
	default:
		return m.re.MatchString(v)
	}
}

// compileRegex compiles an Envoy RE2 regex; Go's regexp is RE2, and Envoy
// matches the whole value, so the pattern is anchored.
func compileRegex(rm *matcher.RegexMatcher) (*regexp.Regexp, error) {
	if rm.GetRegex() == "" {
		return nil, errors.New("regex: empty")
	}
	if len(rm.GetRegex()) > 4096 {
		return nil, errors.New("regex: longer than 4096 bytes")
	}
	re, err := regexp.Compile(`^(?:` + rm.GetRegex() + `)$`)
	if err != nil {
		return nil, fmt.Errorf("regex: %w", err)
	}
	return re, nil
}

func compileStringMatcher(sm *matcher.StringMatcher) (*stringMatcher, error) {
	m := &stringMatcher{ignoreCase: sm.GetIgnoreCase()}
	low := func(s string) string {
		if m.ignoreCase {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := sm.GetMatchPattern().(type) {
	case *matcher.StringMatcher_Exact:
		m.kind, m.exact = 0, low(p.Exact)
	case *matcher.StringMatcher_Prefix:
		m.kind, m.prefix = 1, low(p.Prefix)
	case *matcher.StringMatcher_Suffix:
		m.kind, m.suffix = 2, low(p.Suffix)
	case *matcher.StringMatcher_Contains:
		m.kind, m.contains = 3, low(p.Contains)
	case *matcher.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return nil, fmt.Errorf("safe_regex.%w", err)
		}
		if m.ignoreCase {
			return nil, errors.New("ignore_case: not supported with safe_regex")
		}
		m.kind, m.re = 4, re
	default:
		return nil, errors.New("match_pattern: required")
	}
	return m, nil
}

func compileRouteMatch(rm *route.RouteMatch) (pathMatcher, []headerMatcher, error) {
	var pm pathMatcher
	pm.ignoreCase = rm.GetCaseSensitive() != nil && !rm.GetCaseSensitive().GetValue()
	switch p := rm.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		pm.kind, pm.s = pathPrefix, p.Prefix
	case *route.RouteMatch_Path:
		pm.kind, pm.s = pathExact, p.Path
	case *route.RouteMatch_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return pm, nil, fmt.Errorf("safe_regex.%w", err)
		}
		if pm.ignoreCase {
			re = regexp.MustCompile("(?i)" + re.String())
		}
		pm.kind, pm.re = pathRegex, re
	default:
		return pm, nil, errors.New("path_specifier: one of prefix, path, safe_regex is required")
	}
	var hs []headerMatcher
	for i, h := range rm.GetHeaders() {
		hm, err := compileHeaderMatcher(h)
		if err != nil {
			return pm, nil, fmt.Errorf("headers[%d].%w", i, err)
		}
		hs = append(hs, hm)
	}
	return pm, hs, nil
}

func compileHeaderMatcher(h *route.HeaderMatcher) (headerMatcher, error) {
	hm := headerMatcher{invert: h.GetInvertMatch()}
	name := h.GetName()
	if name == "" {
		return hm, errors.New("name: required")
	}
	if strings.HasPrefix(name, ":") {
		switch name {
		case ":method", ":authority", ":path", ":scheme":
		default:
			return hm, fmt.Errorf("name: unsupported pseudo-header %q", name)
		}
		hm.name = name
	} else {
		hm.name = http.CanonicalHeaderKey(name)
	}
	var sm *matcher.StringMatcher
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *route.HeaderMatcher_StringMatch:
		sm = s.StringMatch
	case *route.HeaderMatcher_PresentMatch:
		hm.present = s.PresentMatch
		return hm, nil
	case nil:
		hm.present = true
		return hm, nil
	default:
		return hm, errors.New("header_match_specifier: unsupported")
	}
	m, err := compileStringMatcher(sm)
	if err != nil {
		return hm, fmt.Errorf("string_match.%w", err)
	}
	hm.str = m
	return hm, nil
}
