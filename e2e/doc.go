// Package e2e holds the end-to-end tests of petmesh: the whole topology of
// `make run` (dev/launcher) started from real binaries on free loopback
// ports, exercised over real sockets through the edge. The tests are in
// the _test files; see README.md.
package e2e
