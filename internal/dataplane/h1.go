package dataplane

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"time"
)

// h1Pool is a synchronous HTTP/1.1 client for the proxy's most common
// upstream request: a GET, HEAD, OPTIONS or TRACE without a body. The
// request is written and its response read on the calling goroutine over
// a kept-alive connection taken from a LIFO pool, and the connection goes
// back to the pool when the response body has been read to its end.
//
// Why: http.Transport runs two goroutines per connection (a read loop and
// a write loop) and hands every request and response between them and the
// caller over channels, which costs several goroutine wake-ups per request
// and about 40 allocations; on a busy 2-CPU machine that was a fifth of a
// proxy's CPU per request. The wire format is net/http's own
// (Request.Write, http.ReadResponse); what this pool does not do —
// request bodies (streamed while the response may already arrive), 100
// continue, protocol upgrades, other methods (not safe to resend on a
// connection the server closed meanwhile), h2c — stays with http.Transport
// (upstreamTransport routes each request).
//
// A connection the server closed while it was idle is noticed on its next
// use: when the response's first byte cannot be read from a reused
// connection, the request (replayable by construction) is sent once more
// on a new one, as http.Transport does. A connection idle for more than a
// second is first checked with a non-blocking read: anything that arrived
// meanwhile (EOF, an unsolicited response) discards it, so a stale
// response is never taken for the next request's. Idle connections are
// closed after idleTimeout, checked when connections are returned.
// Response headers are limited to maxHeaderBytes. Safe for concurrent use.
type h1Pool struct {
	dial           func(ctx context.Context, network, addr string) (net.Conn, error)
	maxIdlePerHost int
	idleTimeout    time.Duration
	maxHeaderBytes int64
	now            func() time.Time
	// probeAfter: a connection idle for longer is checked before reuse
	// (probe) for bytes or EOF the server sent meanwhile.
	probeAfter time.Duration

	mu   sync.Mutex
	idle map[string][]*h1Conn // by address, most recently used last
}

// h1Conn is one upstream connection with its buffers. It is owned by one
// request at a time, or by the pool.
type h1Conn struct {
	conn   net.Conn
	addr   string
	br     *bufio.Reader
	bw     *bufio.Writer
	lim    int64 // bytes the response header may still take; -1: unlimited (reading the body)
	idleAt time.Time
}

var errH1HeaderTooLarge = errors.New("upstream response headers too large")

// quiet reports whether nothing arrived on the idle connection: no EOF (the
// server closed it) and no bytes (an unsolicited response, such as a 408
// some servers send before closing, which would otherwise be read as the
// answer to the next request). One read with a deadline 50 µs away (a
// deadline already past fails before reading); http.Transport's read loop
// notices the same while the connection is idle.
func (c *h1Conn) quiet() bool {
	if c.br.Buffered() > 0 || c.conn.SetReadDeadline(time.Now().Add(50*time.Microsecond)) != nil {
		return false
	}
	_, err := c.br.Peek(1)
	var ne net.Error
	timedOut := errors.As(err, &ne) && ne.Timeout()
	return c.conn.SetReadDeadline(time.Time{}) == nil && timedOut
}

// Read feeds br, enforcing the response header limit.
func (c *h1Conn) Read(p []byte) (int, error) {
	if c.lim >= 0 {
		if c.lim == 0 {
			return 0, errH1HeaderTooLarge
		}
		if int64(len(p)) > c.lim {
			p = p[:c.lim]
		}
	}
	n, err := c.conn.Read(p)
	if c.lim >= 0 {
		c.lim -= int64(n)
	}
	return n, err
}

func newH1Pool(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *h1Pool {
	return &h1Pool{dial: dial, maxIdlePerHost: 1024, idleTimeout: 90 * time.Second, maxHeaderBytes: 1 << 20,
		now: time.Now, probeAfter: time.Second, idle: map[string][]*h1Conn{}}
}

// h1Eligible reports whether req may take the synchronous path.
func h1Eligible(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		return false
	}
	if req.Body != nil && req.Body != http.NoBody || req.ContentLength != 0 || req.URL.Scheme != "http" {
		return false
	}
	h := req.Header
	return len(h["Upgrade"]) == 0 && len(h["Expect"]) == 0 && len(req.TransferEncoding) == 0
}

// get returns an idle connection to addr (reused true) or dials one.
func (p *h1Pool) get(ctx context.Context, addr string) (*h1Conn, bool, error) {
	for {
		p.mu.Lock()
		cs := p.idle[addr]
		if len(cs) == 0 {
			p.mu.Unlock()
			break
		}
		c := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		p.idle[addr] = cs[:len(cs)-1]
		p.mu.Unlock()
		if p.now().Sub(c.idleAt) > p.probeAfter && !c.quiet() {
			c.conn.Close()
			continue
		}
		return c, true, nil
	}
	nc, err := p.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	c := &h1Conn{conn: nc, addr: addr}
	c.br = bufio.NewReaderSize(c, 4<<10)
	c.bw = bufio.NewWriterSize(nc, 4<<10)
	return c, false, nil
}

// put returns c to the pool, closing it when the pool is full, and closes
// connections idle for longer than idleTimeout.
func (p *h1Pool) put(c *h1Conn) {
	now := p.now()
	c.idleAt = now
	var stale []*h1Conn
	p.mu.Lock()
	cs := p.idle[c.addr]
	if len(cs) >= p.maxIdlePerHost {
		p.mu.Unlock()
		c.conn.Close()
		return
	}
	cs = append(cs, c)
	n := 0
	for n < len(cs) && now.Sub(cs[n].idleAt) > p.idleTimeout {
		n++
	}
	if n > 0 {
		stale = append(stale, cs[:n]...)
		cs = append(cs[:0], cs[n:]...)
	}
	p.idle[c.addr] = cs
	p.mu.Unlock()
	for _, s := range stale {
		s.conn.Close()
	}
}

// closeIdle closes every idle connection.
func (p *h1Pool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = map[string][]*h1Conn{}
	p.mu.Unlock()
	for _, cs := range idle {
		for _, c := range cs {
			c.conn.Close()
		}
	}
}

// roundTrip sends req (h1Eligible) to req.URL.Host.
func (p *h1Pool) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for {
		c, reused, err := p.get(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, retry, err := p.exchange(ctx, c, reused, req)
		if retry {
			continue // a connection the server had closed: once more on a new one
		}
		return resp, err
	}
}

// exchange writes req on c and reads the response header. retry is true
// when c was a reused connection the server had closed before answering.
func (p *h1Pool) exchange(ctx context.Context, c *h1Conn, reused bool, req *http.Request) (_ *http.Response, retry bool, _ error) {
	// A deadline or cancellation of the request interrupts the blocking
	// reads and writes; the connection is not reused after that.
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(aLongTimeAgo) })
	fail := func(err error) (*http.Response, bool, error) {
		stop()
		c.conn.Close()
		if cerr := ctx.Err(); cerr != nil {
			return nil, false, cerr // the I/O error is the interruption's
		}
		return nil, false, err
	}
	if err := req.Write(c.bw); err != nil {
		if reused && ctx.Err() == nil {
			stop()
			c.conn.Close()
			return nil, true, nil
		}
		return fail(err)
	}
	if err := c.bw.Flush(); err != nil {
		if reused && ctx.Err() == nil {
			stop()
			c.conn.Close()
			return nil, true, nil
		}
		return fail(err)
	}
	c.lim = p.maxHeaderBytes
	for {
		if _, err := c.br.Peek(1); err != nil {
			if reused && ctx.Err() == nil && c.lim == p.maxHeaderBytes {
				// Nothing of a response arrived: the server closed the
				// idle connection before it read the request.
				stop()
				c.conn.Close()
				return nil, true, nil
			}
			return fail(err)
		}
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				return fail(errors.New("upstream switched protocols without an upgrade request"))
			}
			// Informational (103 Early Hints): handed to the proxy's
			// client trace, which forwards it, then the next response.
			if tr := httptrace.ContextClientTrace(ctx); tr != nil && tr.Got1xxResponse != nil {
				if err := tr.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
					return fail(err)
				}
			}
			continue
		}
		c.lim = -1
		b := &h1Body{rc: resp.Body, c: c, p: p, ctx: ctx, stop: stop, keep: !resp.Close}
		if resp.Body == http.NoBody {
			b.finish(true)
		} else {
			resp.Body = b
		}
		return resp, false, nil
	}
}

// h1Body hands the connection back to the pool once the body has been
// read to its end; a body closed early closes the connection.
type h1Body struct {
	rc   io.ReadCloser
	c    *h1Conn
	p    *h1Pool
	ctx  context.Context
	stop func() bool
	keep bool // the server did not ask to close the connection
	done bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
	case err != nil:
		if cerr := b.ctx.Err(); cerr != nil {
			err = cerr
		}
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

// finish releases the connection: back to the pool after a complete
// response on a connection that stays open, closed otherwise.
func (b *h1Body) finish(complete bool) {
	b.done = true
	stopped := b.stop()
	if complete && b.keep && stopped && b.c.br.Buffered() == 0 {
		b.p.put(b.c)
		return
	}
	b.c.conn.Close()
}

// aLongTimeAgo is a deadline in the past: it interrupts blocking I/O.
var aLongTimeAgo = time.Unix(1, 0)

// upstreamTransport sends bodyless idempotent HTTP/1.1 requests through
// the synchronous pool and everything else through http.Transport. Both
// dial through the cluster's counting dialer (max_connections).
type upstreamTransport struct {
	std *http.Transport
	h1  *h1Pool // nil for h2c clusters
}

func (u *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if u.h1 != nil && h1Eligible(req) {
		return u.h1.roundTrip(req)
	}
	return u.std.RoundTrip(req)
}

// CloseIdleConnections closes the idle connections of both paths.
func (u *upstreamTransport) CloseIdleConnections() {
	u.std.CloseIdleConnections()
	if u.h1 != nil {
		u.h1.closeIdle()
	}
}
