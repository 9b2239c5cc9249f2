package edge

import (
	"bytes"
	"errors"
	"io"
	"net"
)

// framingHeader marks a request whose framing the framing guard refused
// (request smuggling): the front handler answers it 400 and closes the
// connection. The guard adds it; a client that sends it only gets its own
// request refused.
const framingHeader = "X-Petmesh-Framing-Error"

// Framing verdicts (values of framingHeader).
const (
	framingCLTE = "cl-te"     // both Content-Length and Transfer-Encoding
	framingTE10 = "te-http10" // Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1: faulty framing)
)

// framingListener wraps the plaintext public listener: every connection
// goes through a framingConn. net/http resolves a request carrying both
// Content-Length and Transfer-Encoding: chunked by dropping Content-Length
// (which RFC 9112 §6.3 allows) and never tells the handler that the request
// was ambiguous; the edge refuses such requests outright, as the issue asks
// and as a front proxy should, so the conn tells it.
type framingListener struct {
	net.Listener
	// limit is how many header bytes are held before the guard gives up
	// inspecting (net/http answers 431 beyond MaxHeaderBytes+4096 anyway).
	limit int
}

// Accept wraps the next connection.
func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &framingConn{Conn: c, limit: l.limit}, nil
}

// States of a framingConn.
const (
	fsHeader    = iota // collecting a request's header block, held back until complete
	fsBody             // a Content-Length body: remaining bytes pass uninspected
	fsChunkLine        // a chunk-size line
	fsChunkData        // chunk data: remaining bytes pass uninspected
	fsChunkEnd         // the CRLF after chunk data
	fsTrailer          // trailer lines after the last chunk, until an empty line
	fsPass             // no more inspection: an upgrade, or input net/http refuses itself
	fsEOF              // a refused request was released: nothing after it is read
)

// framingConn follows the HTTP/1.1 request framing of one connection
// exactly as net/http reads it (header block, then a Content-Length or
// chunked body, then the next request) and holds each header block back
// until it is complete, so it can mark a refused one (framingHeader, added
// after the request line) before net/http parses it. Bodies pass through
// without copying when nothing is buffered. Anything it does not recognise
// as HTTP/1.x, or that net/http refuses itself, ends the inspection
// (fsPass), so it never delays or alters traffic it does not understand.
//
// net/http never calls Read concurrently (its background read and the
// handler's body reads are serialised), so the state needs no lock.
type framingConn struct {
	net.Conn
	limit     int
	state     int
	after     int    // state once the current body ends: fsHeader, fsPass or fsEOF
	remaining int64  // bytes left in fsBody / fsChunkData
	scanned   int    // bytes of in already searched for the end of the header block
	in        []byte // read, not yet released (a partial header block or line)
	out       []byte // released, not yet returned: out[off:]
	off       int
	rbuf      []byte
}

// Read returns released bytes, reading and inspecting more as needed.
func (c *framingConn) Read(p []byte) (int, error) {
	for {
		if c.off < len(c.out) {
			n := copy(p, c.out[c.off:])
			c.off += n
			return n, nil
		}
		c.out, c.off = c.out[:0], 0
		switch c.state {
		case fsPass:
			if len(c.in) > 0 {
				c.out = append(c.out, c.in...)
				c.in = c.in[:0]
				continue
			}
			return c.Conn.Read(p)
		case fsEOF:
			return 0, io.EOF
		case fsBody, fsChunkData:
			if len(c.in) == 0 && c.remaining > 0 {
				// Body bytes need no inspection: read them straight into p.
				if int64(len(p)) > c.remaining {
					p = p[:c.remaining]
				}
				n, err := c.Conn.Read(p)
				c.remaining -= int64(n)
				if c.remaining == 0 {
					c.endData()
				}
				return n, err
			}
		}
		if c.rbuf == nil {
			c.rbuf = make([]byte, 4096)
		}
		n, err := c.Conn.Read(c.rbuf)
		if n > 0 {
			c.in = append(c.in, c.rbuf[:n]...)
			c.process()
		}
		if err != nil {
			if c.off == len(c.out) && len(c.in) > 0 && !isNetTimeout(err) {
				// The peer is gone mid-request: hand over what was held;
				// net/http reports the truncated request.
				c.state = fsPass
				continue
			}
			if c.off < len(c.out) {
				n := copy(p, c.out[c.off:])
				c.off += n
				return n, err
			}
			return 0, err
		}
	}
}

// ReadFrom keeps the underlying connection's sendfile/splice path.
func (c *framingConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite lets net/http half-close before closing, so that a client
// still sending gets the error response rather than a reset.
func (c *framingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// process moves bytes from in to out as the framing allows.
func (c *framingConn) process() {
	in := c.in
loop:
	for len(in) > 0 {
		switch c.state {
		case fsPass:
			c.out = append(c.out, in...)
			in = in[len(in):]
		case fsEOF:
			in = in[len(in):]
		case fsBody, fsChunkData:
			n := int(min(int64(len(in)), c.remaining))
			c.out = append(c.out, in[:n]...)
			in = in[n:]
			c.remaining -= int64(n)
			if c.remaining == 0 {
				c.endData()
			}
		case fsHeader:
			end := headerEnd(in, c.scanned)
			if end < 0 {
				c.scanned = len(in)
				if len(in) > c.limit || !plausibleRequestStart(in) {
					c.state = fsPass
					continue
				}
				break loop
			}
			c.scanned = 0
			c.request(in[:end])
			in = in[end:]
		case fsChunkLine, fsChunkEnd, fsTrailer:
			i := bytes.IndexByte(in, '\n')
			if i < 0 {
				if len(in) > 4096 {
					c.giveUp()
					continue
				}
				break loop
			}
			line := in[:i+1]
			c.out = append(c.out, line...)
			in = in[i+1:]
			c.line(line)
		}
	}
	n := copy(c.in, in)
	c.in = c.in[:n]
}

// giveUp stops inspecting after input net/http refuses itself: the bytes
// pass through, unless they follow a refused request.
func (c *framingConn) giveUp() {
	if c.after == fsEOF {
		c.state = fsEOF
		return
	}
	c.state = fsPass
}

// endData is the end of a Content-Length body or of a chunk's data.
func (c *framingConn) endData() {
	if c.state == fsChunkData {
		c.state = fsChunkEnd
		return
	}
	c.state = c.after
}

// line handles one complete line of the chunked body.
func (c *framingConn) line(l []byte) {
	switch c.state {
	case fsChunkEnd:
		if string(l) != "\r\n" {
			c.giveUp() // net/http: malformed chunked encoding
			return
		}
		c.state = fsChunkLine
	case fsChunkLine:
		// As net/http: CRLF only, no other CR, trailing space trimmed,
		// extensions cut, at most 16 hex digits.
		if len(l) < 2 || l[len(l)-2] != '\r' || bytes.IndexByte(l, '\r') != len(l)-2 {
			c.giveUp()
			return
		}
		l = bytes.TrimRight(l[:len(l)-2], " \t")
		l, _, _ = bytes.Cut(l, []byte(";"))
		n, ok := parseHex(l)
		if !ok {
			c.giveUp()
			return
		}
		if n == 0 {
			c.state = fsTrailer
			return
		}
		c.state, c.remaining = fsChunkData, int64(n)
	case fsTrailer:
		if string(l) == "\r\n" || string(l) == "\n" {
			c.state = c.after
		}
	}
}

func parseHex(v []byte) (uint64, bool) {
	if len(v) == 0 || len(v) > 16 {
		return 0, false
	}
	var n uint64
	for _, b := range v {
		switch {
		case '0' <= b && b <= '9':
			b -= '0'
		case 'a' <= b && b <= 'f':
			b = b - 'a' + 10
		case 'A' <= b && b <= 'F':
			b = b - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(b)
	}
	if n > 1<<62 {
		return 0, false
	}
	return n, true
}

// headerEnd returns the length of the header block at the start of b (up
// to and including the empty line that ends it; lines end in LF with an
// optional CR, as net/http reads them), or -1. from is how much of b was
// already searched.
func headerEnd(b []byte, from int) int {
	i := max(from-2, 0)
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		k := i + j // b[k] == '\n'
		if k+1 < len(b) && b[k+1] == '\n' {
			return k + 2
		}
		if k+2 < len(b) && b[k+1] == '\r' && b[k+2] == '\n' {
			return k + 3
		}
		i = k + 1
	}
}

// plausibleRequestStart tells whether b can be the start of an HTTP/1.x
// request: a token character first, and once the request line is complete,
// "METHOD SP TARGET SP HTTP/1.x". Anything else (TLS, HTTP/2's preface,
// garbage) is not held back.
func plausibleRequestStart(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	if !isTokenByte(b[0]) {
		return false
	}
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return true
	}
	_, ok := requestLineProto(b[:i])
	return ok
}

// requestLineProto returns the minor version of an HTTP/1.x request line.
func requestLineProto(l []byte) (minor int, ok bool) {
	l = bytes.TrimSuffix(l, []byte("\r"))
	sp := bytes.LastIndexByte(l, ' ')
	if sp < 0 || bytes.IndexByte(l, ' ') == sp {
		return 0, false
	}
	switch string(l[sp+1:]) {
	case "HTTP/1.1":
		return 1, true
	case "HTTP/1.0":
		return 0, true
	}
	return 0, false
}

func isTokenByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), b) >= 0
}

// request inspects one complete header block, releases it (marked when
// refused) and sets the state for its body.
func (c *framingConn) request(block []byte) {
	i := bytes.IndexByte(block, '\n')
	reqLine := block[:i+1]
	minor, ok := requestLineProto(block[:i])
	if !ok {
		c.out = append(c.out, block...)
		c.state = fsPass
		return
	}
	var (
		clN, teN int
		cl, te   []byte
		clDiffer bool
		upgrade  bool
		last     int // 1: previous header was Content-Length, 2: Transfer-Encoding
	)
	rest := block[i+1:]
	for len(rest) > 0 {
		j := bytes.IndexByte(rest, '\n')
		l := bytes.TrimSuffix(rest[:j], []byte("\r"))
		rest = rest[j+1:]
		if len(l) == 0 {
			break
		}
		if l[0] == ' ' || l[0] == '\t' { // obs-fold: net/http joins it to the previous value
			v := bytes.Trim(l, " \t")
			switch last {
			case 1:
				cl = append(append(append([]byte(nil), cl...), ' '), v...)
			case 2:
				te = append(append(append([]byte(nil), te...), ' '), v...)
			}
			continue
		}
		last = 0
		name, v, found := bytes.Cut(l, []byte(":"))
		if !found {
			continue // net/http refuses the request itself
		}
		v = bytes.Trim(v, " \t")
		switch {
		case asciiEqualFold(name, "Content-Length"):
			if clN > 0 && !bytes.Equal(cl, v) {
				clDiffer = true
			}
			clN++
			cl, last = v, 1
		case asciiEqualFold(name, "Transfer-Encoding"):
			teN++
			te, last = v, 2
		case asciiEqualFold(name, "Upgrade"):
			upgrade = true
		}
	}
	method, _, _ := bytes.Cut(reqLine, []byte(" "))
	c.after = fsHeader
	if upgrade || string(method) == "CONNECT" {
		c.after = fsPass // the connection may become a tunnel
	}

	verdict := ""
	switch {
	case teN > 0 && minor == 0:
		verdict = framingTE10
	case teN > 0 && clN > 0:
		verdict = framingCLTE
	}
	if verdict != "" {
		c.out = append(c.out, reqLine...)
		c.out = append(c.out, framingHeader+": "+verdict+"\r\n"...)
		c.out = append(c.out, block[i+1:]...)
		c.after = fsEOF
	} else {
		c.out = append(c.out, block...)
	}

	// The body, as net/http will read it.
	switch {
	case teN > 0 && minor == 1:
		if teN != 1 || !asciiEqualFold(te, "chunked") {
			c.state = fsEOF // net/http answers 501 and closes
			return
		}
		c.state = fsChunkLine
	case clDiffer:
		c.state = fsEOF // net/http answers 400 and closes
	case clN > 0:
		n, ok := parseDecimal(cl)
		if !ok {
			c.state = fsEOF // net/http answers 400 and closes
			return
		}
		if n == 0 {
			c.state = c.after
			return
		}
		c.state, c.remaining = fsBody, n
	default:
		c.state = c.after
	}
}

func parseDecimal(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, b := range v {
		if b < '0' || b > '9' {
			return 0, false
		}
		n = n*10 + int64(b-'0')
	}
	return n, true
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
