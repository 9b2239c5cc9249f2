// Package standin is a local stand-in for the Petfinder API v2, used by
// `make run` and by tests. It serves fixture animals in the documented
// response format behind the documented OAuth2 client-credentials flow,
// and injects faults (429 with Retry-After, 5xx, slow responses, dropped
// connections) on request so that clients can be tested against a real
// HTTP server.
//
// It implements: POST /v2/oauth2/token, GET /v2/animals (page, limit,
// sort=recent|-recent, after, before, type, status, organization) and
// GET /v2/animals/{id}. Admin endpoints live under /_standin/.
package standin

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Dev credentials accepted by default. They are not secrets: the stand-in
// only ever serves fixtures.
const (
	DefaultClientID     = "petmesh-dev"
	DefaultClientSecret = "petmesh-dev-secret"
)

// MaxLimit is the largest page size Petfinder accepts.
const MaxLimit = 100

// Fault is one injected failure. A request matching Path and Page
// consumes one Count and gets Delay, then Status (with Retry-After when
// set), or a dropped connection when Drop is set. Status 0 with a Delay
// only slows the request down.
type Fault struct {
	// Path is "animals" (default) or "token".
	Path string `json:"path,omitempty"`
	// Page restricts the fault to one page of /v2/animals; 0 means any.
	Page int `json:"page,omitempty"`
	// Status is the HTTP status to answer with (e.g. 429, 500, 503).
	Status int `json:"status,omitempty"`
	// RetryAfter is sent verbatim as the Retry-After header: seconds or
	// an HTTP date.
	RetryAfter string `json:"retry_after,omitempty"`
	// Delay (Go duration, e.g. "250ms") is waited before answering.
	Delay string `json:"delay,omitempty"`
	// Drop closes the connection without an answer (a network error).
	Drop bool `json:"drop,omitempty"`
	// Count is how many requests the fault applies to; -1 means forever,
	// 0 means once.
	Count int `json:"count"`
	// Fired counts the requests the fault has applied to.
	Fired int `json:"fired"`

	delay time.Duration
}

func (f *Fault) validate() error {
	switch f.Path {
	case "":
		f.Path = "animals"
	case "animals", "token":
	default:
		return fmt.Errorf("path: want animals or token, got %q", f.Path)
	}
	if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
		return fmt.Errorf("status: want 400..599, got %d", f.Status)
	}
	if f.Delay != "" {
		d, err := time.ParseDuration(f.Delay)
		if err != nil || d < 0 {
			return fmt.Errorf("delay: want a duration such as 250ms, got %q", f.Delay)
		}
		f.delay = d
	}
	if f.Status == 0 && f.delay == 0 && !f.Drop {
		return errors.New("status: a fault needs a status, a delay or drop")
	}
	if f.Count == 0 {
		f.Count = 1
	}
	if f.Count < -1 {
		return fmt.Errorf("count: want -1 (forever) or a positive number, got %d", f.Count)
	}
	if f.Page < 0 {
		return fmt.Errorf("page: want 0 (any) or a page number, got %d", f.Page)
	}
	return nil
}

// ParseFaults parses a JSON fault or array of faults.
func ParseFaults(s string) ([]*Fault, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var fs []*Fault
	if strings.HasPrefix(s, "[") {
		if err := json.Unmarshal([]byte(s), &fs); err != nil {
			return nil, fmt.Errorf("faults: %w", err)
		}
	} else {
		var f Fault
		if err := json.Unmarshal([]byte(s), &f); err != nil {
			return nil, fmt.Errorf("faults: %w", err)
		}
		fs = []*Fault{&f}
	}
	for i, f := range fs {
		if err := f.validate(); err != nil {
			return nil, fmt.Errorf("faults[%d].%w", i, err)
		}
	}
	return fs, nil
}

// Options configure a Server.
type Options struct {
	ClientID     string
	ClientSecret string
	// TokenTTL is the lifetime of issued tokens (Petfinder: 3600s).
	TokenTTL time.Duration
	Animals  []*Animal
	Faults   []*Fault
	// Now is the clock; time.Now when nil.
	Now    func() time.Time
	Logger *slog.Logger
}

// Stats counts requests, for tests and operators.
type Stats struct {
	TokenRequests  int `json:"token_requests"`
	AnimalRequests int `json:"animal_requests"`
	Unauthorized   int `json:"unauthorized"`
	FaultsFired    int `json:"faults_fired"`
	Animals        int `json:"animals"`
}

// Server is the stand-in. It is safe for concurrent use.
type Server struct {
	opts Options

	mu      sync.Mutex
	animals []*Animal // newest published first, then by id
	tokens  map[string]time.Time
	faults  []*Fault
	stats   Stats
	nextID  int64
}

// New returns a server holding opts.Animals.
func New(opts Options) *Server {
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = DefaultClientSecret
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, tokens: map[string]time.Time{}, faults: opts.Faults}
	s.animals = slices.Clone(opts.Animals)
	for _, a := range s.animals {
		s.nextID = max(s.nextID, a.ID)
	}
	s.sortAnimals()
	return s
}

func (s *Server) sortAnimals() {
	slices.SortStableFunc(s.animals, func(a, b *Animal) int {
		if c := b.published.Compare(a.published); c != 0 {
			return c
		}
		return int(a.ID - b.ID)
	})
}

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v2/oauth2/token", s.token)
	mux.HandleFunc("GET /v2/animals", s.listAnimals)
	mux.HandleFunc("GET /v2/animals/{id}", s.getAnimal)
	mux.HandleFunc("GET /_standin/faults", s.getFaults)
	mux.HandleFunc("POST /_standin/faults", s.addFaults)
	mux.HandleFunc("DELETE /_standin/faults", s.clearFaults)
	mux.HandleFunc("GET /_standin/stats", s.getStats)
	mux.HandleFunc("POST /_standin/animals:publish", s.publish)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
}

// Problem is Petfinder's error body (RFC 7807 problem+json).
type Problem struct {
	Type          string         `json:"type"`
	Status        int            `json:"status"`
	Title         string         `json:"title"`
	Detail        string         `json:"detail"`
	InvalidParams []InvalidParam `json:"invalid-params,omitempty"`
}

// InvalidParam names one bad request parameter.
type InvalidParam struct {
	In      string `json:"in"`
	Path    string `json:"path"`
	Message string `json:"message"`
}

func writeProblem(w http.ResponseWriter, status int, title, detail string, params ...InvalidParam) {
	code := fmt.Sprintf("ERR-%d", status)
	if status == http.StatusBadRequest {
		code = "ERR-00002"
	}
	b, _ := json.Marshal(Problem{
		Type:   "https://www.petfinder.example/developers/v2/docs/errors/" + code + "/",
		Status: status, Title: title, Detail: detail, InvalidParams: params,
	})
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeProblem(w, http.StatusInternalServerError, "Internal Server Error", "encoding failed")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// applyFault runs the first live fault matching path and page. It reports
// whether the request has been answered (or dropped).
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, path string, page int) bool {
	s.mu.Lock()
	var f Fault
	found := false
	for _, ff := range s.faults {
		if ff.Path != path || (ff.Page != 0 && ff.Page != page) || (ff.Count != -1 && ff.Fired >= ff.Count) {
			continue
		}
		ff.Fired++
		s.stats.FaultsFired++
		f, found = *ff, true
		break
	}
	s.mu.Unlock()
	if !found {
		return false
	}
	s.opts.Logger.InfoContext(r.Context(), "injecting fault", "path", path, "page", page, "status", f.Status, "delay", f.Delay, "drop", f.Drop)
	if f.delay > 0 {
		t := time.NewTimer(f.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
	}
	if f.Drop {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return true
			}
		}
		panic(http.ErrAbortHandler)
	}
	if f.Status == 0 {
		return false
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	writeProblem(w, f.Status, http.StatusText(f.Status), "injected fault")
	return true
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.stats.TokenRequests++
	s.mu.Unlock()
	if s.applyFault(w, r, "token", 0) {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		writeProblem(w, http.StatusBadRequest, "invalid_request", "malformed form body")
		return
	}
	id, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if u, p, ok := r.BasicAuth(); ok {
		id, _ = url.QueryUnescape(u)
		secret, _ = url.QueryUnescape(p)
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		writeProblem(w, http.StatusBadRequest, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server.")
		return
	}
	if id != s.opts.ClientID || secret != s.opts.ClientSecret {
		writeProblem(w, http.StatusUnauthorized, "invalid_client", "Client authentication failed")
		return
	}
	var b [24]byte
	_, _ = rand.Read(b[:])
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	s.mu.Lock()
	now := s.opts.Now()
	for t, exp := range s.tokens {
		if now.After(exp) {
			delete(s.tokens, t)
		}
	}
	s.tokens[tok] = now.Add(s.opts.TokenTTL)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type": "Bearer", "expires_in": int(s.opts.TokenTTL / time.Second), "access_token": tok,
	})
}

func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	s.mu.Lock()
	exp, known := s.tokens[strings.TrimSpace(tok)]
	valid := ok && known && s.opts.Now().Before(exp)
	if !valid {
		s.stats.Unauthorized++
	}
	s.mu.Unlock()
	if !valid {
		writeProblem(w, http.StatusUnauthorized, "Unauthorized", "Access token invalid or expired")
	}
	return valid
}

type query struct {
	page, limit   int
	sort          string
	after, before time.Time
	types         []string
	statuses      []string
	orgs          []string
}

func intParam(q url.Values, name string, def, lo, hi int, bad *[]InvalidParam) int {
	v := q.Get(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || (hi > 0 && n > hi) {
		msg := fmt.Sprintf("must be an integer >= %d", lo)
		if hi > 0 {
			msg = fmt.Sprintf("must be an integer between %d and %d", lo, hi)
		}
		*bad = append(*bad, InvalidParam{In: "query", Path: name, Message: msg})
		return def
	}
	return n
}

func listParam(q url.Values, name string) []string {
	var out []string
	for _, v := range q[name] {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, strings.ToLower(p))
			}
		}
	}
	return out
}

func parseQuery(q url.Values) (query, []InvalidParam) {
	var bad []InvalidParam
	out := query{
		page:  intParam(q, "page", 1, 1, 0, &bad),
		limit: intParam(q, "limit", 20, 1, MaxLimit, &bad),
		sort:  q.Get("sort"),
		types: listParam(q, "type"), statuses: listParam(q, "status"), orgs: listParam(q, "organization"),
	}
	switch out.sort {
	case "":
		out.sort = "recent"
	case "recent", "-recent":
	default:
		bad = append(bad, InvalidParam{In: "query", Path: "sort", Message: "the stand-in supports recent and -recent"})
	}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"after", &out.after}, {"before", &out.before}} {
		if v := q.Get(p.name); v != "" {
			t, err := ParseTime(v)
			if err != nil {
				bad = append(bad, InvalidParam{In: "query", Path: p.name, Message: "must be a valid ISO8601 date-time string (e.g. 2019-10-07T19:13:01+00:00)"})
			}
			*p.dst = t
		}
	}
	if len(out.statuses) == 0 {
		out.statuses = []string{"adoptable"}
	}
	for _, st := range out.statuses {
		if st != "adoptable" && st != "adopted" && st != "found" {
			bad = append(bad, InvalidParam{In: "query", Path: "status", Message: "must be adoptable, adopted or found"})
		}
	}
	return out, bad
}

func (q query) match(a *Animal) bool {
	if !q.after.IsZero() && !a.published.After(q.after) {
		return false
	}
	if !q.before.IsZero() && !a.published.Before(q.before) {
		return false
	}
	if len(q.types) > 0 && !slices.Contains(q.types, strings.ToLower(a.Type)) {
		return false
	}
	if !slices.Contains(q.statuses, strings.ToLower(a.Status)) {
		return false
	}
	if len(q.orgs) > 0 && !slices.Contains(q.orgs, strings.ToLower(a.OrganizationID)) {
		return false
	}
	return true
}

// Pagination is Petfinder's pagination object.
type Pagination struct {
	CountPerPage int                          `json:"count_per_page"`
	TotalCount   int                          `json:"total_count"`
	CurrentPage  int                          `json:"current_page"`
	TotalPages   int                          `json:"total_pages"`
	Links        map[string]map[string]string `json:"_links"`
}

// AnimalsResponse is the body of GET /v2/animals.
type AnimalsResponse struct {
	Animals    []*Animal  `json:"animals"`
	Pagination Pagination `json:"pagination"`
}

func (s *Server) listAnimals(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	s.mu.Lock()
	s.stats.AnimalRequests++
	s.mu.Unlock()
	q, bad := parseQuery(r.URL.Query())
	if s.applyFault(w, r, "animals", q.page) {
		return
	}
	if len(bad) > 0 {
		writeProblem(w, http.StatusBadRequest, "Invalid Request", "Invalid Parameter(s)", bad...)
		return
	}
	s.mu.Lock()
	var matched []*Animal
	for _, a := range s.animals {
		if q.match(a) {
			matched = append(matched, a)
		}
	}
	s.mu.Unlock()
	if q.sort == "-recent" {
		slices.Reverse(matched)
	}
	total := len(matched)
	pages := (total + q.limit - 1) / q.limit
	start := min((q.page-1)*q.limit, total)
	end := min(start+q.limit, total)
	resp := AnimalsResponse{
		Animals: matched[start:end],
		Pagination: Pagination{
			CountPerPage: q.limit, TotalCount: total, CurrentPage: q.page, TotalPages: pages,
			Links: map[string]map[string]string{},
		},
	}
	if resp.Animals == nil {
		resp.Animals = []*Animal{}
	}
	link := func(page int) map[string]string {
		v := r.URL.Query()
		v.Set("page", strconv.Itoa(page))
		return map[string]string{"href": "/v2/animals?" + v.Encode()}
	}
	if q.page > 1 && q.page <= pages+1 {
		resp.Pagination.Links["previous"] = link(q.page - 1)
	}
	if q.page < pages {
		resp.Pagination.Links["next"] = link(q.page + 1)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) getAnimal(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		writeProblem(w, http.StatusNotFound, "Not Found", "Not Found")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.animals {
		if a.ID == id {
			writeJSON(w, http.StatusOK, map[string]any{"animal": a})
			return
		}
	}
	writeProblem(w, http.StatusNotFound, "Not Found", "Not Found")
}

func (s *Server) getFaults(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fs := make([]Fault, 0, len(s.faults))
	for _, f := range s.faults {
		fs = append(fs, *f)
	}
	writeJSON(w, http.StatusOK, map[string]any{"faults": fs})
}

func (s *Server) addFaults(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "Invalid Request", "body too large")
		return
	}
	fs, err := ParseFaults(string(b))
	if err != nil || len(fs) == 0 {
		detail := "want a fault object or an array of them"
		if err != nil {
			detail = err.Error()
		}
		writeProblem(w, http.StatusBadRequest, "Invalid Request", detail)
		return
	}
	s.mu.Lock()
	s.faults = append(s.faults, fs...)
	s.mu.Unlock()
	s.getFaults(w, r)
}

func (s *Server) clearFaults(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) getStats(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	st := s.stats
	st.Animals = len(s.animals)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, st)
}

// publish adds count new adoptable animals published now, so that
// incremental syncs have something new to fetch.
func (s *Server) publish(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Count int `json:"count"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || body.Count < 1 || body.Count > 1000 {
		writeProblem(w, http.StatusBadRequest, "Invalid Request", "Invalid Parameter(s)", InvalidParam{In: "body", Path: "count", Message: "must be an integer between 1 and 1000"})
		return
	}
	s.mu.Lock()
	// Published now, but never before an existing animal: the clock of
	// the machine may be older than the fixture epoch.
	now := s.opts.Now().UTC().Truncate(time.Second)
	if len(s.animals) > 0 && !now.After(s.animals[0].published) {
		now = s.animals[0].published.Add(time.Second)
	}
	fresh := Generate(uint64(s.nextID), body.Count)
	ids := make([]int64, 0, len(fresh))
	for _, a := range fresh {
		s.nextID++
		a.ID = s.nextID
		a.Status = "adoptable"
		a.published = now
		a.PublishedAt = now.Format(TimeLayout)
		a.StatusChangedAt = a.PublishedAt
		a.Links["self"] = map[string]string{"href": fmt.Sprintf("/v2/animals/%d", a.ID)}
		for i := range a.Photos {
			base := fmt.Sprintf("https://photos.petfinder.example/photos/pets/%d/%d/", a.ID, i+1)
			a.Photos[i] = Photo{Small: base + "?width=100", Medium: base + "?width=300", Large: base + "?width=600", Full: base}
		}
		if len(a.Photos) > 0 {
			ph := a.Photos[0]
			a.PrimaryPhotoCropped = &ph
		}
		s.animals = append(s.animals, a)
		ids = append(ids, a.ID)
	}
	s.sortAnimals()
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"ids": ids, "published_at": now.Format(TimeLayout)})
}

// Stats returns the request counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Animals = len(s.animals)
	return st
}
