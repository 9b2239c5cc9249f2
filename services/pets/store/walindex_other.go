//go:build !unix

package store

import "errors"

const walHdrWords = 12

// walIndex is not mapped on this system: every DataVersion call runs
// PRAGMA data_version.
type walIndex struct{}

func openWALIndex(string) (*walIndex, error) {
	return nil, errors.New("wal index: not supported on this system")
}

func (*walIndex) read(*[walHdrWords]uint32) bool { return false }

func (*walIndex) close() {}
