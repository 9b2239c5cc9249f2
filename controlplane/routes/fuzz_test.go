package routes

import (
	"errors"
	"testing"
)

// FuzzLoad: parsing and validating arbitrary input never panics, every
// failure is a *ValidationError, and an accepted table's canonical YAML
// and JSON load back to the same table (the canonical form is a fixed
// point). Seeds live in testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	f.Add(DefaultYAML)
	f.Add([]byte(`{"routes":[{"name":"a","match":{"prefix":"/"},"targets":[{"service":"a"}]}]}`))
	f.Add([]byte("routes:\n  - {name: a, match: {prefix: /}, auth: {public: true}, targets: [{service: a}], max_body_bytes: 0, timeout: 0s}\n" +
		"services:\n  a: {panic_threshold: 12.5}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, err := Load(data, ValidateOptions{KnownServices: []string{"pets", "sync", "stats", "a"}})
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Errors) == 0 {
				t.Fatalf("error is not a non-empty *ValidationError: %T %v", err, err)
			}
			return
		}
		for _, form := range [][]byte{tab.YAML(), tab.JSON()} {
			again, err := Load(form, ValidateOptions{})
			if err != nil {
				t.Fatalf("canonical form does not load: %v\n%s", err, form)
			}
			if !Equal(tab, again) {
				t.Fatalf("canonical form is not a fixed point:\n%s\n%s", tab.JSON(), again.JSON())
			}
		}
		_ = tab.Hash()
	})
}
