package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// BackendBody is what the one backend answers to every request: a small
// JSON document like a cached GET of one pet.
const BackendBody = `{"id":"pet_1","name":"Rex","species":"dog","age":3,"tags":["good","boy"]}`

// benchPath is the path every target is asked for (the edge's routes
// add a prefix: /public, /jwt, /mesh).
const benchPath = "/pets/1"

// target is one thing measured: a URL, the header its load sends, and the
// processes whose CPU time is the target's own.
type target struct {
	Name    string
	Desc    string
	Version string
	URL     string
	Header  http.Header
	procs   []*proc
}

// headerLine is the target's header as wrk's -H argument.
func (t *target) headerLine() string {
	for k, v := range t.Header {
		return k + ": " + v[0]
	}
	return ""
}

func (t *target) cpu() time.Duration {
	var d time.Duration
	for _, p := range t.procs {
		d += treeCPU(p.pid())
	}
	return d
}

func (t *target) rss() int64 {
	var n int64
	for _, p := range t.procs {
		n += treeRSS(p.pid())
	}
	return n
}

// nginxTemps keeps nginx's temp paths inside its prefix (the packaged
// defaults under /var/lib/nginx need root and may not exist).
func nginxTemps(dir string) string {
	return fmt.Sprintf("client_body_temp_path %[1]s/tmp-body; proxy_temp_path %[1]s/tmp-proxy; fastcgi_temp_path %[1]s/tmp-fastcgi; uwsgi_temp_path %[1]s/tmp-uwsgi; scgi_temp_path %[1]s/tmp-scgi;", dir)
}

// startBackend runs the one backend: nginx with a single worker answering
// BackendBody from its configuration (no file I/O, no access log), so
// that the backend costs as little CPU as possible and is identical for
// every target.
func startBackend(ctx context.Context, dir, nginx string) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(dir, "backend")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  %[2]s
  server {
    listen 127.0.0.1:%[3]d backlog=4096;
    location / { default_type application/json; return 200 '%[4]s'; }
  }
}
`, d, nginxTemps(d), port, BackendBody)
	return startNginx(ctx, d, nginx, "backend", conf, port)
}

// startNginxProxy runs nginx as a reverse proxy to the backend: one worker
// per CPU, keep-alive upstream connections, access log to a file with a
// 32 KiB buffer flushed every 100ms (like petmesh's batched access log).
func startNginxProxy(ctx context.Context, dir, nginx string, backend int) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(dir, "nginx")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`worker_processes auto;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 16384; }
http {
  access_log %[1]s/access.log combined buffer=32k flush=100ms;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  %[2]s
  upstream backend { server 127.0.0.1:%[3]d; keepalive 256; }
  server {
    listen 127.0.0.1:%[4]d backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
    }
  }
}
`, d, nginxTemps(d), backend, port)
	return startNginx(ctx, d, nginx, "nginx", conf, port)
}

func startNginx(ctx context.Context, d, nginx, name, conf string, port int) (*target, error) {
	for _, t := range []string{"tmp-body", "tmp-proxy", "tmp-fastcgi", "tmp-uwsgi", "tmp-scgi"} {
		if err := os.MkdirAll(filepath.Join(d, t), 0o755); err != nil {
			return nil, err
		}
	}
	cf := filepath.Join(d, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc(d, name, nginx, []string{"-p", d, "-c", cf, "-e", filepath.Join(d, "error.log")}, nil)
	if err != nil {
		return nil, err
	}
	t := &target{Name: name, URL: fmt.Sprintf("http://127.0.0.1:%d%s", port, benchPath), procs: []*proc{p}, Version: version(nginx, "-v")}
	if err := waitHTTP(ctx, p, t.URL, nil, http.StatusOK, 20*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return t, nil
}

// startHAProxy runs HAProxy in HTTP mode with one thread per CPU, server
// connection reuse (http-reuse always) and an HTTP access log line per
// request written to its standard output (a file).
func startHAProxy(ctx context.Context, dir, haproxy string, backend int) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(dir, "haproxy")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	_, ncpu := CPUModel()
	conf := fmt.Sprintf(`global
  nbthread %d
  maxconn 4096
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  option http-keep-alive
  http-reuse always
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 120s
frontend fe
  bind 127.0.0.1:%d
  default_backend be
backend be
  server s1 127.0.0.1:%d
`, max(ncpu, 1), port, backend)
	cf := filepath.Join(d, "haproxy.cfg")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc(d, "haproxy", haproxy, []string{"-f", cf, "-db"}, nil)
	if err != nil {
		return nil, err
	}
	t := &target{Name: "haproxy", URL: fmt.Sprintf("http://127.0.0.1:%d%s", port, benchPath), procs: []*proc{p}, Version: version(haproxy, "-v")}
	if err := waitHTTP(ctx, p, t.URL, nil, http.StatusOK, 20*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return t, nil
}

// startCaddy runs Caddy with a Caddyfile: plain HTTP on loopback (no
// automatic HTTPS, no admin endpoint), reverse_proxy to the backend, a
// JSON access log to a file.
func startCaddy(ctx context.Context, dir, caddy string, backend int) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(dir, "caddy")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`{
	admin off
	auto_https off
	log {
		level ERROR
	}
}
http://127.0.0.1:%d {
	bind 127.0.0.1
	log {
		output file %s/access.log
		format json
	}
	reverse_proxy 127.0.0.1:%d
}
`, port, d, backend)
	cf := filepath.Join(d, "Caddyfile")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	env := []string{"XDG_DATA_HOME=" + d, "XDG_CONFIG_HOME=" + d, "HOME=" + d}
	p, err := startProc(d, "caddy", caddy, []string{"run", "--config", cf, "--adapter", "caddyfile"}, env)
	if err != nil {
		return nil, err
	}
	t := &target{Name: "caddy", URL: fmt.Sprintf("http://127.0.0.1:%d%s", port, benchPath), procs: []*proc{p}, Version: version(caddy, "version")}
	if err := waitHTTP(ctx, p, t.URL, nil, http.StatusOK, 30*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return t, nil
}

// startTraefik runs Traefik with a file provider: one router for every
// path to a load balancer holding the backend, access log to a file
// buffered 100 lines, no API, no version check, no usage reporting.
func startTraefik(ctx context.Context, dir, traefik string, backend int) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(dir, "traefik")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	dyn := fmt.Sprintf(`http:
  routers:
    bench:
      rule: "PathPrefix(`+"`/`"+`)"
      service: backend
      entryPoints: [web]
  services:
    backend:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:%d"
`, backend)
	df := filepath.Join(d, "dynamic.yml")
	if err := os.WriteFile(df, []byte(dyn), 0o644); err != nil {
		return nil, err
	}
	args := []string{
		"--entryPoints.web.address=127.0.0.1:" + strconv.Itoa(port),
		"--providers.file.filename=" + df,
		"--accessLog.filePath=" + filepath.Join(d, "access.log"),
		"--accessLog.bufferingSize=100",
		"--log.level=ERROR",
		"--global.checkNewVersion=false",
		"--global.sendAnonymousUsage=false",
	}
	p, err := startProc(d, "traefik", traefik, args, []string{"HOME=" + d})
	if err != nil {
		return nil, err
	}
	t := &target{Name: "traefik", URL: fmt.Sprintf("http://127.0.0.1:%d%s", port, benchPath), procs: []*proc{p}, Version: traefikVersion(traefik)}
	if err := waitHTTP(ctx, p, t.URL, nil, http.StatusOK, 30*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return t, nil
}

var versionRE = regexp.MustCompile(`v?[0-9]+\.[0-9]+(\.[0-9]+)?`)

// version runs "bin args" and returns the first version number it prints.
// traefikVersion is the "Version:" line of `traefik version`. A build from
// the Go module says "dev" there (its version is set by the release
// build's linker flags), so the version is then read from the tool
// cache's directory name (scripts/tool.sh: traefik-vX.Y.Z/traefik).
func traefikVersion(bin string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "version").CombinedOutput()
	return traefikVersionFrom(bin, string(out))
}

var traefikCacheDirRE = regexp.MustCompile(`^traefik-(v[0-9]+\.[0-9]+\.[0-9]+)$`)

func traefikVersionFrom(bin, out string) string {
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:"); ok {
			if v = strings.TrimSpace(v); v != "" && v != "dev" {
				return v
			}
		}
	}
	if m := traefikCacheDirRE.FindStringSubmatch(filepath.Base(filepath.Dir(bin))); m != nil {
		return m[1] + " (module build)"
	}
	return "unknown"
}

func version(bin string, args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if v := versionRE.FindString(string(out)); v != "" {
		return v
	}
	return "unknown"
}
