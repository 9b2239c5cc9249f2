package routes

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ValidateOptions tune validation.
type ValidateOptions struct {
	// KnownServices, when not nil, is the list of services a target may
	// name (besides "edge"); any other is an error.
	KnownServices []string
}

// EdgeService is the reserved target service of routes the edge serves
// itself (resource.EdgeService).
const EdgeService = "edge"

// Retry conditions accepted in retries.retry_on (Envoy's names).
var retryOnValues = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "connect-failure": true, "retriable-status-codes": true,
}

var methods = map[string]bool{
	"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true, "TRACE": true, "CONNECT": true,
}

var (
	nameRe    = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62})$`)
	serviceRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	subsetRe  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61})$`)
	headerRe  = regexp.MustCompile(`^:?[a-z0-9!#$%&'*+.^_` + "`" + `|~-]+$`)
	roleRe    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`)
	hostRe    = regexp.MustCompile(`^[A-Za-z0-9.-]+(:[0-9]{1,5})?$`)
)

const (
	maxRoutes       = 1000
	maxRetries      = 10
	maxBodyBytes    = 4096
	maxRegexLen     = 1024
	maxTimeout      = time.Hour
	maxDelay        = time.Minute
	maxCBThreshold  = 1 << 20
	maxRateLimitRPS = 1_000_000
)

// Validate checks t and returns a *ValidationError listing every problem,
// or nil. It does not modify t. Validate the Canonical form to get the
// same answer for tables that differ only in spelling.
func (t *Table) Validate(opts ValidateOptions) error {
	var e errs
	var known map[string]bool
	if opts.KnownServices != nil {
		known = make(map[string]bool, len(opts.KnownServices))
		for _, s := range opts.KnownServices {
			known[s] = true
		}
	}
	if len(t.Routes) > maxRoutes {
		e.add("routes", "at most %d routes, got %d", maxRoutes, len(t.Routes))
	}
	seen := map[string]int{}
	for i := range t.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		r := &t.Routes[i]
		switch {
		case r.Name == "":
			e.add(p+".name", "required")
		case !nameRe.MatchString(r.Name):
			e.add(p+".name", "%q must be 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit", r.Name)
		default:
			if j, dup := seen[r.Name]; dup {
				e.add(p+".name", "duplicate route name %q (also routes[%d])", r.Name, j)
			} else {
				seen[r.Name] = i
			}
		}
		validateRoute(r, p, known, &e)
	}
	for _, name := range slices.Sorted(maps.Keys(t.Services)) {
		s := t.Services[name]
		p := "services." + name
		switch {
		case name == EdgeService:
			e.add(p, "%q is reserved for routes served by the edge itself", EdgeService)
		case !serviceRe.MatchString(name):
			e.add(p, "service name %q must be a DNS label (lowercase letters, digits and '-', at most 63)", name)
		}
		validateService(&s, p, &e)
	}
	return e.err()
}

func validateRoute(r *Route, p string, known map[string]bool, e *errs) {
	m := &r.Match
	set := 0
	for _, s := range []string{m.Prefix, m.Path, m.Regex} {
		if s != "" {
			set++
		}
	}
	if set != 1 {
		e.add(p+".match", "exactly one of prefix, path or regex is required, got %d", set)
	}
	if m.Prefix != "" && !strings.HasPrefix(m.Prefix, "/") {
		e.add(p+".match.prefix", "must start with '/'")
	}
	if m.Path != "" && !strings.HasPrefix(m.Path, "/") {
		e.add(p+".match.path", "must start with '/'")
	}
	if m.Regex != "" {
		validateRegex(m.Regex, p+".match.regex", e)
	}
	seenM := map[string]bool{}
	for i, meth := range m.Methods {
		mp := fmt.Sprintf("%s.match.methods[%d]", p, i)
		u := strings.ToUpper(meth)
		if !methods[u] {
			e.add(mp, "unknown HTTP method %q", meth)
		} else if seenM[u] {
			e.add(mp, "duplicate method %q", meth)
		}
		seenM[u] = true
	}
	for i, h := range m.Headers {
		hp := fmt.Sprintf("%s.match.headers[%d]", p, i)
		if h.Name == "" {
			e.add(hp+".name", "required")
		} else if !headerRe.MatchString(strings.ToLower(h.Name)) {
			e.add(hp+".name", "%q is not a valid header name", h.Name)
		}
		n := 0
		for _, s := range []string{h.Exact, h.Prefix, h.Regex} {
			if s != "" {
				n++
			}
		}
		if h.Present != nil {
			n++
		}
		if n != 1 {
			e.add(hp, "exactly one of exact, prefix, regex or present is required, got %d", n)
		}
		if h.Regex != "" {
			validateRegex(h.Regex, hp+".regex", e)
		}
	}

	if a := r.Auth; a != nil {
		if a.Public && len(a.Roles) > 0 {
			e.add(p+".auth", "public and roles are mutually exclusive")
		}
		seenR := map[string]bool{}
		for i, role := range a.Roles {
			rp := fmt.Sprintf("%s.auth.roles[%d]", p, i)
			if !roleRe.MatchString(role) {
				e.add(rp, "invalid role %q", role)
			} else if seenR[role] {
				e.add(rp, "duplicate role %q", role)
			}
			seenR[role] = true
		}
	}

	if r.DirectResponse != nil {
		d := r.DirectResponse
		if len(r.Targets) > 0 {
			e.add(p+".targets", "must be empty with direct_response")
		}
		if d.Status < 200 || d.Status > 599 {
			e.add(p+".direct_response.status", "must be 200-599, got %d", d.Status)
		}
		if len(d.Body) > maxBodyBytes {
			e.add(p+".direct_response.body", "at most %d bytes, got %d", maxBodyBytes, len(d.Body))
		}
		if r.Retries != nil {
			e.add(p+".retries", "not allowed with direct_response")
		}
		if r.HostRewrite != "" || r.PrefixRewrite != "" {
			e.add(p+".direct_response", "rewrites are not allowed with direct_response")
		}
	} else {
		validateTargets(r, p, known, e)
	}

	if r.Timeout != nil && (*r.Timeout < 0 || r.Timeout.Std() > maxTimeout) {
		e.add(p+".timeout", "must be between 0s and %v, got %v", maxTimeout, r.Timeout)
	}
	if rt := r.Retries; rt != nil {
		rp := p + ".retries"
		if rt.Attempts < 0 || rt.Attempts > maxRetries {
			e.add(rp+".attempts", "must be 0-%d, got %d", maxRetries, rt.Attempts)
		}
		seenOn := map[string]bool{}
		for i, on := range rt.RetryOn {
			op := fmt.Sprintf("%s.retry_on[%d]", rp, i)
			l := strings.ToLower(on)
			if !retryOnValues[l] {
				e.add(op, "unknown retry condition %q (want 5xx, gateway-error, reset, connect-failure or retriable-status-codes)", on)
			} else if seenOn[l] {
				e.add(op, "duplicate retry condition %q", on)
			}
			seenOn[l] = true
		}
		if len(rt.RetriableStatusCodes) > 0 && !seenOn["retriable-status-codes"] {
			e.add(rp+".retriable_status_codes", "retry_on must include retriable-status-codes")
		}
		if seenOn["retriable-status-codes"] && len(rt.RetriableStatusCodes) == 0 {
			e.add(rp+".retry_on", "retriable-status-codes needs retriable_status_codes")
		}
		for i, c := range rt.RetriableStatusCodes {
			if c < 100 || c > 599 {
				e.add(fmt.Sprintf("%s.retriable_status_codes[%d]", rp, i), "must be 100-599, got %d", c)
			}
		}
		if pt := rt.PerTryTimeout; pt != nil {
			if *pt <= 0 || pt.Std() > maxTimeout {
				e.add(rp+".per_try_timeout", "must be between 0s (exclusive) and %v, got %v", maxTimeout, pt)
			} else if r.Timeout != nil && *r.Timeout > 0 && *pt > *r.Timeout {
				e.add(rp+".per_try_timeout", "%v exceeds the route timeout %v", pt, r.Timeout)
			}
		}
		if b := rt.Backoff; b != nil {
			if b.Base != nil && (*b.Base <= 0 || b.Base.Std() > maxDelay) {
				e.add(rp+".backoff.base", "must be between 0s (exclusive) and %v, got %v", maxDelay, b.Base)
			}
			if b.Max != nil && (*b.Max <= 0 || b.Max.Std() > maxDelay) {
				e.add(rp+".backoff.max", "must be between 0s (exclusive) and %v, got %v", maxDelay, b.Max)
			}
			if b.Base != nil && b.Max != nil && *b.Max < *b.Base {
				e.add(rp+".backoff.max", "%v is less than base %v", b.Max, b.Base)
			}
		}
	}
	if rl := r.RateLimit; rl != nil {
		if rl.RPS < 1 || rl.RPS > maxRateLimitRPS {
			e.add(p+".rate_limit.rps", "must be 1-%d, got %d", maxRateLimitRPS, rl.RPS)
		}
		if rl.Burst < 0 || rl.Burst > maxRateLimitRPS {
			e.add(p+".rate_limit.burst", "must be 0-%d, got %d", maxRateLimitRPS, rl.Burst)
		}
		if k := strings.ToLower(rl.Key); k != "" && k != "ip" && k != "subject" {
			e.add(p+".rate_limit.key", "must be ip or subject, got %q", rl.Key)
		}
		if strings.EqualFold(rl.Key, "subject") && r.Auth != nil && r.Auth.Public {
			e.add(p+".rate_limit.key", "subject needs an authenticated route (auth.public is true)")
		}
	}
	if r.HostRewrite != "" && !hostRe.MatchString(r.HostRewrite) {
		e.add(p+".host_rewrite", "%q is not a host[:port]", r.HostRewrite)
	}
	if r.PrefixRewrite != "" {
		if m.Regex != "" {
			e.add(p+".prefix_rewrite", "not allowed with match.regex")
		}
		if !strings.HasPrefix(r.PrefixRewrite, "/") {
			e.add(p+".prefix_rewrite", "must start with '/'")
		}
	}
	if r.Fault != nil {
		validateFault(r.Fault, p+".fault", e)
	}
	if mb := r.MaxBodyBytes; mb != nil {
		switch {
		case *mb < 0 || *mb > MaxMaxBodyBytes:
			e.add(p+".max_body_bytes", "must be 0-%d (0: unlimited), got %d", MaxMaxBodyBytes, *mb)
		case *mb == 0 && r.Auth != nil && r.Auth.Public:
			e.add(p+".max_body_bytes", "0 (unlimited) is not allowed on a public route (auth.public is true): set a limit")
		}
	}
}

func validateTargets(r *Route, p string, known map[string]bool, e *errs) {
	if len(r.Targets) == 0 {
		e.add(p+".targets", "at least one target (or direct_response) is required")
		return
	}
	sum := 0
	seen := map[string]int{}
	for i, tg := range r.Targets {
		tp := fmt.Sprintf("%s.targets[%d]", p, i)
		switch {
		case tg.Service == "":
			e.add(tp+".service", "required")
		case tg.Service == EdgeService:
			if len(r.Targets) != 1 {
				e.add(tp+".service", "%q must be the only target", EdgeService)
			}
			if tg.Subset != "" {
				e.add(tp+".subset", "not allowed with service %q", EdgeService)
			}
		case !serviceRe.MatchString(tg.Service):
			e.add(tp+".service", "service name %q must be a DNS label (lowercase letters, digits and '-', at most 63)", tg.Service)
		case known != nil && !known[tg.Service]:
			e.add(tp+".service", "unknown service %q", tg.Service)
		}
		if tg.Subset != "" && !subsetRe.MatchString(tg.Subset) {
			e.add(tp+".subset", "version tag %q must be letters, digits, '.', '_' or '-', at most 62", tg.Subset)
		}
		key := tg.Service + "~" + tg.Subset
		if j, dup := seen[key]; dup {
			e.add(tp, "duplicate target (same as targets[%d])", j)
		}
		seen[key] = i
		if tg.Weight < 0 || tg.Weight > 100 {
			e.add(tp+".weight", "must be 0-100, got %d", tg.Weight)
		}
		sum += tg.Weight
	}
	if len(r.Targets) == 1 && r.Targets[0].Weight == 0 {
		return // a single target defaults to 100
	}
	if sum != 100 {
		e.add(fmt.Sprintf("%s.targets[%d].weight", p, len(r.Targets)-1), "weights must sum to 100, got %d", sum)
	}
}

func validateService(s *Service, p string, e *errs) {
	if lb := strings.ToLower(s.LB); lb != "" && lb != "round_robin" && lb != "least_request" {
		e.add(p+".lb", "must be round_robin or least_request, got %q", s.LB)
	}
	if d := s.ConnectTimeout; d != nil && (*d <= 0 || d.Std() > maxDelay) {
		e.add(p+".connect_timeout", "must be between 0s (exclusive) and %v, got %v", maxDelay, d)
	}
	if cb := s.CircuitBreaker; cb != nil {
		for i, v := range []int{cb.MaxConnections, cb.MaxPending, cb.MaxRequests, cb.MaxRetries} {
			if v < 0 || v > maxCBThreshold {
				e.add(p+".circuit_breaker."+[]string{"max_connections", "max_pending", "max_requests", "max_retries"}[i], "must be 0-%d, got %d", maxCBThreshold, v)
			}
		}
	}
	if od := s.OutlierDetection; od != nil {
		op := p + ".outlier_detection"
		if od.Consecutive5xx < 0 || od.Consecutive5xx > 1000 {
			e.add(op+".consecutive_5xx", "must be 0-1000, got %d", od.Consecutive5xx)
		}
		if od.ConsecutiveGatewayErrors < 0 || od.ConsecutiveGatewayErrors > 1000 {
			e.add(op+".consecutive_gateway_errors", "must be 0-1000, got %d", od.ConsecutiveGatewayErrors)
		}
		positive(od.Interval, op+".interval", maxTimeout, e)
		positive(od.BaseEjectionTime, op+".base_ejection_time", maxTimeout, e)
		if od.MaxEjectionPercent != nil && (*od.MaxEjectionPercent < 0 || *od.MaxEjectionPercent > 100) {
			e.add(op+".max_ejection_percent", "must be 0-100, got %d", *od.MaxEjectionPercent)
		}
	}
	if hc := s.HealthCheck; hc != nil {
		hp := p + ".health_check"
		if !strings.HasPrefix(hc.Path, "/") {
			e.add(hp+".path", "required and must start with '/'")
		}
		positive(hc.Interval, hp+".interval", maxTimeout, e)
		positive(hc.Timeout, hp+".timeout", maxDelay, e)
		if hc.Interval != nil && hc.Timeout != nil && *hc.Timeout > *hc.Interval {
			e.add(hp+".timeout", "%v exceeds the interval %v", hc.Timeout, hc.Interval)
		}
		if hc.HealthyThreshold < 0 || hc.HealthyThreshold > 100 {
			e.add(hp+".healthy_threshold", "must be 0-100, got %d", hc.HealthyThreshold)
		}
		if hc.UnhealthyThreshold < 0 || hc.UnhealthyThreshold > 100 {
			e.add(hp+".unhealthy_threshold", "must be 0-100, got %d", hc.UnhealthyThreshold)
		}
	}
	if b := s.Bulkhead; b != nil && (b.MaxConcurrent < 1 || b.MaxConcurrent > maxCBThreshold) {
		e.add(p+".bulkhead.max_concurrent", "must be 1-%d, got %d", maxCBThreshold, b.MaxConcurrent)
	}
	if s.Fault != nil {
		validateFault(s.Fault, p+".fault", e)
	}
	if s.PanicThreshold != nil {
		percent(*s.PanicThreshold, p+".panic_threshold", e)
	}
	if c := s.Cache; c != nil && (c.TTL <= 0 || c.TTL.Std() > 24*time.Hour) {
		e.add(p+".cache.ttl", "must be between 0s (exclusive) and 24h, got %v", c.TTL)
	}
}

func validateFault(f *Fault, p string, e *errs) {
	if f.Abort == nil && f.Delay == nil {
		e.add(p, "abort or delay is required")
	}
	if a := f.Abort; a != nil {
		percent(a.Percent, p+".abort.percent", e)
		if a.Status < 200 || a.Status > 599 {
			e.add(p+".abort.status", "must be 200-599, got %d", a.Status)
		}
	}
	if d := f.Delay; d != nil {
		percent(d.Percent, p+".delay.percent", e)
		if d.Duration <= 0 || d.Duration.Std() > maxDelay {
			e.add(p+".delay.duration", "must be between 0s (exclusive) and %v, got %v", maxDelay, d.Duration)
		}
	}
}

func percent(v float64, p string, e *errs) {
	if math.IsNaN(v) || v < 0 || v > 100 {
		e.add(p, "must be 0-100, got %s", strconv.FormatFloat(v, 'g', -1, 64))
	}
}

func positive(d *Duration, p string, maxD time.Duration, e *errs) {
	if d != nil && (*d <= 0 || d.Std() > maxD) {
		e.add(p, "must be between 0s (exclusive) and %v, got %v", maxD, d)
	}
}

func validateRegex(re, p string, e *errs) {
	if len(re) > maxRegexLen {
		e.add(p, "at most %d characters", maxRegexLen)
		return
	}
	if _, err := regexp.Compile(re); err != nil {
		e.add(p, "invalid regular expression: %s", strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
}
