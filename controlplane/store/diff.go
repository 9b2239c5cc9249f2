package store

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/petmesh/petmesh/controlplane/routes"
)

// Change kinds.
const (
	Added   = "added"
	Removed = "removed"
	Changed = "changed"
	Moved   = "moved" // same content, different position (order matters)
)

// Change is one changed route or service.
type Change struct {
	Name   string `json:"name"`
	Change string `json:"change"`
}

// Diff compares two versions.
type Diff struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
	// Unified is a unified diff of the canonical YAML of both tables.
	Unified  string   `json:"unified"`
	Routes   []Change `json:"routes"`
	Services []Change `json:"services"`
}

// Compare diffs two entries.
func Compare(a, b Entry) Diff {
	d := Diff{From: a.Number, To: b.Number, Routes: []Change{}, Services: []Change{}}
	d.Unified = Unified(fmt.Sprintf("version %d", a.Number), fmt.Sprintf("version %d", b.Number), string(a.Table.YAML()), string(b.Table.YAML()))

	ra, rb := routeIndex(a.Table), routeIndex(b.Table)
	for _, r := range b.Table.Routes {
		old, ok := ra[r.Name]
		switch {
		case !ok:
			d.Routes = append(d.Routes, Change{r.Name, Added})
		case jsonOf(old.r) != jsonOf(r):
			d.Routes = append(d.Routes, Change{r.Name, Changed})
		case old.i != rb[r.Name].i:
			d.Routes = append(d.Routes, Change{r.Name, Moved})
		}
	}
	for _, r := range a.Table.Routes {
		if _, ok := rb[r.Name]; !ok {
			d.Routes = append(d.Routes, Change{r.Name, Removed})
		}
	}
	names := map[string]bool{}
	for n := range a.Table.Services {
		names[n] = true
	}
	for n := range b.Table.Services {
		names[n] = true
	}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		sa, inA := a.Table.Services[n]
		sb, inB := b.Table.Services[n]
		switch {
		case !inA:
			d.Services = append(d.Services, Change{n, Added})
		case !inB:
			d.Services = append(d.Services, Change{n, Removed})
		case jsonOf(sa) != jsonOf(sb):
			d.Services = append(d.Services, Change{n, Changed})
		}
	}
	return d
}

type indexed struct {
	i int
	r routes.Route
}

func routeIndex(t *routes.Table) map[string]indexed {
	m := make(map[string]indexed, len(t.Routes))
	for i, r := range t.Routes {
		m[r.Name] = indexed{i, r}
	}
	return m
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Unified returns a unified diff (3 lines of context) of two texts, or ""
// when they are equal.
func Unified(nameA, nameB, a, b string) string {
	if a == b {
		return ""
	}
	la, lb := splitLines(a), splitLines(b)
	ops := lineDiff(la, lb)
	const ctx = 3
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", nameA, nameB)
	// Group ops into hunks.
	for i := 0; i < len(ops); {
		if ops[i].kind == ' ' {
			i++
			continue
		}
		start := max(i-ctx, 0)
		end := i
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			// Run of equal lines: end the hunk if it is long enough.
			j := end
			for j < len(ops) && ops[j].kind == ' ' {
				j++
			}
			if j == len(ops) || j-end > 2*ctx {
				end = min(end+ctx, len(ops))
				break
			}
			end = j
		}
		aStart, bStart := ops[start].ai, ops[start].bi
		var aN, bN int
		for _, o := range ops[start:end] {
			if o.kind != '+' {
				aN++
			}
			if o.kind != '-' {
				bN++
			}
		}
		fmt.Fprintf(&out, "@@ -%d,%d +%d,%d @@\n", aStart+1, aN, bStart+1, bN)
		for _, o := range ops[start:end] {
			out.WriteByte(o.kind)
			out.WriteString(o.text)
			out.WriteByte('\n')
		}
		i = end
	}
	return out.String()
}

func splitLines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

type op struct {
	kind   byte // ' ', '-', '+'
	text   string
	ai, bi int // line index in a and b at this op
}

// lineDiff is a longest-common-subsequence line diff; route tables are
// small (the parser caps them at 1 MiB), and very long inputs fall back
// to "replace everything".
func lineDiff(a, b []string) []op {
	if len(a)*len(b) > 4_000_000 {
		var ops []op
		for i, l := range a {
			ops = append(ops, op{'-', l, i, 0})
		}
		for j, l := range b {
			ops = append(ops, op{'+', l, len(a), j})
		}
		return ops
	}
	n, m := len(a), len(b)
	lcs := make([][]int32, n+1)
	for i := range lcs {
		lcs[i] = make([]int32, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var ops []op
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			ops = append(ops, op{' ', a[i], i, j})
			i++
			j++
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', a[i], i, j})
			i++
		default:
			ops = append(ops, op{'+', b[j], i, j})
			j++
		}
	}
	return ops
}
