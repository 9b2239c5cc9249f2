package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/petmesh/petmesh/internal/atomicfile"
)

// The built-in registry's state file lets a restarted control plane serve
// the endpoints it served before, instead of none until every sidecar's
// next heartbeat has re-registered it (a 404, then a registration): the
// proxies would otherwise be sent empty load assignments for a heartbeat
// interval. Istio's control plane likewise waits for its registries to
// sync before it serves; Consul keeps its catalog on disk.
//
// Restored instances get a fresh TTL from the moment of the restore: an
// instance that is still alive renews it with its next heartbeat (which
// succeeds: no re-registration); one that died while the control plane
// was down expires one TTL after the restart, like any instance that
// stops heart-beating. So the warm-up is one TTL long, and ends for an
// instance at its first heartbeat.

// stateVersion is the state file format's version.
const stateVersion = 1

type stateFile struct {
	Version   int             `json:"version"`
	SavedAt   time.Time       `json:"saved_at"`
	Instances []stateInstance `json:"instances"`
}

type stateInstance struct {
	Instance
	TTL string `json:"ttl"`
}

// restoreLocked loads the state file into the empty registry, each
// instance alive for its TTL from now. A missing file is an empty state;
// an unreadable one is an error (the caller logs it and starts empty);
// invalid entries are skipped and logged.
func (r *Memory) restoreLocked(now time.Time) (int, error) {
	raw, err := os.ReadFile(r.stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var sf stateFile
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sf); err != nil {
		return 0, fmt.Errorf("decode: %w", err)
	}
	if sf.Version != stateVersion {
		return 0, fmt.Errorf("version %d: want %d", sf.Version, stateVersion)
	}
	n := 0
	for _, si := range sf.Instances {
		ttl, err := time.ParseDuration(si.TTL)
		if err != nil || ttl < MinTTL || ttl > MaxTTL {
			r.log.Warn("registry state: instance skipped", "id", si.ID, "field", "ttl", "value", si.TTL)
			continue
		}
		reg := Registration{Service: si.Service, ID: si.ID, Address: si.Address, Port: si.Port, Version: si.Version, Metadata: si.Metadata, TTL: ttl}
		if err := reg.Validate(); err != nil {
			r.log.Warn("registry state: instance skipped", "id", si.ID, "error", err)
			continue
		}
		if !si.Health.Valid() {
			r.log.Warn("registry state: instance skipped", "id", si.ID, "field", "health", "value", string(si.Health))
			continue
		}
		if old, ok := r.instances[si.ID]; ok {
			r.removeLocked(old)
		}
		inst := si.Instance
		inst.Metadata = cloneMeta(inst.Metadata)
		r.addLocked(&memEntry{inst: inst, ttl: ttl, expires: now.Add(ttl)})
		n++
	}
	r.log.Info("registry state restored: instances alive for one TTL unless they heartbeat",
		"file", r.stateFile, "instances", n, "saved_at", sf.SavedAt, "age", now.Sub(sf.SavedAt).Round(time.Millisecond))
	return n, nil
}

// saveState writes the current instances to the state file atomically
// (temporary file, fsync, rename, directory fsync). Only Run calls it.
func (r *Memory) saveState() {
	r.mu.Lock()
	sf := stateFile{Version: stateVersion, SavedAt: r.clock.Now().UTC(), Instances: make([]stateInstance, 0, len(r.instances))}
	for _, e := range r.instances {
		sf.Instances = append(sf.Instances, stateInstance{Instance: e.inst.clone(), TTL: e.ttl.String()})
	}
	r.mu.Unlock()
	slices.SortFunc(sf.Instances, func(a, b stateInstance) int { return strings.Compare(a.ID, b.ID) })
	data, err := json.MarshalIndent(sf, "", "  ")
	if err == nil {
		err = writeState(r.stateFile, append(data, '\n'))
	}
	if err != nil {
		r.metrics.stateErrors.Inc()
		r.log.Error("registry state: write failed (a restart would start with fewer instances)", "file", r.stateFile, "error", err)
	}
}

// writeState writes the state file, creating its directory (0700).
func writeState(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, data)
}
