//go:build unix

package store

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// walHdrWords is the size of one copy of the WAL-index header in 32-bit
// words (48 bytes; see "The WAL-Index Header" in SQLite's WAL file format
// documentation).
const walHdrWords = 12

// walIndex is a read-only mapping of the first page of a WAL database's
// -shm file, which starts with two copies of the WAL-index header. A
// writer rewrites both (the second first) in every commit; equal copies
// are a consistent header. The mapping must be dropped before the last
// connection of this process to the database closes: only open
// connections keep other processes from truncating the file.
type walIndex struct {
	mem []byte
}

func openWALIndex(dbPath string) (*walIndex, error) {
	if p, err := filepath.EvalSymlinks(dbPath); err == nil {
		dbPath = p // SQLite puts the -shm file beside the link's target
	}
	f, err := os.Open(dbPath + "-shm")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // the mapping outlives the descriptor
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := os.Getpagesize()
	if fi.Size() < int64(size) {
		return nil, fmt.Errorf("wal index %s: %d bytes, not initialized", f.Name(), fi.Size())
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map wal index %s: %w", f.Name(), err)
	}
	return &walIndex{mem: mem}, nil
}

// read copies the header into hdr and reports whether both copies were
// equal (false while a writer is updating them).
func (x *walIndex) read(hdr *[walHdrWords]uint32) bool {
	return readWALHeader(x.mem, hdr)
}

// readWALHeader reads the first copy of the header and then the second
// (the reverse of the writer's order), with atomic loads since other
// processes write the memory.
func readWALHeader(mem []byte, hdr *[walHdrWords]uint32) bool {
	if len(mem) < 2*4*walHdrWords {
		return false
	}
	for i := range hdr {
		hdr[i] = atomic.LoadUint32((*uint32)(unsafe.Pointer(&mem[4*i])))
	}
	for i := range hdr {
		if atomic.LoadUint32((*uint32)(unsafe.Pointer(&mem[4*(walHdrWords+i)]))) != hdr[i] {
			return false
		}
	}
	return true
}

func (x *walIndex) close() {
	_ = syscall.Munmap(x.mem)
	x.mem = nil
}
