package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/petmesh/petmesh/internal/testutil/consultest"
)

// TestConsulStore runs the conformance suite on a real Consul agent; every
// subtest uses its own KV prefix, shared by the stores it opens (as
// replicas of a control plane would).
func TestConsulStore(t *testing.T) {
	agent := consultest.Start(t)
	conformance(t, func(t *testing.T) Store {
		prefix := "test/" + strings.NewReplacer("/", "_", " ", "_", ",", "_").Replace(t.Name()) + "/"
		s, err := OpenConsul(agent.Client(), prefix)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})

	t.Run("survives an agent restart", func(t *testing.T) {
		// A dev-mode agent keeps KV in memory; a persistent server is what
		// a deployment runs and what this property is about.
		agent := consultest.StartWith(t, consultest.Options{Persistent: true})
		s, err := OpenConsul(agent.Client(), "test/restart")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Put(t.Context(), 0, table(t, "a"), "a", "before restart"); err != nil {
			t.Fatal(err)
		}
		agent.Restart()
		s2, err := OpenConsul(agent.Client(), "test/restart/")
		if err != nil {
			t.Fatal(err)
		}
		cur, err := s2.Current(t.Context())
		if err != nil || cur.Number != 1 || cur.Message != "before restart" {
			t.Fatalf("after restart: %+v %v", cur.Version, err)
		}
	})

	if _, err := OpenConsul(nil, ""); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("nil client: %v", err)
	}
}
