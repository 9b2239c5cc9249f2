// Package deploy holds petmesh's deployment descriptions and their offline
// validation: docker-compose.yml (at the repository root) and the
// Kubernetes manifests under deploy/k8s. The package has no runtime code;
// its tests check that the compose file is valid for docker-compose and
// that every Kubernetes manifest decodes strictly into the k8s.io/api
// types. See README.md.
package deploy

// Binaries returns the petmesh binaries in the container image
// (Dockerfile), each with the package it is built from.
func Binaries() map[string]string {
	return map[string]string{
		"pets":                "./services/pets/cmd/pets",
		"sync":                "./services/sync/cmd/sync",
		"stats":               "./services/stats/cmd/stats",
		"petfinder-standin":   "./dev/petfinder-standin/cmd/petfinder-standin",
		"controlplane":        "./controlplane/cmd/controlplane",
		"edge":                "./edge/cmd/edge",
		"sidecar":             "./sidecar/cmd/sidecar",
		"petctl":              "./controlplane/cmd/petctl",
		"petmesh-healthcheck": "./deploy/healthcheck/cmd/petmesh-healthcheck",
	}
}
