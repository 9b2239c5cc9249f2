package api

import (
	"encoding/json"
	"fmt"
)

// mergeOpenAPI adds the registry document's paths and components to
// base. The registry's top-level security (its registration token) is
// copied onto each of its operations, since the merged document's
// top-level security is the JWT.
func mergeOpenAPI(base, reg []byte) ([]byte, error) {
	var b, r map[string]any
	if err := json.Unmarshal(base, &b); err != nil {
		return nil, fmt.Errorf("api: openapi: %w", err)
	}
	if err := json.Unmarshal(reg, &r); err != nil {
		return nil, fmt.Errorf("api: registry openapi: %w", err)
	}
	paths, _ := b["paths"].(map[string]any)
	regSec := r["security"]
	rpaths, _ := r["paths"].(map[string]any)
	for p, item := range rpaths {
		ops, _ := item.(map[string]any)
		for _, op := range ops {
			if o, ok := op.(map[string]any); ok {
				if _, has := o["security"]; !has && regSec != nil {
					o["security"] = regSec
				}
			}
		}
		paths[p] = item
	}
	comps, _ := b["components"].(map[string]any)
	rcomps, _ := r["components"].(map[string]any)
	for section, v := range rcomps {
		dst, _ := comps[section].(map[string]any)
		if dst == nil {
			dst = map[string]any{}
			comps[section] = dst
		}
		src, _ := v.(map[string]any)
		for k, x := range src {
			if _, exists := dst[k]; !exists {
				dst[k] = x
			}
		}
	}
	return json.MarshalIndent(b, "", "  ")
}
