package launcher

import (
	"context"
	"fmt"
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
	EdgeAddr         = "127.0.0.1:8080"
	EdgeAdminAddr    = "127.0.0.1:8081"
	XDSAddr          = "127.0.0.1:18000"
	APIAddr          = "127.0.0.1:18080"
	StandinAddr      = "127.0.0.1:7010"
	issuer           = "http://" + EdgeAddr
	jwksURL          = issuer + "/.well-known/jwks.json"
	tokenURL         = issuer + "/auth/token"
	registryURL      = "http://" + APIAddr
	consulAddr       = "127.0.0.1:8500"
	readyGateTimeout = 90 * time.Second
)

// instance is one service instance with its sidecar.
type instance struct {
	name, service, version string
	app, appAdmin          string
	sidecarBase            int // admin = base, inbound = base+1, outbound = base+2
}

func (i instance) inbound() string  { return fmt.Sprintf("127.0.0.1:%d", i.sidecarBase+1) }
func (i instance) outbound() string { return fmt.Sprintf("127.0.0.1:%d", i.sidecarBase+2) }
func (i instance) admin() string    { return fmt.Sprintf("127.0.0.1:%d", i.sidecarBase) }

var (
	pets1 = instance{name: "pets-1", service: "pets", version: "v1", app: "127.0.0.1:7001", appAdmin: "127.0.0.1:7101", sidecarBase: 15010}
	pets2 = instance{name: "pets-2", service: "pets", version: "v2", app: "127.0.0.1:7011", appAdmin: "127.0.0.1:7111", sidecarBase: 15020}
	syncI = instance{name: "sync", service: "sync", version: "v1", app: "127.0.0.1:7002", appAdmin: "127.0.0.1:7102", sidecarBase: 15030}
	stats = instance{name: "stats", service: "stats", version: "v1", app: "127.0.0.1:7003", appAdmin: "127.0.0.1:7103", sidecarBase: 15040}
)

// prepare writes the dev configuration files into the run directory.
func prepare(dir string) error {
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(etc, 0o700); err != nil {
		return err
	}
	files := map[string][]byte{
		"users.yaml":            devconfig.UsersYAML,
		"service-accounts.yaml": devconfig.ServiceAccountsYAML,
		"registration-token":    []byte(devconfig.RegistrationToken),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(etc, name), b, 0o600); err != nil {
			return err
		}
	}
	return os.MkdirAll(filepath.Join(dir, "data"), 0o755)
}

func sidecar(o Options, i instance) Proc {
	args := []string{
		"-service", i.service, "-instance", i.name, "-version", i.version,
		"-app-addr", i.app, "-inbound-addr", i.inbound(), "-outbound-addr", i.outbound(), "-admin-addr", i.admin(),
		"-xds-addr", XDSAddr, "-jwks-url", jwksURL, "-issuer", issuer, "-token-url", tokenURL,
	}
	if o.Registry == "consul" {
		args = append(args, "-registry", "consul", "-consul-addr", consulAddr)
	} else {
		args = append(args, "-registry", "builtin", "-registry-url", registryURL,
			"-registration-token-file", filepath.Join(o.RunDir, "etc", "registration-token"))
	}
	return Proc{Name: "sidecar-" + i.name, Bin: "sidecar", Args: args,
		Env:       []string{"SIDECAR_CLIENT_SECRET=" + devconfig.Secret(i.service)},
		Listeners: []string{"inbound", "outbound", "admin"}}
}

// Topology returns the processes of the dev topology in start order. Each
// process retries what it depends on, so the order only makes the start
// quiet; the readiness gates make the initial sync run on a converged mesh.
func Topology(o Options) []Proc {
	dir := o.RunDir
	data := filepath.Join(dir, "data")
	etc := filepath.Join(dir, "etc")
	petsDB := "sqlite://" + filepath.Join(data, "pets.db")
	cp := []string{"-xds-addr", XDSAddr, "-api-addr", APIAddr, "-jwks-url", jwksURL, "-issuer", issuer,
		"-registration-token-file", filepath.Join(etc, "registration-token")}
	if o.Registry == "consul" {
		cp = append(cp, "-registry", "consul", "-store", "consul", "-consul-addr", consulAddr)
	} else {
		cp = append(cp, "-registry", "builtin", "-store", "file", "-store-dir", filepath.Join(data, "routes"))
	}
	var procs []Proc
	if o.Registry == "consul" {
		procs = append(procs, Proc{Name: "consul", Bin: o.ConsulBin, Absolute: true,
			Args:  []string{"agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-data-dir", filepath.Join(data, "consul")},
			Ready: httpReady("http://"+consulAddr+"/v1/status/leader", nil, func(body string) bool { return len(body) > 4 })})
	}
	procs = append(procs,
		Proc{Name: "petfinder-standin", Bin: "petfinder-standin", Listeners: []string{"http"},
			Args: []string{"-addr", StandinAddr}},
		Proc{Name: "controlplane", Bin: "controlplane", Listeners: []string{"xds", "api"}, Args: cp},
		Proc{Name: "edge", Bin: "edge", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", EdgeAddr, "-admin-addr", EdgeAdminAddr, "-xds-addr", XDSAddr, "-issuer", issuer,
				"-users-file", filepath.Join(etc, "users.yaml"), "-service-accounts-file", filepath.Join(etc, "service-accounts.yaml"),
				"-keys-dir", filepath.Join(data, "edge-keys"), "-stats-url", "http://" + stats.inbound(), "-stats-direct=false"},
			Ready: httpReady("http://"+EdgeAdminAddr+"/readyz", nil, nil)},
		Proc{Name: "pets-1", Bin: "pets", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", pets1.app, "-admin-addr", pets1.appAdmin, "-db", petsDB, "-instance", "pets-1"}},
		sidecar(o, pets1),
		Proc{Name: "pets-2", Bin: "pets", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", pets2.app, "-admin-addr", pets2.appAdmin, "-db", petsDB, "-instance", "pets-2"}},
		sidecar(o, pets2),
		Proc{Name: "stats", Bin: "stats", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", stats.app, "-admin-addr", stats.appAdmin, "-db", filepath.Join(data, "stats.db"),
				"-pets-url", "http://" + stats.outbound(), "-pets-host", "pets"}},
		sidecar(o, stats),
		// The sync sidecar must reach pets through the mesh before sync's
		// initial run starts.
		withReady(sidecar(o, syncI), httpReady("http://"+syncI.outbound()+"/pets?limit=1", map[string]string{"Host": "pets"}, nil)),
		Proc{Name: "sync", Bin: "sync", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", syncI.app, "-admin-addr", syncI.appAdmin, "-db", filepath.Join(data, "sync.db"),
				"-petfinder-url", "http://" + StandinAddr, "-pets-url", "http://" + syncI.outbound(), "-pets-host", "pets", "-run-at-start"},
			// Dev-only secret of the Petfinder stand-in.
			Env: []string{"SYNC_PETFINDER_CLIENT_SECRET=petmesh-dev-secret"}},
	)
	return procs
}

func withReady(p Proc, ready func(context.Context) error) Proc {
	p.Ready = ready
	return p
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
	return `
petmesh is up.

  edge (public)         http://` + EdgeAddr + `
  edge admin            http://` + EdgeAdminAddr + `/metrics  /config_dump  /readyz
  control plane API     http://` + APIAddr + `   (xDS on ` + XDSAddr + `)
  pets v1 / v2          app ` + pets1.app + ` / ` + pets2.app + `   sidecar admin ` + pets1.admin() + ` / ` + pets2.admin() + `
  sync, stats           app ` + syncI.app + `, ` + stats.app + `   sidecar admin ` + syncI.admin() + `, ` + stats.admin() + `
  Petfinder stand-in    http://` + StandinAddr + `
  logs                  ` + filepath.Join(o.RunDir, "logs") + `

Development users (dev only, from dev/config/users.yaml):
  alice / alice-dev   roles: viewer
  ops   / ops-dev     roles: admin, viewer

Try:
  TOKEN=$(curl -s http://` + EdgeAddr + `/auth/token -H 'Content-Type: application/json' \
      -d '{"username":"alice","password":"alice-dev"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  curl -s "http://` + EdgeAddr + `/pets?species=Dog&limit=5" -H "Authorization: Bearer $TOKEN"
  curl -s -o /dev/null -w '%{http_code}\n' http://` + EdgeAddr + `/pets          # 401 without a token

  export PETMESH_API=http://` + APIAddr + `
  export PETMESH_TOKEN=$(curl -s http://` + EdgeAddr + `/auth/token -H 'Content-Type: application/json' \
      -d '{"username":"ops","password":"ops-dev"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  bin/petctl routes get
  bin/petctl routes set-weights pets v1=90 v2=10
  bin/petctl proxies
  bin/petctl routes history

Ctrl-C (or make stop) stops everything.
`
}
