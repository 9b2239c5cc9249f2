// Package healthcheck is a tiny HTTP probe for container health checks.
// The petmesh image is distroless (no shell, curl or wget), so
// docker-compose runs `petmesh-healthcheck URL` inside the container; it
// succeeds when URL answers 2xx within the timeout.
package healthcheck

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Run probes the URL given in args. Usage:
//
//	petmesh-healthcheck [-timeout 2s] http://127.0.0.1:7101/readyz
func Run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("petmesh-healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "how long the probe may take")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want exactly one URL argument")
	}
	if *timeout <= 0 {
		return fmt.Errorf("-timeout: want a positive duration, got %v", *timeout)
	}
	u, err := url.Parse(fs.Arg(0))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q: want an absolute http(s) URL", fs.Arg(0))
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("new request: %w", err)
	}
	hc := &http.Client{Timeout: *timeout}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("probe %s: status %d: %s", u, resp.StatusCode, body)
	}
	return nil
}
