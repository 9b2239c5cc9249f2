package store

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
)

// DataVersion returns a number that changes whenever a write to the pets
// has become visible: after every write through this store and, when
// DataVersionShared is true, after every commit by any other connection
// or process sharing the database. A caller that reads DataVersion before
// a query may reuse that query's result for as long as DataVersion keeps
// returning the same number. Numbers only grow within one SQLStore;
// spurious changes are possible, missed ones are not.
//
// It is safe for concurrent use and never blocks on writers. On SQLite,
// while the WAL-index header (the start of the -shm file, see
// walIndex) is what it was at the last check, nothing was committed and
// the call costs a 96-byte memory read; otherwise it runs PRAGMA
// data_version on a connection of its own, and concurrent callers share
// that round trip, though every caller gets an answer from a check that
// started after its call.
func (s *SQLStore) DataVersion(ctx context.Context) (uint64, error) {
	local := s.writes.Load()
	if s.shared == nil {
		return local, nil
	}
	v, err := s.shared.version(ctx)
	if err != nil {
		return 0, err
	}
	return local + v, nil
}

// DataVersionShared reports whether DataVersion also sees commits by
// other processes (SQLite: yes), or only writes through this store
// (PostgreSQL).
func (s *SQLStore) DataVersionShared() bool { return s.shared != nil }

// wrote records a write through this store for DataVersion. It is called
// after the write committed (or failed: a spurious change is harmless).
func (s *SQLStore) wrote() { s.writes.Add(1) }

// dataVersionWatch reads SQLite's PRAGMA data_version on a connection
// that never writes, so that every commit (by this process's pool or by
// another process) changes the value it reads. Connection values are not
// comparable with each other, so it turns them into its own counter,
// which also moves on reconnects.
//
// The PRAGMA costs a read transaction (file locks and a stat: about a
// fifth of the CPU of a cached GET /pets). So each check also records
// the WAL-index header it saw just before the PRAGMA; every commit in WAL
// mode rewrites that header before COMMIT returns, so while the header
// is unchanged the last result still holds. (A commit outside WAL mode
// would not touch it, but a database cannot leave WAL mode while another
// connection, here the watch's own, has it open.)
type dataVersionWatch struct {
	connector driver.Connector
	dbPath    string

	// snap is the header and result of the last check; nil when the
	// header could not be read. idxMu guards the mapping against close.
	snap   atomic.Pointer[walSnap]
	idxMu  sync.RWMutex
	idx    *walIndex
	checks atomic.Uint64 // PRAGMA checks run, for tests

	mu      sync.Mutex
	cond    sync.Cond
	running bool
	started uint64 // sequence number of the last check started
	done    uint64 // sequence number of the last check finished
	gen     uint64 // result of the check done
	err     error  // error of the check done

	// Owned by the running check.
	conn    driver.Conn
	stmt    driver.Stmt
	dest    []driver.Value
	last    int64
	counter uint64
	closed  bool
}

// walSnap is a WAL-index header and the counter a check read after it.
type walSnap struct {
	hdr [walHdrWords]uint32
	gen uint64
}

func newDataVersionWatch(dsn, dbPath string) (*dataVersionWatch, error) {
	c, err := sqlite.NewConnector(dsn)
	if err != nil {
		return nil, err
	}
	w := &dataVersionWatch{connector: c, dbPath: dbPath, dest: make([]driver.Value, 1)}
	w.cond.L = &w.mu
	return w, nil
}

// version returns the counter from a check that started after the call:
// a caller arriving while a check runs waits for that one and the next,
// which it shares with every caller that arrived meanwhile.
func (w *dataVersionWatch) version(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if gen, ok := w.unchanged(); ok {
		return gen, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	need := w.started + 1
	for w.done < need {
		if w.running {
			w.cond.Wait()
			continue
		}
		w.running = true
		w.started++
		seq := w.started
		w.mu.Unlock()
		gen, err := w.check()
		w.mu.Lock()
		w.running = false
		w.done, w.gen, w.err = seq, gen, err
		w.cond.Broadcast()
	}
	return w.gen, w.err
}

// unchanged returns the last check's result if the WAL-index header is
// still the one that check saw.
func (w *dataVersionWatch) unchanged() (uint64, bool) {
	snap := w.snap.Load()
	if snap == nil {
		return 0, false
	}
	w.idxMu.RLock()
	defer w.idxMu.RUnlock()
	var hdr [walHdrWords]uint32
	if w.idx == nil || !w.idx.read(&hdr) || hdr != snap.hdr {
		return 0, false
	}
	return snap.gen, true
}

// checkTimeout bounds a reconnect; the check itself never waits for a
// lock in WAL mode.
const checkTimeout = 5 * time.Second

// check reads data_version once; only one check runs at a time.
func (w *dataVersionWatch) check() (uint64, error) {
	if w.closed {
		return 0, errors.New("data version: store closed")
	}
	if w.conn == nil {
		ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
		defer cancel()
		conn, err := w.connector.Connect(ctx)
		if err != nil {
			return 0, fmt.Errorf("data version: connect: %w", err)
		}
		stmt, err := conn.Prepare(`PRAGMA data_version`)
		if err != nil {
			_ = conn.Close()
			return 0, fmt.Errorf("data version: prepare: %w", err)
		}
		w.conn, w.stmt = conn, stmt
		w.counter++ // values of a new connection start anywhere
		w.last = -1
	}
	w.checks.Add(1)
	// The header is read before the PRAGMA, so that the result is at
	// least as new as the header it is stored with.
	var hdr [walHdrWords]uint32
	hdrOK := false
	if w.idx != nil {
		hdrOK = w.idx.read(&hdr)
	}
	v, err := w.read()
	if err != nil {
		w.closeConn()
		return 0, fmt.Errorf("data version: %w", err)
	}
	if v != w.last {
		if w.last != -1 {
			w.counter++
		}
		w.last = v
	}
	if w.idx == nil {
		// The first PRAGMA created the -shm file: map it for the next
		// checks (without it every call runs the PRAGMA).
		if idx, err := openWALIndex(w.dbPath); err == nil {
			w.idxMu.Lock()
			w.idx = idx
			w.idxMu.Unlock()
		}
	}
	if hdrOK {
		w.snap.Store(&walSnap{hdr: hdr, gen: w.counter})
	} else {
		w.snap.Store(nil)
	}
	return w.counter, nil
}

func (w *dataVersionWatch) read() (int64, error) {
	rows, err := w.stmt.(driver.StmtQueryContext).QueryContext(context.Background(), nil)
	if err != nil {
		return 0, err
	}
	err = rows.Next(w.dest)
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, io.EOF) {
		return 0, errors.New("no row")
	}
	if err != nil {
		return 0, err
	}
	v, ok := w.dest[0].(int64)
	if !ok {
		return 0, fmt.Errorf("unexpected value %T", w.dest[0])
	}
	return v, nil
}

func (w *dataVersionWatch) closeConn() {
	// Without the connection nothing keeps the -shm file from being
	// truncated by another process: drop the mapping first.
	w.snap.Store(nil)
	w.idxMu.Lock()
	if w.idx != nil {
		w.idx.close()
		w.idx = nil
	}
	w.idxMu.Unlock()
	if w.stmt != nil {
		_ = w.stmt.Close()
	}
	if w.conn != nil {
		_ = w.conn.Close()
	}
	w.conn, w.stmt = nil, nil
}

// close waits for a running check and releases the connection; later
// checks fail.
func (w *dataVersionWatch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.running {
		w.cond.Wait()
	}
	w.closed = true
	w.closeConn()
}
