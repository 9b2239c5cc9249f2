// Package routes is the human route table: the small YAML/JSON document
// platform engineers write (routes with matches, auth, weighted targets,
// timeouts, retries and rate limits; per-service policies), its strict
// parser, its validation (every error at once, each naming the path of the
// bad field), its canonical form and hash, and the default table used by
// `make run`. README.md documents the format and every default.
//
// A *Table is a plain value: it is not safe to mutate concurrently, and
// the control plane treats stored tables as immutable (Clone before
// changing one).
package routes

import (
	"encoding/json"
	"fmt"
	"time"

	"gopkg.in/yaml.v3"
)

// Table is a route table.
type Table struct {
	// Routes are matched in order; the first match wins.
	Routes []Route `json:"routes" yaml:"routes"`
	// Services holds per-service policies keyed by service name.
	Services map[string]Service `json:"services,omitempty" yaml:"services,omitempty"`
}

// Route is one routing rule.
type Route struct {
	Name    string   `json:"name" yaml:"name"`
	Match   Match    `json:"match" yaml:"match"`
	Auth    *Auth    `json:"auth,omitempty" yaml:"auth,omitempty"`
	Targets []Target `json:"targets,omitempty" yaml:"targets,omitempty"`
	// Timeout bounds the whole request including retries: absent means
	// Envoy's default of 15s (the translator emits it explicitly), "0s"
	// disables it (only when written: never a default).
	Timeout        *Duration       `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	Retries        *Retries        `json:"retries,omitempty" yaml:"retries,omitempty"`
	RateLimit      *RateLimit      `json:"rate_limit,omitempty" yaml:"rate_limit,omitempty"`
	HostRewrite    string          `json:"host_rewrite,omitempty" yaml:"host_rewrite,omitempty"`
	PrefixRewrite  string          `json:"prefix_rewrite,omitempty" yaml:"prefix_rewrite,omitempty"`
	DirectResponse *DirectResponse `json:"direct_response,omitempty" yaml:"direct_response,omitempty"`
	// Fault injects faults into this route at the edge (services' own
	// fault policies apply at their sidecars).
	Fault *Fault `json:"fault,omitempty" yaml:"fault,omitempty"`
	// MaxBodyBytes bounds the request body at the edge (413 above it):
	// absent means 10 MiB (translate.DefaultMaxBodyBytes, the edge's own
	// -max-body default); 0 means unlimited and must be written, and is refused on
	// public routes (an anonymous client could send an unbounded body).
	MaxBodyBytes *int `json:"max_body_bytes,omitempty" yaml:"max_body_bytes,omitempty"`
}

// MaxMaxBodyBytes is the largest max_body_bytes (1 GiB): Envoy's buffer
// filter holds the whole body in memory; larger uploads need an
// authenticated route with max_body_bytes 0 (unlimited, streamed).
const MaxMaxBodyBytes = 1 << 30

// Match selects requests. Exactly one of Prefix, Path and Regex is set.
type Match struct {
	Prefix  string        `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	Path    string        `json:"path,omitempty" yaml:"path,omitempty"`
	Regex   string        `json:"regex,omitempty" yaml:"regex,omitempty"`
	Methods []string      `json:"methods,omitempty" yaml:"methods,omitempty"`
	Headers []HeaderMatch `json:"headers,omitempty" yaml:"headers,omitempty"`
}

// HeaderMatch matches one request header. Exactly one of Exact, Prefix,
// Regex and Present is set.
type HeaderMatch struct {
	Name    string `json:"name" yaml:"name"`
	Exact   string `json:"exact,omitempty" yaml:"exact,omitempty"`
	Prefix  string `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	Regex   string `json:"regex,omitempty" yaml:"regex,omitempty"`
	Present *bool  `json:"present,omitempty" yaml:"present,omitempty"`
}

// Auth says who may use a route. Without an auth block a route needs a
// valid token (any subject, any roles).
type Auth struct {
	// Public routes need no token (one that is sent is still verified).
	Public bool `json:"public,omitempty" yaml:"public,omitempty"`
	// Roles: the subject must hold at least one of them.
	Roles []string `json:"roles,omitempty" yaml:"roles,omitempty"`
}

// Target is a weighted destination of a route.
type Target struct {
	// Service is a registered service name, or "edge" for routes the edge
	// serves itself (its token endpoint and JWKS).
	Service string `json:"service" yaml:"service"`
	// Subset is a version tag; empty means every instance of the service.
	Subset string `json:"subset,omitempty" yaml:"subset,omitempty"`
	// Weight in percent; the weights of a route sum to 100. A single
	// target may leave it out (100).
	Weight int `json:"weight,omitempty" yaml:"weight,omitempty"`
}

// Retries is a route's retry policy.
type Retries struct {
	// Attempts is the number of retries after the first try (default 2).
	Attempts int `json:"attempts,omitempty" yaml:"attempts,omitempty"`
	// RetryOn: 5xx, gateway-error, reset, connect-failure,
	// retriable-status-codes (default [5xx, reset, connect-failure]).
	RetryOn              []string  `json:"retry_on,omitempty" yaml:"retry_on,omitempty"`
	RetriableStatusCodes []int     `json:"retriable_status_codes,omitempty" yaml:"retriable_status_codes,omitempty"`
	PerTryTimeout        *Duration `json:"per_try_timeout,omitempty" yaml:"per_try_timeout,omitempty"`
	Backoff              *Backoff  `json:"backoff,omitempty" yaml:"backoff,omitempty"`
	// IdempotentOnly retries only idempotent methods (default true).
	IdempotentOnly *bool `json:"idempotent_only,omitempty" yaml:"idempotent_only,omitempty"`
}

// Backoff is exponential retry backoff with jitter.
type Backoff struct {
	Base *Duration `json:"base,omitempty" yaml:"base,omitempty"` // default 25ms
	Max  *Duration `json:"max,omitempty" yaml:"max,omitempty"`   // default 10 × base
}

// RateLimit is a token bucket per key.
type RateLimit struct {
	RPS   int    `json:"rps" yaml:"rps"`
	Burst int    `json:"burst,omitempty" yaml:"burst,omitempty"` // default rps
	Key   string `json:"key,omitempty" yaml:"key,omitempty"`     // ip (default) or subject
}

// DirectResponse answers without an upstream.
type DirectResponse struct {
	Status int    `json:"status" yaml:"status"`
	Body   string `json:"body,omitempty" yaml:"body,omitempty"`
}

// Service holds the policies of one service.
type Service struct {
	LB               string            `json:"lb,omitempty" yaml:"lb,omitempty"` // round_robin (default) or least_request
	ConnectTimeout   *Duration         `json:"connect_timeout,omitempty" yaml:"connect_timeout,omitempty"`
	CircuitBreaker   *CircuitBreaker   `json:"circuit_breaker,omitempty" yaml:"circuit_breaker,omitempty"`
	OutlierDetection *OutlierDetection `json:"outlier_detection,omitempty" yaml:"outlier_detection,omitempty"`
	HealthCheck      *HealthCheck      `json:"health_check,omitempty" yaml:"health_check,omitempty"`
	Bulkhead         *Bulkhead         `json:"bulkhead,omitempty" yaml:"bulkhead,omitempty"`
	Fault            *Fault            `json:"fault,omitempty" yaml:"fault,omitempty"`
	Cache            *Cache            `json:"cache,omitempty" yaml:"cache,omitempty"`
	// PanicThreshold is a percent (0-100; default 50 like Envoy's
	// healthy_panic_threshold, translate.DefaultPanicThreshold): when
	// fewer of the service's endpoints than this are healthy, the proxy
	// balances over all of them (healthy or not) rather than overloading
	// the few healthy ones. 0 disables panic mode.
	PanicThreshold *float64 `json:"panic_threshold,omitempty" yaml:"panic_threshold,omitempty"`
}

// CircuitBreaker thresholds; zero means the default (1024 each, and
// Envoy's 3 for MaxRetries).
type CircuitBreaker struct {
	MaxConnections int `json:"max_connections,omitempty" yaml:"max_connections,omitempty"`
	MaxPending     int `json:"max_pending,omitempty" yaml:"max_pending,omitempty"`
	MaxRequests    int `json:"max_requests,omitempty" yaml:"max_requests,omitempty"`
	// MaxRetries bounds the retries in flight to the service at once, per
	// proxy. Envoy's default of 3 makes retries overflow (and requests
	// fail) when several in-flight requests to a dying instance fail
	// together under concurrent load.
	MaxRetries int `json:"max_retries,omitempty" yaml:"max_retries,omitempty"`
}

// OutlierDetection ejects misbehaving endpoints.
type OutlierDetection struct {
	Consecutive5xx           int       `json:"consecutive_5xx,omitempty" yaml:"consecutive_5xx,omitempty"`                       // default 5
	ConsecutiveGatewayErrors int       `json:"consecutive_gateway_errors,omitempty" yaml:"consecutive_gateway_errors,omitempty"` // default off
	Interval                 *Duration `json:"interval,omitempty" yaml:"interval,omitempty"`                                     // default 10s
	BaseEjectionTime         *Duration `json:"base_ejection_time,omitempty" yaml:"base_ejection_time,omitempty"`                 // default 30s
	MaxEjectionPercent       *int      `json:"max_ejection_percent,omitempty" yaml:"max_ejection_percent,omitempty"`             // default 10
}

// HealthCheck is an active HTTP health check.
type HealthCheck struct {
	Path               string    `json:"path" yaml:"path"`
	Interval           *Duration `json:"interval,omitempty" yaml:"interval,omitempty"`                       // default 5s
	Timeout            *Duration `json:"timeout,omitempty" yaml:"timeout,omitempty"`                         // default 1s
	HealthyThreshold   int       `json:"healthy_threshold,omitempty" yaml:"healthy_threshold,omitempty"`     // default 1
	UnhealthyThreshold int       `json:"unhealthy_threshold,omitempty" yaml:"unhealthy_threshold,omitempty"` // default 2
}

// Bulkhead caps concurrent requests into a service instance (at its
// sidecar).
type Bulkhead struct {
	MaxConcurrent int `json:"max_concurrent" yaml:"max_concurrent"`
}

// Fault injects aborts and delays.
type Fault struct {
	Abort *FaultAbort `json:"abort,omitempty" yaml:"abort,omitempty"`
	Delay *FaultDelay `json:"delay,omitempty" yaml:"delay,omitempty"`
}

// FaultAbort answers Percent of requests with Status.
type FaultAbort struct {
	Percent float64 `json:"percent" yaml:"percent"`
	Status  int     `json:"status" yaml:"status"`
}

// FaultDelay delays Percent of requests by Duration.
type FaultDelay struct {
	Percent  float64  `json:"percent" yaml:"percent"`
	Duration Duration `json:"duration" yaml:"duration"`
}

// Cache caches successful GET responses for TTL.
type Cache struct {
	TTL Duration `json:"ttl" yaml:"ttl"`
}

// Duration is a time.Duration written as a Go duration string ("1.5s").
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String renders d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// Dur returns a pointer to a Duration, for literals.
func Dur(d time.Duration) *Duration { v := Duration(d); return &v }

// MarshalJSON writes d as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"1.5s\"")
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MarshalYAML writes d as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML reads a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("duration must be a string such as \"1.5s\"")
	}
	v, err := parseDuration(n.Value)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

func parseDuration(s string) (Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (use e.g. \"250ms\", \"1.5s\", \"1m\")", s)
	}
	return Duration(v), nil
}
