package registry_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/petmesh/petmesh/controlplane/registry"
)

// FuzzInstanceRequest: any JSON body either converts to a registration
// that Validate accepts or yields a *ValidationError naming a field;
// nothing panics.
func FuzzInstanceRequest(f *testing.F) {
	for _, s := range []string{
		`{"service":"pets","id":"pets-1","address":"127.0.0.1","port":9001,"version":"v1","metadata":{"zone":"a"},"ttl":"10s"}`,
		`{"service":"pets","id":"p","address":"::1","port":1,"ttl":"-1s"}`,
		`{"service":"Pets","id":"","address":"","port":0}`,
		`{"service":"pets","id":"x","address":"host.example","port":65535,"metadata":{"consul-x":"y"},"ttl":"1h1s"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req registry.InstanceRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if dec.Decode(&req) != nil {
			return
		}
		reg, err := req.Registration()
		if err != nil {
			var ve *registry.ValidationError
			if !errors.As(err, &ve) || ve.Field == "" {
				t.Fatalf("error %v is not a validation error naming a field", err)
			}
			return
		}
		if reg.Validate() != nil || reg.Port < 1 || reg.Port > 65535 || reg.Service == "" || reg.ID == "" ||
			reg.TTL < 0 || reg.TTL > registry.MaxTTL {
			t.Fatalf("accepted an invalid registration %+v", reg)
		}
	})
}
