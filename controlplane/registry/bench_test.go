package registry_test

import (
	"fmt"
	"testing"

	"github.com/petmesh/petmesh/controlplane/registry"
)

// BenchmarkMemoryHeartbeat is the steady-state hot path: every sidecar
// heartbeats every few seconds.
func BenchmarkMemoryHeartbeat(b *testing.B) {
	m, err := registry.NewMemory(registry.MemoryOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	const n = 1000
	for i := range n {
		if err := m.Register(ctx, registry.Registration{Service: fmt.Sprintf("svc-%d", i%20), ID: fmt.Sprintf("i-%d", i), Address: "127.0.0.1", Port: 1 + i}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := m.Heartbeat(ctx, fmt.Sprintf("i-%d", i%n)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryHealthChange measures a change that rebuilds and
// publishes a snapshot of 1,000 instances to a watcher.
func BenchmarkMemoryHealthChange(b *testing.B) {
	m, err := registry.NewMemory(registry.MemoryOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	const n = 1000
	for i := range n {
		if err := m.Register(ctx, registry.Registration{Service: fmt.Sprintf("svc-%d", i%20), ID: fmt.Sprintf("i-%d", i), Address: "127.0.0.1", Port: 1 + i}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := m.Watch(ctx); err != nil {
		b.Fatal(err)
	}
	hs := []registry.Health{registry.HealthCritical, registry.HealthPassing}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := m.SetHealth(ctx, "i-7", hs[i%2], ""); err != nil {
			b.Fatal(err)
		}
	}
}
