// Package devconfig embeds the development-only users and service
// accounts used by `make run` and the end-to-end tests.
package devconfig

import _ "embed"

// UsersYAML holds alice/alice-dev (viewer) and ops/ops-dev (admin, viewer).
//
//go:embed users.yaml
var UsersYAML []byte

// ServiceAccountsYAML holds pets, sync and stats with <name>-dev-secret.
//
//go:embed service-accounts.yaml
var ServiceAccountsYAML []byte

// Secret returns the development client secret of a service account.
func Secret(service string) string { return service + "-dev-secret" }

// RegistrationToken is the development registration token of the built-in
// registry.
const RegistrationToken = "petmesh-dev-registration-token"

// XDSToken is the development token of the control plane's xDS port: the
// control plane accepts it (-xds-token-file) and the edge and every sidecar
// send it. Development only; a deployment generates its own.
const XDSToken = "petmesh-dev-xds-token-0123456789"
