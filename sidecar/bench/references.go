package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The reference proxies put the sidecar's CPU per request beside what
// other proxies cost in front of the same app, at the same rate, on the
// same machine (-references): each runs alone after the sidecar's run,
// with the same warm-up and window, and its CPU is read from /proc.
//
//   - nginx: nginx -g 'master_process off' (one process), upstream
//     keep-alive, no access log: an event-loop proxy in C doing nothing but
//     proxying;
//   - go-httputil: httputil.ReverseProxy on net/http.Server with a tuned
//     Transport: what the sidecar is built on, without any of its work;
//   - go-minimal: one goroutine per client connection that parses a
//     request with http.ReadRequest, writes it to its own upstream
//     connection and copies the response back (no net/http server or
//     transport goroutines): about the least a Go HTTP/1.1 proxy on the
//     runtime's netpoller can do per request.
//
// The Go references run as this program with -serve-proxy, GOMAXPROCS 1
// like the sidecar's default.
var referenceNames = []string{"nginx", "go-httputil", "go-minimal"}

type reference struct {
	name string
	p    *proc
	addr string
}

// startReference starts the named reference proxy in front of appAddr.
func startReference(ctx context.Context, self, dir, name, appAddr string) (*reference, error) {
	switch name {
	case "nginx":
		bin, err := exec.LookPath("nginx")
		if err != nil {
			return nil, errors.New("-references nginx: nginx is not installed (make deps installs it)")
		}
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		ndir := filepath.Join(dir, "nginx")
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			return nil, err
		}
		conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;
  upstream app { server %[2]s; keepalive 1024; }
  server {
    listen %[3]s;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`, ndir, appAddr, addr)
		cf := filepath.Join(ndir, "nginx.conf")
		if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, bin, "-c", cf, "-p", ndir, "-e", filepath.Join(ndir, "error.log"))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		r := &reference{name: name, p: &proc{cmd: cmd}, addr: addr}
		if err := waitListening(ctx, addr); err != nil {
			r.p.stop()
			return nil, fmt.Errorf("nginx: %w", err)
		}
		return r, nil
	case "go-httputil", "go-minimal":
		p, err := start(ctx, self, []string{"-serve-proxy", name, "-backend", appAddr, "GOMAXPROCS=1"}, "http")
		if err != nil {
			return nil, err
		}
		return &reference{name: name, p: p, addr: p.addrs["http"]}, nil
	}
	return nil, fmt.Errorf("-references: unknown %q (want %s)", name, strings.Join(referenceNames, ", "))
}

// runProxy serves the named Go reference proxy in front of backend
// (host:port) until ctx is done.
func runProxy(ctx context.Context, name, backend string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer func() { _ = ln.Close() }()
	fmt.Printf("{\"msg\":\"listening\",\"name\":\"http\",\"addr\":%q}\n", ln.Addr().String())
	go func() { <-ctx.Done(); _ = ln.Close() }()
	switch name {
	case "go-httputil":
		u := &url.URL{Scheme: "http", Host: backend}
		rp := &httputil.ReverseProxy{
			Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
			Transport: &http.Transport{MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second, DisableCompression: true},
		}
		srv := &http.Server{Handler: rp, ReadHeaderTimeout: 5 * time.Second}
		if err := srv.Serve(ln); !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	case "go-minimal":
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			go minimalProxy(c, backend)
		}
	}
	return fmt.Errorf("-serve-proxy: unknown %q", name)
}

// minimalProxy relays requests of one client connection over one upstream
// connection, in order, each request's response before the next request.
func minimalProxy(c net.Conn, backend string) {
	defer func() { _ = c.Close() }()
	up, err := net.Dial("tcp", backend)
	if err != nil {
		return
	}
	defer func() { _ = up.Close() }()
	cr, cw := bufio.NewReader(c), bufio.NewWriter(c)
	ur, uw := bufio.NewReader(up), bufio.NewWriter(up)
	for {
		req, err := http.ReadRequest(cr)
		if err != nil {
			return
		}
		if err := req.Write(uw); err != nil || uw.Flush() != nil {
			return
		}
		resp, err := http.ReadResponse(ur, req)
		if err != nil {
			return
		}
		err = resp.Write(cw)
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if err != nil || cw.Flush() != nil || resp.Close || req.Close {
			return
		}
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String(), nil
}

func waitListening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("nothing listens on %s", addr)
}

// measureReference drives the fixed-rate load through r and prints its
// latency and CPU per request answered, and the sidecar's CPU per request
// (sidecarPerReq, µs) as a multiple of it.
func measureReference(ctx context.Context, r *reference, rps int, warm, dur time.Duration, sidecarPerReq float64) error {
	var c0, c1 cpuTimes
	pid := r.p.cmd.Process.Pid
	res, err := load(ctx, "http://"+r.addr+"/pets/42", nil, rps, warm, dur, func(phase string) {
		switch phase {
		case "start":
			c0 = cpuSeconds(pid)
		case "end":
			c1 = cpuSeconds(pid)
		}
	})
	if err != nil {
		return err
	}
	res.print("ref " + r.name)
	cpu := (c1.user - c0.user) + (c1.sys - c0.sys)
	if n := len(res.lat); n > 0 {
		per := cpu * 1e6 / float64(n)
		fmt.Printf("  %s CPU: %.0f µs per request (user %.0f, system %.0f), RSS %.1f MB; the sidecar costs %.2f× that per request\n", r.name,
			per, (c1.user-c0.user)*1e6/float64(n), (c1.sys-c0.sys)*1e6/float64(n), float64(rssKB(pid))/1024, sidecarPerReq/per)
	}
	return nil
}
