package observability

import (
	"regexp"
	"sort"
	"strings"
)

// constantRHS matches a constant scalar expression: numbers (with
// exponents), arithmetic operators, parentheses and spaces, such as
// "0.05", "26 * 3600" or "(1 - 0.99)".
var constantRHS = regexp.MustCompile(`^[\s0-9.eE+\-*/%^()]+$`)

// SplitThreshold splits an alerting expression of the form "E op C" into
// E and "op C", where op is a comparison operator (==, !=, >, <, >=, <=)
// at the top level of the expression and C is a constant (a number or
// arithmetic over numbers). It is how the end-to-end test tells an alert
// that is empty by design while the mesh is healthy (its threshold
// filters every sample out) from a broken one: E must still return data
// from the running mesh. ok is false for every other form, including a
// "bool" comparison, a comparison nested in parentheses or an aggregation,
// a top-level and/or/unless, and a non-constant right-hand side; such
// expressions must return data as they are.
func SplitThreshold(expr string) (base, threshold string, ok bool) {
	ops := topLevelOps(expr)
	if len(ops) == 0 {
		return "", "", false
	}
	for _, o := range ops {
		if o.setOp {
			// "a > 1 or b": the result is not a threshold filter of one
			// expression.
			return "", "", false
		}
	}
	last := ops[len(ops)-1]
	base = strings.TrimSpace(expr[:last.pos])
	rhs := strings.TrimSpace(expr[last.pos+len(last.op):])
	if base == "" || rhs == "" || strings.HasPrefix(rhs, "bool") || !constantRHS.MatchString(rhs) {
		return "", "", false
	}
	return base, last.op + " " + rhs, true
}

type opAt struct {
	pos   int
	op    string
	setOp bool // and, or, unless
}

// topLevelOps returns the comparison and set operators of expr that are
// outside parentheses, label matchers ({...}), subqueries and ranges
// ([...]) and string literals.
func topLevelOps(expr string) []opAt {
	var out []opAt
	depth := 0
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			// Skip the string literal (backslash escapes except in raw
			// strings).
			for i++; i < len(expr) && expr[i] != c; i++ {
				if c != '`' && expr[i] == '\\' {
					i++
				}
			}
		case c == '#':
			// A comment runs to the end of the line.
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '(' || c == '{' || c == '[':
			depth++
		case c == ')' || c == '}' || c == ']':
			depth--
		case depth != 0:
		case isIdentStart(c):
			j := i
			for j < len(expr) && isIdent(expr[j]) {
				j++
			}
			switch w := strings.ToLower(expr[i:j]); w {
			case "and", "or", "unless":
				out = append(out, opAt{pos: i, op: w, setOp: true})
			}
			i = j - 1
		case c == '=' || c == '!' || c == '>' || c == '<':
			op := string(c)
			if i+1 < len(expr) && expr[i+1] == '=' {
				op += "="
			}
			if op == "=" || op == "!" {
				continue // not a comparison (matchers are inside braces)
			}
			out = append(out, opAt{pos: i, op: op})
			i += len(op) - 1
		}
	}
	return out
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdent(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

// grouping matches a PromQL grouping or matching clause and its label
// list: by (...), without (...), on (...), ignoring (...), group_left
// (...), group_right (...).
var grouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)`)

// GroupingLabels returns the labels expr groups or matches by, sorted and
// without duplicates. A label that no series has makes such a clause
// silently group everything under the empty value, so the end-to-end test
// checks that each one exists.
func GroupingLabels(expr string) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range grouping.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !seen[l] {
				seen[l] = true
				out = append(out, l)
			}
		}
	}
	sort.Strings(out)
	return out
}
