// Package petctl is the command-line client of the control-plane API
// (controlplane/cmd/petctl): route tables, canary weights, history, diff,
// rollback, proxies and services.
//
// Exit codes: 0 success; 1 usage error; 2 the route table or request was
// rejected by validation (400); 3 version conflict (409, 428); 4
// authentication or authorisation failure (401, 403); 5 the API is
// unreachable or any other failure.
package petctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"
)

// Exit codes.
const (
	ExitOK         = 0
	ExitUsage      = 1
	ExitValidation = 2
	ExitConflict   = 3
	ExitAuth       = 4
	ExitOther      = 5
)

// DefaultAPI is the API base URL when PETMESH_API is unset.
const DefaultAPI = "http://127.0.0.1:18080"

const usage = `usage: petctl [-api URL] [-token TOKEN] [-o table|json] COMMAND

commands:
  routes get                          show the current route table and its version
  routes apply -f FILE [-m MSG]       store FILE (YAML or JSON) as the next version
  routes validate -f FILE [-path P] [-method M] [-header k=v]...
                                      dry run: errors, resource diff, where a sample request goes
  routes set-weights ROUTE subset=weight... [-m MSG]
                                      canary weights, e.g. set-weights pets v1=90 v2=10
  routes history                      list versions
  routes diff A B                     diff two versions
  routes rollback N                   store version N's table as the next version
  proxies                             connected proxies and their xDS status
  services                            registry: services and instances

environment: PETMESH_API (default http://127.0.0.1:18080), PETMESH_TOKEN (bearer token)
exit codes: 0 ok, 1 usage, 2 validation rejected, 3 version conflict, 4 auth, 5 unreachable/other
`

// exitError carries an exit code.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, args...)}
}

type cli struct {
	api    string
	token  string
	output string
	hc     *http.Client
	stdout io.Writer
	stderr io.Writer
}

// Run runs petctl with args (without the program name) and returns the
// exit code.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("petctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	api := getenv("PETMESH_API")
	if api == "" {
		api = DefaultAPI
	}
	fs.StringVar(&c.api, "api", api, "API base URL (PETMESH_API)")
	fs.StringVar(&c.token, "token", getenv("PETMESH_TOKEN"), "bearer token (PETMESH_TOKEN)")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
	timeout := fs.Duration("timeout", 30*time.Second, "request timeout")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return ExitOK
		}
		fmt.Fprintf(stderr, "petctl: %v\n%s", err, usage)
		return ExitUsage
	}
	c.hc = &http.Client{Timeout: *timeout}
	err := c.run(ctx, fs.Args())
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(stderr, "petctl:", ee.msg)
		}
		if ee.code == ExitUsage {
			fmt.Fprint(stderr, usage)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "petctl:", err)
	return ExitOther
}

func (c *cli) run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fail(ExitUsage, "a command is required")
	}
	if c.output != "table" && c.output != "json" {
		return fail(ExitUsage, "-o: must be table or json, got %q", c.output)
	}
	switch args[0] {
	case "routes":
		if len(args) < 2 {
			return fail(ExitUsage, "routes: a subcommand is required")
		}
		sub, rest := args[1], args[2:]
		switch sub {
		case "get":
			return c.routesGet(ctx, rest)
		case "apply":
			return c.routesApply(ctx, rest)
		case "validate":
			return c.routesValidate(ctx, rest)
		case "set-weights":
			return c.setWeights(ctx, rest)
		case "history":
			return c.history(ctx, rest)
		case "diff":
			return c.diff(ctx, rest)
		case "rollback":
			return c.rollback(ctx, rest)
		}
		return fail(ExitUsage, "routes: unknown subcommand %q", sub)
	case "proxies":
		return c.proxies(ctx, args[1:])
	case "services":
		return c.services(ctx, args[1:])
	case "help":
		fmt.Fprint(c.stdout, usage)
		return nil
	}
	return fail(ExitUsage, "unknown command %q", args[0])
}

// parse parses flags anywhere among positional arguments.
func (c *cli) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.output, "o", c.output, "output: table or json")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, fail(ExitUsage, "%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if c.output != "table" && c.output != "json" {
		return nil, fail(ExitUsage, "-o: must be table or json, got %q", c.output)
	}
	return pos, nil
}

// apiError is the API's JSON error body.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
	Errors []struct {
		Field   string `json:"field"`
		Message string `json:"message"`
		Line    int    `json:"line"`
	} `json:"errors"`
}

// do sends a request and decodes a 2xx JSON answer into out (raw bytes
// are returned too). Failures become exit errors by status.
func (c *cli) do(ctx context.Context, method, path string, hdr http.Header, body []byte, out any) ([]byte, error) {
	u := strings.TrimRight(c.api, "/") + path
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fail(ExitUsage, "bad API URL %q: %v", c.api, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fail(ExitOther, "control plane unreachable at %s: %v", c.api, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fail(ExitOther, "read response: %v", err)
	}
	if resp.StatusCode/100 == 2 {
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				return nil, fail(ExitOther, "decode response: %v", err)
			}
		}
		return b, nil
	}
	var ae apiError
	_ = json.Unmarshal(b, &ae)
	msg := ae.Error.Message
	if msg == "" {
		msg = strings.TrimSpace(string(b))
	}
	if ae.Error.Field != "" && len(ae.Errors) == 0 {
		msg = ae.Error.Field + ": " + msg
	}
	code := ExitOther
	switch resp.StatusCode {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType:
		code = ExitValidation
	case http.StatusConflict, http.StatusPreconditionRequired, http.StatusPreconditionFailed:
		code = ExitConflict
	case http.StatusUnauthorized, http.StatusForbidden:
		code = ExitAuth
	}
	if len(ae.Errors) > 0 {
		var sb strings.Builder
		fmt.Fprintf(&sb, "rejected (%d error(s)):", len(ae.Errors))
		for _, e := range ae.Errors {
			fmt.Fprintf(&sb, "\n  %s: %s", e.Field, e.Message)
			if e.Line > 0 {
				fmt.Fprintf(&sb, " (line %d)", e.Line)
			}
		}
		msg = sb.String()
	}
	return nil, fail(code, "%s %s: %d %s", method, path, resp.StatusCode, msg)
}

// version is the API's version object.
type version struct {
	Number  int64     `json:"version"`
	Time    time.Time `json:"time"`
	Author  string    `json:"author"`
	Message string    `json:"message"`
	Hash    string    `json:"hash"`
}

func (c *cli) printJSON(b []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		_, err = c.stdout.Write(b)
		return err
	}
	buf.WriteByte('\n')
	_, err := buf.WriteTo(c.stdout)
	return err
}

func (c *cli) routesGet(ctx context.Context, args []string) error {
	if _, err := c.parse(flag.NewFlagSet("routes get", flag.ContinueOnError), args); err != nil {
		return err
	}
	var resp struct {
		version
		Table json.RawMessage `json:"table"`
	}
	b, err := c.do(ctx, http.MethodGet, "/v1/routes", nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	var tbl any
	if err := json.Unmarshal(resp.Table, &tbl); err != nil {
		return fail(ExitOther, "decode table: %v", err)
	}
	y, err := yaml.Marshal(tbl)
	if err != nil {
		return fail(ExitOther, "render table: %v", err)
	}
	fmt.Fprintf(c.stdout, "# version %d by %s at %s: %s\n%s", resp.Number, resp.Author, resp.Time.Format(time.RFC3339), resp.Message, y)
	return nil
}

func (c *cli) currentVersion(ctx context.Context) (int64, error) {
	var cur version
	if _, err := c.do(ctx, http.MethodGet, "/v1/routes", nil, nil, &cur); err != nil {
		return 0, err
	}
	return cur.Number, nil
}

func (c *cli) routesApply(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("routes apply", flag.ContinueOnError)
	file := fs.String("f", "", "route table file (YAML or JSON)")
	msg := fs.String("m", "", "version message")
	if _, err := c.parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fail(ExitUsage, "routes apply: -f FILE is required")
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		return fail(ExitUsage, "routes apply: %v", err)
	}
	cur, err := c.currentVersion(ctx)
	if err != nil {
		return err
	}
	hdr := http.Header{}
	hdr.Set("Content-Type", "application/yaml")
	hdr.Set("If-Match", strconv.FormatInt(cur, 10))
	path := "/v1/routes"
	if *msg != "" {
		path += "?message=" + url.QueryEscape(*msg)
	}
	var v version
	b, err := c.do(ctx, http.MethodPut, path, hdr, data, &v)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	fmt.Fprintf(c.stdout, "applied: version %d (was %d)\n", v.Number, cur)
	return nil
}

// multi is a repeatable flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func (c *cli) routesValidate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("routes validate", flag.ContinueOnError)
	file := fs.String("f", "", "route table file (YAML or JSON)")
	path := fs.String("path", "", "sample request path")
	method := fs.String("method", "GET", "sample request method")
	var headers multi
	fs.Var(&headers, "header", "sample request header name=value (repeatable)")
	if _, err := c.parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fail(ExitUsage, "routes validate: -f FILE is required")
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		return fail(ExitUsage, "routes validate: %v", err)
	}
	hdr := http.Header{}
	body := data
	if *path != "" {
		var tbl any
		if err := yaml.Unmarshal(data, &tbl); err != nil {
			return fail(ExitValidation, "routes validate: %s: %v", *file, err)
		}
		sample := map[string]any{"method": *method, "path": *path}
		hs := map[string]string{}
		for _, h := range headers {
			k, v, ok := strings.Cut(h, "=")
			if !ok {
				return fail(ExitUsage, "-header: want name=value, got %q", h)
			}
			hs[k] = v
		}
		if len(hs) > 0 {
			sample["headers"] = hs
		}
		body, err = json.Marshal(map[string]any{"table": tbl, "sample": sample})
		if err != nil {
			return fail(ExitUsage, "routes validate: %v", err)
		}
	} else {
		hdr.Set("Content-Type", "application/yaml")
	}
	var resp struct {
		BaseVersion int64 `json:"base_version"`
		Diff        struct {
			Unified  string `json:"unified"`
			Routes   []struct{ Name, Change string }
			Services []struct{ Name, Change string }
		} `json:"diff"`
		Resources []struct {
			Node    string `json:"node"`
			Error   string `json:"error"`
			Changes []struct {
				Type, Name, Change string
			} `json:"changes"`
		} `json:"resources"`
		Sample *struct {
			Matched        bool   `json:"matched"`
			Route          string `json:"route"`
			Auth           string `json:"auth"`
			DirectResponse int    `json:"direct_response"`
			Clusters       []struct {
				Cluster string `json:"cluster"`
				Weight  int    `json:"weight"`
			} `json:"clusters"`
		} `json:"sample"`
	}
	b, err := c.do(ctx, http.MethodPost, "/v1/routes:validate", hdr, body, &resp)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	fmt.Fprintf(c.stdout, "valid (compared with version %d)\n", resp.BaseVersion)
	for _, r := range resp.Diff.Routes {
		fmt.Fprintf(c.stdout, "route %s: %s\n", r.Name, r.Change)
	}
	for _, s := range resp.Diff.Services {
		fmt.Fprintf(c.stdout, "service %s: %s\n", s.Name, s.Change)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tTYPE\tRESOURCE\tCHANGE")
	for _, n := range resp.Resources {
		if n.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\terror: %s\n", n.Node, n.Error)
		}
		for _, ch := range n.Changes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Node, ch.Type, ch.Name, ch.Change)
		}
	}
	_ = tw.Flush()
	if s := resp.Sample; s != nil {
		switch {
		case !s.Matched:
			fmt.Fprintf(c.stdout, "sample %s %s: no route matches (404)\n", *method, *path)
		case s.DirectResponse != 0:
			fmt.Fprintf(c.stdout, "sample %s %s: route %s (%s) → direct response %d\n", *method, *path, s.Route, s.Auth, s.DirectResponse)
		default:
			parts := make([]string, 0, len(s.Clusters))
			for _, cl := range s.Clusters {
				parts = append(parts, fmt.Sprintf("%s (%d%%)", cl.Cluster, cl.Weight))
			}
			fmt.Fprintf(c.stdout, "sample %s %s: route %s (%s) → %s\n", *method, *path, s.Route, s.Auth, strings.Join(parts, ", "))
		}
	}
	return nil
}

func (c *cli) setWeights(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("routes set-weights", flag.ContinueOnError)
	msg := fs.String("m", "", "version message")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return fail(ExitUsage, "routes set-weights: ROUTE and at least one subset=weight are required")
	}
	weights := map[string]int{}
	for _, kv := range pos[1:] {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.Atoi(v)
		if !ok || k == "" || err != nil {
			return fail(ExitUsage, "routes set-weights: want subset=weight, got %q", kv)
		}
		weights[k] = n
	}
	cur, err := c.currentVersion(ctx)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]any{"weights": weights, "message": *msg})
	hdr := http.Header{}
	hdr.Set("If-Match", strconv.FormatInt(cur, 10))
	var v version
	b, err := c.do(ctx, http.MethodPut, "/v1/routes/"+url.PathEscape(pos[0])+"/weights", hdr, body, &v)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	fmt.Fprintf(c.stdout, "applied: version %d: %s\n", v.Number, v.Message)
	return nil
}

func (c *cli) history(ctx context.Context, args []string) error {
	if _, err := c.parse(flag.NewFlagSet("routes history", flag.ContinueOnError), args); err != nil {
		return err
	}
	var resp struct {
		Versions []version `json:"versions"`
	}
	b, err := c.do(ctx, http.MethodGet, "/v1/versions", nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tTIME\tAUTHOR\tMESSAGE")
	for _, v := range resp.Versions {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", v.Number, v.Time.Format(time.RFC3339), v.Author, v.Message)
	}
	return tw.Flush()
}

func (c *cli) diff(ctx context.Context, args []string) error {
	pos, err := c.parse(flag.NewFlagSet("routes diff", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fail(ExitUsage, "routes diff: two versions are required")
	}
	for _, p := range pos {
		if n, err := strconv.ParseInt(p, 10, 64); err != nil || n < 1 {
			return fail(ExitUsage, "routes diff: %q is not a version number", p)
		}
	}
	var resp struct {
		Unified  string `json:"unified"`
		Routes   []struct{ Name, Change string }
		Services []struct{ Name, Change string }
	}
	b, err := c.do(ctx, http.MethodGet, "/v1/versions/"+pos[0]+"/diff/"+pos[1], nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	for _, r := range resp.Routes {
		fmt.Fprintf(c.stdout, "route %s: %s\n", r.Name, r.Change)
	}
	for _, s := range resp.Services {
		fmt.Fprintf(c.stdout, "service %s: %s\n", s.Name, s.Change)
	}
	if resp.Unified == "" {
		fmt.Fprintln(c.stdout, "no differences")
		return nil
	}
	fmt.Fprint(c.stdout, resp.Unified)
	return nil
}

func (c *cli) rollback(ctx context.Context, args []string) error {
	pos, err := c.parse(flag.NewFlagSet("routes rollback", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fail(ExitUsage, "routes rollback: one version is required")
	}
	n, err := strconv.ParseInt(pos[0], 10, 64)
	if err != nil || n < 1 {
		return fail(ExitUsage, "routes rollback: %q is not a version number", pos[0])
	}
	cur, err := c.currentVersion(ctx)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]int64{"version": n})
	hdr := http.Header{}
	hdr.Set("If-Match", strconv.FormatInt(cur, 10))
	var v version
	b, err := c.do(ctx, http.MethodPost, "/v1/rollback", hdr, body, &v)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	fmt.Fprintf(c.stdout, "rolled back: version %d has the table of version %d\n", v.Number, n)
	return nil
}

func (c *cli) proxies(ctx context.Context, args []string) error {
	if _, err := c.parse(flag.NewFlagSet("proxies", flag.ContinueOnError), args); err != nil {
		return err
	}
	var resp struct {
		Proxies []struct {
			ID           string `json:"id"`
			Kind         string `json:"kind"`
			Service      string `json:"service"`
			Connected    bool   `json:"connected"`
			RouteVersion int64  `json:"route_version"`
			Synced       bool   `json:"synced"`
			Stale        bool   `json:"stale"`
			Error        string `json:"error"`
			Types        []struct {
				Type     string `json:"type"`
				LastNack *struct {
					Message string `json:"message"`
				} `json:"last_nack"`
			} `json:"types"`
		} `json:"proxies"`
	}
	b, err := c.do(ctx, http.MethodGet, "/v1/proxies", nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tKIND\tSERVICE\tCONNECTED\tROUTE-VERSION\tSYNCED\tSTALE\tLAST-NACK")
	for _, p := range resp.Proxies {
		var nacks []string
		for _, t := range p.Types {
			if t.LastNack != nil {
				nacks = append(nacks, t.Type+": "+t.LastNack.Message)
			}
		}
		if p.Error != "" {
			nacks = append(nacks, "build: "+p.Error)
		}
		sort.Strings(nacks)
		last := "-"
		if len(nacks) > 0 {
			last = strings.Join(nacks, "; ")
		}
		svc := p.Service
		if svc == "" {
			svc = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%d\t%t\t%t\t%s\n", p.ID, p.Kind, svc, p.Connected, p.RouteVersion, p.Synced, p.Stale, last)
	}
	return tw.Flush()
}

func (c *cli) services(ctx context.Context, args []string) error {
	if _, err := c.parse(flag.NewFlagSet("services", flag.ContinueOnError), args); err != nil {
		return err
	}
	var resp struct {
		Services []struct {
			Name      string `json:"name"`
			Instances []struct {
				ID      string `json:"id"`
				Address string `json:"address"`
				Port    int    `json:"port"`
				Version string `json:"version"`
				Health  string `json:"health"`
			} `json:"instances"`
		} `json:"services"`
	}
	b, err := c.do(ctx, http.MethodGet, "/v1/services", nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(b)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tADDRESS\tVERSION\tHEALTH")
	for _, s := range resp.Services {
		for _, i := range s.Instances {
			v := i.Version
			if v == "" {
				v = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s\t%s\n", s.Name, i.ID, i.Address, i.Port, v, i.Health)
		}
	}
	return tw.Flush()
}
