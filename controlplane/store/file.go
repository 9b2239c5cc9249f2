package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/atomicfile"
)

// FileStore keeps versions as files in a directory:
//
//	<dir>/versions/00000001.json   one Entry per version, never rewritten
//	<dir>/.lock                    flock(2) taken around every Put
//
// The current version is the highest-numbered file. A version file is
// written to a temporary file, fsynced, renamed into place and the
// directory fsynced, so a crash leaves either the whole version or none.
// Several processes may share a directory: Put holds an exclusive flock.
type FileStore struct {
	dir  string
	now  func() time.Time
	poll time.Duration

	mu      sync.Mutex // serialises Puts within the process
	lock    *os.File
	changed chan struct{} // closed and replaced on every local Put
}

var _ Store = (*FileStore)(nil)

// FileOption configures a FileStore.
type FileOption func(*FileStore)

// WithClock injects the clock stamped on versions.
func WithClock(now func() time.Time) FileOption { return func(s *FileStore) { s.now = now } }

// WithPollInterval sets how often Watch looks for versions written by other
// processes (default 1s).
func WithPollInterval(d time.Duration) FileOption { return func(s *FileStore) { s.poll = d } }

// OpenFile opens (creating if needed) a file store in dir.
func OpenFile(dir string, opts ...FileOption) (*FileStore, error) {
	s := &FileStore{dir: dir, now: time.Now, poll: time.Second, changed: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	if s.poll <= 0 {
		return nil, fmt.Errorf("file store: poll interval must be positive")
	}
	if err := os.MkdirAll(filepath.Join(dir, "versions"), 0o755); err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	s.lock = f
	// Remove temporary files left by a crash.
	tmps, _ := filepath.Glob(filepath.Join(dir, "versions", ".tmp-*"))
	for _, t := range tmps {
		_ = os.Remove(t)
	}
	return s, nil
}

// Close releases the lock file.
func (s *FileStore) Close() error { return s.lock.Close() }

func (s *FileStore) versionPath(n int64) string {
	return filepath.Join(s.dir, "versions", fmt.Sprintf("%08d.json", n))
}

// numbers lists the stored version numbers, ascending.
func (s *FileStore) numbers() ([]int64, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "versions"))
	if err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	var ns []int64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		n, err := strconv.ParseInt(name, 10, 64)
		if err != nil || n < 1 {
			continue
		}
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns, nil
}

func (s *FileStore) latest() (int64, error) {
	ns, err := s.numbers()
	if err != nil || len(ns) == 0 {
		return 0, err
	}
	return ns[len(ns)-1], nil
}

func (s *FileStore) read(n int64) (Entry, error) {
	b, err := os.ReadFile(s.versionPath(n))
	if errors.Is(err, fs.ErrNotExist) {
		return Entry{}, fmt.Errorf("version %d: %w", n, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("file store: %w", err)
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return Entry{}, fmt.Errorf("file store: version %d: %w", n, err)
	}
	if e.Number != n {
		return Entry{}, fmt.Errorf("file store: version file %d holds version %d", n, e.Number)
	}
	return e, nil
}

// Current implements Store.
func (s *FileStore) Current(ctx context.Context) (Entry, error) {
	n, err := s.latest()
	if err != nil {
		return Entry{}, err
	}
	if n == 0 {
		return emptyEntry(), nil
	}
	return s.read(n)
}

// Get implements Store.
func (s *FileStore) Get(ctx context.Context, n int64) (Entry, error) {
	if n < 1 {
		return Entry{}, fmt.Errorf("version %d: %w", n, ErrNotFound)
	}
	return s.read(n)
}

// History implements Store.
func (s *FileStore) History(ctx context.Context) ([]Version, error) {
	ns, err := s.numbers()
	if err != nil {
		return nil, err
	}
	out := make([]Version, 0, len(ns))
	for i := len(ns) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		e, err := s.read(ns[i])
		if err != nil {
			return nil, err
		}
		out = append(out, e.Version)
	}
	return out, nil
}

// Put implements Store.
func (s *FileStore) Put(ctx context.Context, expected int64, t *routes.Table, author, message string) (Version, error) {
	if err := checkPut(expected, t); err != nil {
		return Version{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := flock(ctx, s.lock); err != nil {
		return Version{}, fmt.Errorf("file store: lock: %w", err)
	}
	defer func() { _ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN) }()

	cur, err := s.latest()
	if err != nil {
		return Version{}, err
	}
	if cur != expected {
		return Version{}, &ConflictError{Expected: expected, Current: cur}
	}
	e := newEntry(cur+1, t, author, message, s.now())
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return Version{}, fmt.Errorf("file store: %w", err)
	}
	if err := atomicfile.Write(s.versionPath(e.Number), append(b, '\n')); err != nil {
		return Version{}, fmt.Errorf("file store: %w", err)
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return e.Version, nil
}

// flock takes an exclusive lock, polling so ctx can cancel the wait.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Watch implements Store: it wakes on local Puts at once and polls for
// other processes' versions.
func (s *FileStore) Watch(ctx context.Context) (<-chan Version, error) {
	cur, err := s.Current(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan Version, 1)
	ch <- cur.Version
	go func() {
		defer close(ch)
		last := cur.Number
		ticker := time.NewTicker(s.poll)
		defer ticker.Stop()
		for {
			// Take the Put signal first, then look: a Put that completes
			// after this closes the channel we hold, and one that
			// completed before it (the rename happens before the close,
			// both under s.mu) is seen by latest. Looking first and taking
			// the signal after would miss a Put that lands in between,
			// until the next poll (up to a second late).
			s.mu.Lock()
			changed := s.changed
			s.mu.Unlock()
			n, err := s.latest()
			if err != nil || n <= last {
				select {
				case <-ctx.Done():
					return
				case <-ticker.C:
				case <-changed:
				}
				continue
			}
			e, err := s.read(n)
			if err != nil {
				continue
			}
			last = n
			select {
			case ch <- e.Version:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}
