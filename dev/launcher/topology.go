package launcher

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	devconfig "github.com/petmesh/petmesh/dev/config"
)

// Fixed addresses of the dev topology (README documents every one). All
// bind to loopback: this is a development topology.
const (
	EdgeAddr      = "127.0.0.1:8080"
	EdgeAdminAddr = "127.0.0.1:8081"
	XDSAddr       = "127.0.0.1:18000"
	APIAddr       = "127.0.0.1:18080"
	StandinAddr   = "127.0.0.1:7010"
	ConsulAddr    = "127.0.0.1:8500"
)

// InstanceAddrs are the listeners of one service instance and its sidecar.
type InstanceAddrs struct {
	App, AppAdmin                   string
	SidecarAdmin, Inbound, Outbound string
}

// Addrs are the listener addresses of the whole topology. make run uses
// DevAddrs (the fixed, documented ports); tests pass addresses they
// allocated themselves. Every process's address must be known before the
// first one starts: the control plane names the edge's JWKS, and the edge
// sends its access events to the stats sidecar.
type Addrs struct {
	Edge, EdgeAdmin string
	XDS, API        string
	Standin         string
	// Consul is the HTTP address of the Consul agent (registry consul).
	Consul string

	Pets1, Pets2, Sync, Stats InstanceAddrs

	// Jaeger and Prometheus are the listeners of the observability
	// servers that Options.Obs starts.
	Jaeger     JaegerAddrs
	Prometheus string
}

// DevAddrs returns the fixed addresses of `make run`.
func DevAddrs() Addrs {
	inst := func(app, admin, sidecarBase int) InstanceAddrs {
		a := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
		return InstanceAddrs{App: a(app), AppAdmin: a(admin),
			SidecarAdmin: a(sidecarBase), Inbound: a(sidecarBase + 1), Outbound: a(sidecarBase + 2)}
	}
	return Addrs{
		Edge: EdgeAddr, EdgeAdmin: EdgeAdminAddr, XDS: XDSAddr, API: APIAddr, Standin: StandinAddr, Consul: ConsulAddr,
		Pets1:  inst(7001, 7101, 15010),
		Pets2:  inst(7011, 7111, 15020),
		Sync:   inst(7002, 7102, 15030),
		Stats:  inst(7003, 7103, 15040),
		Jaeger: devJaeger(), Prometheus: devPrometheus,
	}
}

// Instance is one service instance of the topology; its app process is
// named Name and its sidecar "sidecar-"+Name.
type Instance struct {
	Name, Service, Version string
	Addrs                  InstanceAddrs
}

// SidecarName is the process name of the instance's sidecar.
func (i Instance) SidecarName() string { return "sidecar-" + i.Name }

// Instances returns the service instances of the topology.
func (a Addrs) Instances() (pets1, pets2, sync, stats Instance) {
	return Instance{Name: "pets-1", Service: "pets", Version: "v1", Addrs: a.Pets1},
		Instance{Name: "pets-2", Service: "pets", Version: "v2", Addrs: a.Pets2},
		Instance{Name: "sync", Service: "sync", Version: "v1", Addrs: a.Sync},
		Instance{Name: "stats", Service: "stats", Version: "v1", Addrs: a.Stats}
}

// Issuer is the edge's token issuer (and the base of its JWKS and token
// endpoint).
func (a Addrs) Issuer() string { return "http://" + a.Edge }

// Prepare writes the dev configuration files (users, service accounts,
// registration token, xDS token) into the run directory; Topology refers
// to them.
func Prepare(dir string) error {
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(etc, 0o700); err != nil {
		return err
	}
	files := map[string][]byte{
		"users.yaml":            devconfig.UsersYAML,
		"service-accounts.yaml": devconfig.ServiceAccountsYAML,
		"registration-token":    []byte(devconfig.RegistrationToken),
		"xds-token":             []byte(devconfig.XDSToken + "\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(etc, name), b, 0o600); err != nil {
			return err
		}
	}
	return os.MkdirAll(filepath.Join(dir, "data"), 0o755)
}

func sidecar(o Options, a Addrs, i Instance) Proc {
	args := []string{
		"-service", i.Service, "-instance", i.Name, "-version", i.Version,
		"-app-addr", i.Addrs.App, "-inbound-addr", i.Addrs.Inbound, "-outbound-addr", i.Addrs.Outbound, "-admin-addr", i.Addrs.SidecarAdmin,
		"-xds-addr", a.XDS, "-xds-token-file", filepath.Join(o.RunDir, "etc", "xds-token"),
		"-jwks-url", a.Issuer() + "/.well-known/jwks.json", "-issuer", a.Issuer(), "-token-url", a.Issuer() + "/auth/token",
	}
	if o.Registry == "consul" {
		args = append(args, "-registry", "consul", "-consul-addr", a.Consul)
	} else {
		args = append(args, "-registry", "builtin", "-registry-url", "http://"+a.API,
			"-registration-token-file", filepath.Join(o.RunDir, "etc", "registration-token"))
	}
	return Proc{Name: i.SidecarName(), Bin: "sidecar", Args: args,
		Env:       append([]string{"SIDECAR_CLIENT_SECRET=" + devconfig.Secret(i.Service)}, telemetryEnv(o, "sidecar-"+i.Service, i.Name)...),
		Listeners: []string{"inbound", "outbound", "admin"}}
}

// App returns the app process of a service instance (pets, sync or stats).
func App(o Options, i Instance) Proc {
	a := o.addrs()
	data := filepath.Join(o.RunDir, "data")
	args := []string{"-addr", i.Addrs.App, "-admin-addr", i.Addrs.AppAdmin}
	var env []string
	switch i.Service {
	case "pets":
		args = append(args, "-db", "sqlite://"+filepath.Join(data, "pets.db"), "-instance", i.Name)
	case "stats":
		args = append(args, "-db", filepath.Join(data, "stats.db"), "-pets-url", "http://"+i.Addrs.Outbound, "-pets-host", "pets")
	case "sync":
		args = append(args, "-db", filepath.Join(data, "sync.db"),
			"-petfinder-url", "http://"+a.Standin, "-pets-url", "http://"+i.Addrs.Outbound, "-pets-host", "pets", "-run-at-start")
		// Dev-only secret of the Petfinder stand-in.
		env = append(env, "SYNC_PETFINDER_CLIENT_SECRET=petmesh-dev-secret")
	}
	env = append(env, telemetryEnv(o, i.Service, i.Name)...)
	return Proc{Name: i.Name, Bin: i.Service, Listeners: []string{"http", "admin"}, Args: args, Env: env}
}

// Sidecar returns the sidecar process of a service instance.
func Sidecar(o Options, i Instance) Proc {
	p := sidecar(o, o.addrs(), i)
	if i.Service == "sync" {
		// The sync sidecar must reach pets through the mesh before sync's
		// initial run starts.
		p.Ready = httpReady("http://"+i.Addrs.Outbound+"/pets?limit=1", map[string]string{"Host": "pets"}, nil)
	}
	return p
}

// Topology returns the processes of the dev topology in start order. Each
// process retries what it depends on, so the order only makes the start
// quiet; the readiness gates make the initial sync run on a converged mesh.
func Topology(o Options) []Proc {
	a := o.addrs()
	dir := o.RunDir
	data := filepath.Join(dir, "data")
	etc := filepath.Join(dir, "etc")
	cp := []string{"-xds-addr", a.XDS, "-api-addr", a.API, "-jwks-url", a.Issuer() + "/.well-known/jwks.json", "-issuer", a.Issuer(),
		"-registration-token-file", filepath.Join(etc, "registration-token"), "-edge-local-addr", a.Edge,
		"-xds-token-file", filepath.Join(etc, "xds-token")}
	if o.Registry == "consul" {
		cp = append(cp, "-registry", "consul", "-store", "consul", "-consul-addr", a.Consul)
	} else {
		cp = append(cp, "-registry", "builtin", "-store", "file", "-store-dir", filepath.Join(data, "routes"))
	}
	var procs []Proc
	if o.Registry == "consul" && o.ConsulBin != "" {
		host, port, _ := net.SplitHostPort(a.Consul)
		procs = append(procs, Proc{Name: "consul", Bin: o.ConsulBin, Absolute: true,
			Args: []string{"agent", "-dev", "-bind", host, "-client", host, "-http-port", port,
				"-data-dir", filepath.Join(data, "consul")},
			Ready: httpReady("http://"+a.Consul+"/v1/status/leader", nil, func(body string) bool { return len(body) > 4 })})
	}
	if o.Obs {
		// First, so that the processes' first spans have somewhere to go.
		procs = append(procs, jaegerProc(o))
	}
	pets1, pets2, syncI, stats := a.Instances()
	procs = append(procs,
		Proc{Name: "petfinder-standin", Bin: "petfinder-standin", Listeners: []string{"http"},
			Args: []string{"-addr", a.Standin}, Env: telemetryEnv(o, "petfinder-standin", "")},
		Proc{Name: "controlplane", Bin: "controlplane", Listeners: []string{"xds", "api"}, Args: cp,
			Env: telemetryEnv(o, "controlplane", "")},
		Proc{Name: "edge", Bin: "edge", Listeners: []string{"http", "admin"}, Env: telemetryEnv(o, "edge", ""),
			Args: []string{"-addr", a.Edge, "-admin-addr", a.EdgeAdmin, "-xds-addr", a.XDS, "-xds-token-file", filepath.Join(etc, "xds-token"), "-issuer", a.Issuer(),
				"-users-file", filepath.Join(etc, "users.yaml"), "-service-accounts-file", filepath.Join(etc, "service-accounts.yaml"),
				"-keys-dir", filepath.Join(data, "edge-keys"), "-stats-url", "http://" + stats.Addrs.Inbound, "-stats-direct=false"},
			Ready: httpReady("http://"+a.EdgeAdmin+"/readyz", nil, nil)},
		App(o, pets1), Sidecar(o, pets1),
		App(o, pets2), Sidecar(o, pets2),
		App(o, stats), Sidecar(o, stats),
		Sidecar(o, syncI), App(o, syncI),
	)
	if o.Obs {
		// Last, so that its first scrape finds every target up.
		procs = append(procs, prometheusProc(o))
	}
	return procs
}

// httpReady returns a check that passes when url answers 200 (and, when
// given, the body satisfies ok).
func httpReady(url string, headers map[string]string, ok func(string) bool) func(context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for k, v := range headers {
			if k == "Host" {
				req.Host = v
				continue
			}
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: status %d: %s", url, resp.StatusCode, strings.TrimSpace(string(buf[:n])))
		}
		if ok != nil && !ok(string(buf[:n])) {
			return fmt.Errorf("%s: not ready: %s", url, buf[:n])
		}
		return nil
	}
}

// Banner is printed once everything is up.
func Banner(o Options) string {
	a := o.addrs()
	return `
petmesh is up.

  edge (public)         http://` + a.Edge + `
  edge admin            http://` + a.EdgeAdmin + `/metrics  /config_dump  /readyz
  control plane API     http://` + a.API + `   (xDS on ` + a.XDS + `)
  pets v1 / v2          app ` + a.Pets1.App + ` / ` + a.Pets2.App + `   sidecar admin ` + a.Pets1.SidecarAdmin + ` / ` + a.Pets2.SidecarAdmin + `
  sync, stats           app ` + a.Sync.App + `, ` + a.Stats.App + `   sidecar admin ` + a.Sync.SidecarAdmin + `, ` + a.Stats.SidecarAdmin + `
  Petfinder stand-in    http://` + a.Standin + `
  logs                  ` + filepath.Join(o.RunDir, "logs") + `
` + obsBanner(o) + `
Development users (dev only, from dev/config/users.yaml):
  alice / alice-dev   roles: viewer
  ops   / ops-dev     roles: admin, viewer

Try:
  TOKEN=$(curl -s http://` + a.Edge + `/auth/token -H 'Content-Type: application/json' \
      -d '{"username":"alice","password":"alice-dev"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  curl -s "http://` + a.Edge + `/pets?species=Dog&limit=5" -H "Authorization: Bearer $TOKEN"
  curl -s -o /dev/null -w '%{http_code}\n' http://` + a.Edge + `/pets          # 401 without a token

  export PETMESH_API=http://` + a.API + `
  export PETMESH_TOKEN=$(curl -s http://` + a.Edge + `/auth/token -H 'Content-Type: application/json' \
      -d '{"username":"ops","password":"ops-dev"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  bin/petctl routes get
  bin/petctl routes set-weights pets v1=90 v2=10
  bin/petctl proxies
  bin/petctl routes history

Ctrl-C (or make stop) stops everything.
`
}

// obsBanner is the observability part of the banner: the Jaeger and
// Prometheus URLs with Obs, the OTLP endpoint otherwise.
func obsBanner(o Options) string {
	a := o.addrs()
	if !o.Obs {
		if o.OTLPEndpoint == "" {
			return "  traces                not exported (make run OBS=1 starts Jaeger and Prometheus)\n"
		}
		return "  traces                OTLP to " + o.OTLPEndpoint + " (sampled share " + o.traceRatio() + ")\n"
	}
	return `  Jaeger UI             http://` + a.Jaeger.UI + `   (OTLP gRPC ` + a.Jaeger.OTLPGRPC + `, OTLP HTTP http://` + a.Jaeger.OTLPHTTP + `; sampled share ` + o.traceRatio() + `)
  Prometheus            http://` + a.Prometheus + `   (scrapes every process; alerts at /alerts)
`
}
