package store_test

import (
	"path/filepath"
	"testing"

	"github.com/petmesh/petmesh/services/pets/store"
)

func newSQLite(t *testing.T) store.Store {
	t.Helper()
	s, err := store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "pets.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSQLiteConformance(t *testing.T) {
	runConformance(t, newSQLite)
}
