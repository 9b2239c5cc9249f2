package syncsvc

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/petmesh/petmesh/internal/telemetry"
)

// TestPetsClientHostOverride checks that -pets-host reaches the wire, so
// that a sidecar egress listener can route the request by Host.
func TestPetsClientHostOverride(t *testing.T) {
	tests := []struct {
		desc, host, want string
	}{
		{desc: "override for sidecar egress", host: "pets", want: "pets"},
		{desc: "default is the URL host", host: "", want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got := make(chan string, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got <- r.Host
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, `{"inserted":0,"updated":0,"unchanged":0}`)
			}))
			defer srv.Close()
			c := NewPetsClient(PetsConfig{BaseURL: srv.URL, Host: tc.host, MaxAttempts: 1, Telemetry: telemetry.NewTest(io.Discard)})
			if _, err := c.BatchUpsert(context.Background(), []PetInput{{Source: "petfinder", SourceID: "1", Name: "Rex", Species: "Dog"}}); err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == "" {
				want = srv.Listener.Addr().String()
			}
			if h := <-got; h != want {
				t.Fatalf("Host %q, want %q", h, want)
			}
		})
	}
}
