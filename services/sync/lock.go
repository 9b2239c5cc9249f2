package syncsvc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// ErrLocked reports that another executor holds the lock.
var ErrLocked = errors.New("another sync executor holds the lock")

// Locker elects the single executor of sync runs among instances.
// Implementations are safe for concurrent use.
type Locker interface {
	// TryLock takes the lock without waiting (beyond a short bounded
	// check) and returns ErrLocked when another holder has it.
	TryLock(ctx context.Context) (Lease, error)
}

// Lease is a held lock.
type Lease interface {
	// Lost is closed if the lock is lost while held (e.g. the Consul
	// session was invalidated); the run must stop then.
	Lost() <-chan struct{}
	// Release gives the lock up. It is called once.
	Release(ctx context.Context) error
}

// FileLocker is an advisory flock(2) on a file. The kernel releases it
// when the holding process dies (kill -9 included), so a crashed executor
// never blocks the next one. It coordinates processes on one machine (or
// sharing a filesystem with working flock); use ConsulLocker across
// machines.
type FileLocker struct{ Path string }

var _ Locker = (*FileLocker)(nil)

// TryLock implements Locker.
func (l *FileLocker) TryLock(context.Context) (Lease, error) {
	if err := os.MkdirAll(filepath.Dir(l.Path), 0o755); err != nil {
		return nil, fmt.Errorf("lock dir: %w", err)
	}
	f, err := os.OpenFile(l.Path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("flock %s: %w", l.Path, err)
	}
	// Leave a note for operators; the lock is the flock, not the content.
	_ = f.Truncate(0)
	_, _ = fmt.Fprintf(f, "pid %d since %s\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	return &fileLease{f: f}, nil
}

type fileLease struct{ f *os.File }

func (l *fileLease) Lost() <-chan struct{} { return nil } // a flock is never taken away

func (l *fileLease) Release(context.Context) error {
	err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	return errors.Join(err, l.f.Close())
}

// ConsulLocker is a Consul session lock on a KV key. The session has a
// TTL renewed while held, so a crashed holder loses the lock after the
// TTL (plus Consul's lock delay).
type ConsulLocker struct {
	Client *consul.Client
	// Key is the KV key, e.g. petmesh/sync/leader.
	Key string
	// Holder is written as the key's value (the instance name).
	Holder string
	// SessionTTL defaults to 15s.
	SessionTTL time.Duration
}

var _ Locker = (*ConsulLocker)(nil)

// TryLock implements Locker. It waits at most about 300ms for a held
// lock.
func (l *ConsulLocker) TryLock(ctx context.Context) (Lease, error) {
	ttl := l.SessionTTL
	if ttl <= 0 {
		ttl = 15 * time.Second
	}
	lock, err := l.Client.LockOpts(&consul.LockOptions{
		Key:          l.Key,
		Value:        []byte(l.Holder),
		SessionName:  "petmesh-sync " + l.Holder,
		SessionTTL:   ttl.String(),
		LockTryOnce:  true,
		LockWaitTime: 300 * time.Millisecond,
	})
	if err != nil {
		return nil, fmt.Errorf("consul lock: %w", err)
	}
	lost, err := lock.Lock(ctx.Done())
	if err != nil {
		return nil, fmt.Errorf("consul lock %s: %w", l.Key, err)
	}
	if lost == nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, ErrLocked
	}
	return &consulLease{lock: lock, lost: lost}, nil
}

type consulLease struct {
	lock *consul.Lock
	lost <-chan struct{}
}

func (l *consulLease) Lost() <-chan struct{} { return l.lost }

func (l *consulLease) Release(context.Context) error {
	if err := l.lock.Unlock(); err != nil && !errors.Is(err, consul.ErrLockNotHeld) {
		return fmt.Errorf("consul unlock: %w", err)
	}
	return nil
}
