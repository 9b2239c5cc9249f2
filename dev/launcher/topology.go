package launcher

import (
	"path/filepath"
	"strings"
)

// Fixed ports of the dev topology (README documents every one).
const (
	StandinAddr    = "127.0.0.1:7010"
	Pets1Addr      = "127.0.0.1:7001"
	Pets1AdminAddr = "127.0.0.1:7101"
	Pets2Addr      = "127.0.0.1:7011"
	Pets2AdminAddr = "127.0.0.1:7111"
	SyncAddr       = "127.0.0.1:7002"
	SyncAdminAddr  = "127.0.0.1:7102"
	StatsAddr      = "127.0.0.1:7003"
	StatsAdminAddr = "127.0.0.1:7103"
)

// Topology returns the processes of the dev topology in start order.
func Topology(dir string) []Proc {
	data := filepath.Join(dir, "data")
	petsDB := "sqlite://" + filepath.Join(data, "pets.db")
	return []Proc{
		{Name: "petfinder-standin", Bin: "petfinder-standin", Listeners: []string{"http"},
			Args: []string{"-addr", StandinAddr}},
		{Name: "pets-1", Bin: "pets", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", Pets1Addr, "-admin-addr", Pets1AdminAddr, "-db", petsDB, "-instance", "pets-1"}},
		{Name: "pets-2", Bin: "pets", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", Pets2Addr, "-admin-addr", Pets2AdminAddr, "-db", petsDB, "-instance", "pets-2"}},
		{Name: "stats", Bin: "stats", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", StatsAddr, "-admin-addr", StatsAdminAddr, "-db", filepath.Join(data, "stats.db"),
				"-pets-url", "http://" + Pets1Addr}},
		{Name: "sync", Bin: "sync", Listeners: []string{"http", "admin"},
			Args: []string{"-addr", SyncAddr, "-admin-addr", SyncAdminAddr, "-db", filepath.Join(data, "sync.db"),
				"-petfinder-url", "http://" + StandinAddr, "-pets-url", "http://" + Pets1Addr, "-run-at-start"},
			// Dev-only secret of the Petfinder stand-in.
			Env: []string{"SYNC_PETFINDER_CLIENT_SECRET=petmesh-dev-secret"}},
	}
}

// Banner is printed once everything is up.
func Banner() string {
	var b strings.Builder
	b.WriteString(`
petmesh is up.

  pets (v1)          http://` + Pets1Addr + `   admin http://` + Pets1AdminAddr + `
  pets (v2)          http://` + Pets2Addr + `   admin http://` + Pets2AdminAddr + `
  sync               http://` + SyncAddr + `   admin http://` + SyncAdminAddr + `
  stats              http://` + StatsAddr + `   admin http://` + StatsAdminAddr + `
  Petfinder stand-in http://` + StandinAddr + `

Try:
  curl -s 'http://` + Pets1Addr + `/pets?species=Dog&limit=5' -H 'X-Petmesh-Subject: alice' -H 'X-Petmesh-Roles: viewer'

Ctrl-C (or make stop) stops everything.
`)
	return b.String()
}
