package sidecar

import (
	"net"
	"net/http"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"

	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/identity"
)

// healthBypass wraps the mesh AuthFactory: on the inbound listener a GET or
// HEAD of the app's health path from a loopback address (the local kubelet,
// the dev launcher, a peer sidecar's active health check on one machine)
// passes without a token; every other request is verified as configured.
func healthBypass(next dataplane.AuthFactory, healthPath string) dataplane.AuthFactory {
	return func(cfg *jwtv3.JwtAuthentication) (dataplane.Authenticator, error) {
		a, err := next(cfg)
		if err != nil {
			return nil, err
		}
		return dataplane.AuthenticatorFunc(func(r *http.Request, req *dataplane.AuthRequirement) (identity.Identity, error) {
			if isLoopbackHealthCheck(r, healthPath) {
				return identity.Identity{}, nil
			}
			return a.Authenticate(r, req)
		}), nil
	}
}

func isLoopbackHealthCheck(r *http.Request, healthPath string) bool {
	if r.URL.Path != healthPath || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return false
	}
	if r.Header.Get("Authorization") != "" {
		return false // a caller that sends a token gets it verified
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
