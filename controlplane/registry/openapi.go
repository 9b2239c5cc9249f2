package registry

import _ "embed"

// OpenAPI is the OpenAPI 3 document of the registry HTTP API (Handler),
// for the control plane to merge into the one it serves.
//
//go:embed openapi.json
var OpenAPI []byte
