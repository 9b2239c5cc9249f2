package jwtauth

import (
	"container/list"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// RateLimiterConfig configures a keyed token-bucket limiter.
type RateLimiterConfig struct {
	// Burst is the bucket size: attempts allowed at once.
	Burst int
	// Per is the time to refill one token.
	Per time.Duration
	// MaxKeys bounds memory: when full, the least recently used bucket is
	// dropped (full buckets carry no state worth keeping, so idle keys go
	// first in practice).
	MaxKeys int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// RateLimiter is a token bucket per key (a username, a client IP) with a
// bounded number of keys. It is safe for concurrent use.
type RateLimiter struct {
	cfg RateLimiterConfig
	mu  sync.Mutex
	m   map[string]*list.Element
	lru *list.List // front = most recently used
}

type bucket struct {
	key    string
	tokens float64
	last   time.Time
}

// NewRateLimiter validates cfg and returns a limiter.
func NewRateLimiter(cfg RateLimiterConfig) (*RateLimiter, error) {
	if cfg.Burst < 1 {
		return nil, fmt.Errorf("rate limiter: burst %d: want at least 1", cfg.Burst)
	}
	if cfg.Per <= 0 {
		return nil, fmt.Errorf("rate limiter: refill period %s: must be positive", cfg.Per)
	}
	if cfg.MaxKeys < 1 {
		return nil, errors.New("rate limiter: max keys must be at least 1")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &RateLimiter{cfg: cfg, m: make(map[string]*list.Element), lru: list.New()}, nil
}

// Allow takes one token from key's bucket. When the bucket is empty it
// returns false and how long until a token is available.
func (l *RateLimiter) Allow(key string) (bool, time.Duration) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var b *bucket
	if e, ok := l.m[key]; ok {
		l.lru.MoveToFront(e)
		b = e.Value.(*bucket)
		if elapsed := now.Sub(b.last); elapsed > 0 {
			b.tokens = math.Min(float64(l.cfg.Burst), b.tokens+float64(elapsed)/float64(l.cfg.Per))
		}
		b.last = now
	} else {
		if l.lru.Len() >= l.cfg.MaxKeys {
			old := l.lru.Back()
			l.lru.Remove(old)
			delete(l.m, old.Value.(*bucket).key)
		}
		b = &bucket{key: key, tokens: float64(l.cfg.Burst), last: now}
		l.m[key] = l.lru.PushFront(b)
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) * float64(l.cfg.Per))
	return false, wait
}

// Len returns the number of tracked keys.
func (l *RateLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
