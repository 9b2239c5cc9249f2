// Separate module that pins the Consul agent used by the tests and by
// `make run REGISTRY=consul`. scripts/tool.sh builds it into the cache.
module github.com/petmesh/petmesh/tools/consul

go 1.26
