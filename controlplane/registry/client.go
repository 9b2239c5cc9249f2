package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// HTTPClient registers an instance with the built-in registry over the
// control plane's HTTP API. It implements Registrar (and Snapshot for
// tools). Safe for concurrent use.
type HTTPClient struct {
	base  *url.URL
	token string
	hc    *http.Client
}

var _ Registrar = (*HTTPClient)(nil)

// ClientOption configures NewHTTPClient.
type ClientOption func(*HTTPClient)

// WithHTTPClient replaces the client's own *http.Client.
func WithHTTPClient(hc *http.Client) ClientOption {
	return func(c *HTTPClient) { c.hc = hc }
}

// WrapTransport wraps the transport of the client's *http.Client (by
// default one tuned for the registry: no proxy, short dial, TLS and
// response-header timeouts, two idle connections per host), e.g. to set a
// header on every request. Options apply in order: wrap receives the
// transport the options before it left (http.DefaultTransport for a nil
// one), and a caller's *http.Client given by WithHTTPClient is copied,
// not modified.
func WrapTransport(wrap func(http.RoundTripper) http.RoundTripper) ClientOption {
	return func(c *HTTPClient) {
		hc := *c.hc
		next := hc.Transport
		if next == nil {
			next = http.DefaultTransport
		}
		hc.Transport = wrap(next)
		c.hc = &hc
	}
}

// WithTimeout sets the whole-request timeout (default 5s).
func WithTimeout(d time.Duration) ClientOption {
	return func(c *HTTPClient) { c.hc.Timeout = d }
}

// NewHTTPClient returns a client for the registry API at baseURL (the
// control plane's API root, e.g. "http://127.0.0.1:18080") authenticating
// with the registration token.
func NewHTTPClient(baseURL, token string, opts ...ClientOption) (*HTTPClient, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("registry client: base url %q: want http(s)://host[:port]", baseURL)
	}
	if token == "" {
		return nil, errors.New("registry client: a registration token is required")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c := &HTTPClient{base: u, token: token, hc: &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   3 * time.Second,
			ResponseHeaderTimeout: 5 * time.Second,
			MaxIdleConnsPerHost:   2,
			IdleConnTimeout:       90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Register implements Registrar. HTTPCheck is rejected by the built-in
// registry.
func (c *HTTPClient) Register(ctx context.Context, r Registration) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if r.HTTPCheck != nil {
		return &ValidationError{Field: "check", Message: "http checks need the consul backend; the built-in registry uses ttl heartbeats"}
	}
	req := InstanceRequest{Service: r.Service, ID: r.ID, Address: r.Address, Port: r.Port, Version: r.Version, Metadata: r.Metadata}
	if r.TTL > 0 {
		req.TTL = r.TTL.String()
	}
	return c.do(ctx, http.MethodPost, PathInstances, req, nil)
}

// Heartbeat implements Registrar.
func (c *HTTPClient) Heartbeat(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPut, PathInstances+"/"+id+"/heartbeat", nil, nil)
}

// SetHealth implements Registrar.
func (c *HTTPClient) SetHealth(ctx context.Context, id string, h Health, output string) error {
	if !h.Valid() {
		return &ValidationError{Field: "status", Message: fmt.Sprintf("%q: want passing, warning or critical", h)}
	}
	return c.do(ctx, http.MethodPut, PathInstances+"/"+id+"/heartbeat", HeartbeatRequest{Status: h, Output: output}, nil)
}

// Deregister implements Registrar.
func (c *HTTPClient) Deregister(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, PathInstances+"/"+id, nil, nil)
}

// Snapshot lists every instance.
func (c *HTTPClient) Snapshot(ctx context.Context) (Snapshot, error) {
	var l InstanceList
	if err := c.do(ctx, http.MethodGet, PathInstances, nil, &l); err != nil {
		return Snapshot{}, err
	}
	return NewSnapshot(l.Instances), nil
}

// APIError is a non-2xx answer that is not mapped to a sentinel.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("registry api: %d %s: %s", e.Status, e.Code, e.Message)
}

func (c *HTTPClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("registry client: encode: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := *c.base
	u.Path += path // String() escapes it
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return fmt.Errorf("registry client: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("registry client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("registry client: %s %s: read: %w", method, path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				return fmt.Errorf("registry client: %s %s: decode: %w", method, path, err)
			}
		}
		return nil
	}
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("registry client: %s %s: %w", method, path, ErrUnauthenticated)
	case http.StatusNotFound:
		return fmt.Errorf("registry client: %s %s: %w", method, path, ErrNotFound)
	case http.StatusBadRequest:
		if e.Error.Field != "" {
			return &ValidationError{Field: e.Error.Field, Message: e.Error.Message}
		}
	}
	msg := e.Error.Message
	if msg == "" {
		msg = strings.TrimSpace(string(b))
	}
	return &APIError{Status: resp.StatusCode, Code: e.Error.Code, Message: msg}
}
