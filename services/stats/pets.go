package stats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/petmesh/petmesh/internal/identity"
)

// DependencyError reports that a service stats depends on failed.
type DependencyError struct {
	Dependency string
	Err        error
}

func (e *DependencyError) Error() string { return fmt.Sprintf("%s: %v", e.Dependency, e.Err) }
func (e *DependencyError) Unwrap() error { return e.Err }

// PetCounts counts the pets known to the pets service by attribute.
// Empty attribute values are counted under "unknown".
type PetCounts struct {
	Total     int            `json:"total"`
	BySpecies map[string]int `json:"by_species"`
	ByBreed   map[string]int `json:"by_breed"`
	ByAge     map[string]int `json:"by_age"`
	BySize    map[string]int `json:"by_size"`
	ByStatus  map[string]int `json:"by_status"`
	ByState   map[string]int `json:"by_state"`
	FetchedAt time.Time      `json:"fetched_at"`
}

// pet is the part of the pets API's Pet that stats reads. Unknown fields
// are ignored: stats is a tolerant reader of the pets contract.
type pet struct {
	Species string `json:"species"`
	Breeds  struct {
		Primary string `json:"primary"`
	} `json:"breeds"`
	Age      string `json:"age"`
	Size     string `json:"size"`
	Status   string `json:"status"`
	Location struct {
		State string `json:"state"`
	} `json:"location"`
}

type petsPage struct {
	Pets       []pet  `json:"pets"`
	NextCursor string `json:"next_cursor"`
}

// Pets client limits.
const (
	petsPageSize    = 100
	petsMaxPages    = 10000
	petsMaxPageBody = 16 << 20
	petsFetchLimit  = 60 * time.Second
)

// PetsClient reads every pet from the pets API and caches the counts for
// a TTL. Concurrent callers share one fetch (singleflight). It is safe for
// concurrent use.
type PetsClient struct {
	base string
	// host, when set, is sent as the Host header (sidecar egress routing).
	host   string
	hc     *http.Client
	ttl    time.Duration
	now    func() time.Time
	logger *slog.Logger
	m      *metrics

	sf      singleflight.Group
	mu      sync.Mutex
	cached  *PetCounts
	expires time.Time
}

// Counts returns the cached counts, fetching them when the cache is older
// than the TTL. A failing pets API is reported as *DependencyError.
func (c *PetsClient) Counts(ctx context.Context) (*PetCounts, error) {
	c.mu.Lock()
	if c.cached != nil && c.now().Before(c.expires) {
		pc := c.cached
		c.mu.Unlock()
		return pc, nil
	}
	c.mu.Unlock()
	ch := c.sf.DoChan("pets", func() (any, error) {
		// The fetch outlives a caller that goes away: others may wait on it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), petsFetchLimit)
		defer cancel()
		pc, err := c.fetch(fctx)
		if err != nil {
			c.m.petsFetches.WithLabelValues("error").Inc()
			return nil, &DependencyError{Dependency: "pets", Err: err}
		}
		c.m.petsFetches.WithLabelValues("ok").Inc()
		c.mu.Lock()
		c.cached, c.expires = pc, c.now().Add(c.ttl)
		c.mu.Unlock()
		return pc, nil
	})
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for pets: %w", ctx.Err())
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*PetCounts), nil
	}
}

func (c *PetsClient) fetch(ctx context.Context) (*PetCounts, error) {
	pc := &PetCounts{
		BySpecies: map[string]int{}, ByBreed: map[string]int{}, ByAge: map[string]int{},
		BySize: map[string]int{}, ByStatus: map[string]int{}, ByState: map[string]int{},
	}
	seen := map[string]bool{}
	cursor := ""
	for page := 0; ; page++ {
		if page == petsMaxPages {
			return nil, fmt.Errorf("more than %d pages of pets", petsMaxPages)
		}
		p, err := c.page(ctx, cursor)
		if err != nil {
			return nil, err
		}
		for _, pt := range p.Pets {
			pc.Total++
			pc.BySpecies[orUnknown(pt.Species)]++
			pc.ByBreed[orUnknown(pt.Breeds.Primary)]++
			pc.ByAge[orUnknown(pt.Age)]++
			pc.BySize[orUnknown(pt.Size)]++
			pc.ByStatus[orUnknown(pt.Status)]++
			pc.ByState[orUnknown(pt.Location.State)]++
		}
		if p.NextCursor == "" {
			break
		}
		if seen[p.NextCursor] {
			return nil, fmt.Errorf("pets paging loops: cursor %q seen twice", p.NextCursor)
		}
		seen[p.NextCursor] = true
		cursor = p.NextCursor
	}
	pc.FetchedAt = c.now().UTC()
	return pc, nil
}

func (c *PetsClient) page(ctx context.Context, cursor string) (*petsPage, error) {
	q := url.Values{"limit": {fmt.Sprint(petsPageSize)}}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/pets?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if c.host != "" {
		req.Host = c.host
	}
	identity.SetHeaders(req.Header, identity.Identity{Subject: "stats", Roles: []string{identity.RoleViewer}})
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get pets: %w", err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, petsMaxPageBody)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(body, 512))
		return nil, fmt.Errorf("get pets: status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var p petsPage
	if err := json.NewDecoder(body).Decode(&p); err != nil {
		return nil, fmt.Errorf("decode pets page: %w", err)
	}
	return &p, nil
}

func orUnknown(s string) string {
	if s = strings.TrimSpace(s); s == "" {
		return "unknown"
	}
	return s
}

var _ error = (*DependencyError)(nil)

// isDependency reports whether err is a dependency failure.
func isDependency(err error) (*DependencyError, bool) {
	var de *DependencyError
	ok := errors.As(err, &de)
	return de, ok
}
