package jwtauth

import (
	"container/list"
	"sync"
	"time"
)

const cacheShards = 32

// verifyCache maps SHA-256(token) to verified claims. It is sharded to keep
// lock contention low on the hot path; each shard is an LRU bounded to its
// share of the total size, and every entry carries its own expiry
// (min(token exp, now+TTL)), checked on every hit.
type verifyCache struct {
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu  sync.Mutex
	m   map[[32]byte]*list.Element
	lru list.List // front = most recently used
}

type cacheEntry struct {
	key     [32]byte
	claims  *Claims
	expires time.Time
}

func newVerifyCache(size int) *verifyCache {
	c := &verifyCache{perShard: max(1, (size+cacheShards-1)/cacheShards)}
	for i := range c.shards {
		c.shards[i].m = make(map[[32]byte]*list.Element)
	}
	return c
}

func (c *verifyCache) shard(key [32]byte) *cacheShard { return &c.shards[key[0]%cacheShards] }

func (c *verifyCache) get(key [32]byte, now time.Time) (*Claims, bool) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if !ok {
		return nil, false
	}
	ent := e.Value.(*cacheEntry)
	if !now.Before(ent.expires) {
		s.lru.Remove(e)
		delete(s.m, key)
		return nil, false
	}
	s.lru.MoveToFront(e)
	return ent.claims, true
}

func (c *verifyCache) put(key [32]byte, claims *Claims, expires time.Time) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; ok {
		ent := e.Value.(*cacheEntry)
		ent.claims, ent.expires = claims, expires
		s.lru.MoveToFront(e)
		return
	}
	for s.lru.Len() >= c.perShard {
		old := s.lru.Back()
		s.lru.Remove(old)
		delete(s.m, old.Value.(*cacheEntry).key)
	}
	s.m[key] = s.lru.PushFront(&cacheEntry{key: key, claims: claims, expires: expires})
}

// len returns the number of entries (tests).
func (c *verifyCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}
