// Command loadgen drives one HTTP endpoint from inside a pod's network namespace and prints what it
// measured as one JSON object: -c clients, each on its own keep-alive connection, send requests back to
// back for -d (after an unrecorded -warmup), and the answers' throughput and latency percentiles are
// reported. With -burst every client instead sends exactly one request at the same instant, on a
// connection it opened beforehand, which is how a thundering herd of cold requests is made.
//
// It speaks just enough HTTP/1.1 (Content-Length bodies, keep-alive) that its own cost stays small next
// to the server's: on a two-core machine the client competes with the server for CPU, and a heavier
// client would blur the difference between two servers. Everything is bounded: -d by maxDuration, the
// request count by -n, each request by -timeout.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/iamlet/iamlet/bench/loadresult"
)

const (
	maxDuration = 60 * time.Second
	maxRequests = 10_000_000
	maxClients  = 4096
	tokenTTL    = "21600"
)

// Result is what one run prints: bench/loadresult, shared with the report.
type Result = loadresult.Result

func main() {
	start := time.Now()
	rawURL := flag.String("url", "http://169.254.169.254/latest/meta-data/iam/security-credentials/", "the URL to GET")
	clients := flag.Int("c", 1, "concurrent clients, one keep-alive connection each")
	dur := flag.Duration("d", 2*time.Second, "measured duration (at most 60s)")
	warmup := flag.Duration("warmup", 300*time.Millisecond, "unrecorded load before the measured window")
	limit := flag.Int64("n", maxRequests, "stop after this many requests in all")
	token := flag.Bool("token", false, "fetch an IMDSv2 token first and send it with every request")
	expect := flag.String("expect", "", "substring every 200 body must contain")
	burst := flag.Bool("burst", false, "every client sends exactly one request, all at the same instant")
	bodyOut := flag.String("body-out", "", "write the first 200 body to this file")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline of one request")
	flag.Parse()

	if err := run(start, *rawURL, *clients, min(*dur, maxDuration), *warmup, min(*limit, maxRequests), *token, *expect, *burst, *bodyOut, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(start time.Time, rawURL string, clients int, dur, warmup time.Duration, limit int64, token bool, expect string, burst bool, bodyOut string, timeout time.Duration) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("-url %q: want http://host[:port]/path", rawURL)
	}
	if clients < 1 || clients > maxClients {
		return fmt.Errorf("-c %d: want 1..%d", clients, maxClients)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	headers := ""
	if token {
		tok, err := fetchToken(addr, u.Host, timeout)
		if err != nil {
			return fmt.Errorf("IMDSv2 token: %w", err)
		}
		headers = "X-aws-ec2-metadata-token: " + tok + "\r\n"
	}
	req := []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: iamlet-loadgen\r\n" + headers + "\r\n")

	st := &stats{expect: []byte(expect), statuses: map[int]int64{}, bodyOut: bodyOut}
	var res Result
	if burst {
		res, err = runBurst(addr, req, clients, timeout, st)
	} else {
		res, err = runTimed(addr, req, clients, dur, warmup, limit, timeout, st)
	}
	if err != nil {
		return err
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		res.CPUSeconds = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	res.WallSeconds = time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(res)
}

// runTimed is the throughput and latency mode.
func runTimed(addr string, req []byte, clients int, dur, warmup time.Duration, limit int64, timeout time.Duration, st *stats) (Result, error) {
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(dur)
	var issued, all atomic.Int64
	var wg sync.WaitGroup
	lats := make([][]time.Duration, clients)
	for i := range clients {
		wg.Go(func() {
			c := &client{addr: addr, req: req, timeout: timeout}
			defer c.close()
			local := make([]time.Duration, 0, 4096)
			for issued.Add(1) <= limit {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				status, body, err := c.do()
				d := time.Since(t0)
				all.Add(1)
				if t0.Before(measureFrom) {
					continue
				}
				local = append(local, d)
				st.record(status, body, err)
			}
			lats[i] = local
		})
	}
	wg.Wait()
	// Requests started before the end finish after it; the window runs until the last one did.
	r := st.result(clients, time.Since(measureFrom), slices.Concat(lats...))
	r.All = all.Load()
	return r, nil
}

// runBurst opens every client's connection, then releases them all at once; each sends one request.
func runBurst(addr string, req []byte, clients int, timeout time.Duration, st *stats) (Result, error) {
	conns := make([]*client, clients)
	for i := range conns {
		conns[i] = &client{addr: addr, req: req, timeout: timeout}
		if err := conns[i].dial(); err != nil {
			for _, c := range conns[:i] {
				c.close()
			}
			return Result{}, fmt.Errorf("opening connection %d of %d: %w", i+1, clients, err)
		}
	}
	release := make(chan struct{})
	var ready, wg sync.WaitGroup
	lats := make([]time.Duration, clients)
	var t0 time.Time
	for i, c := range conns {
		ready.Add(1)
		wg.Go(func() {
			defer c.close()
			ready.Done()
			<-release
			status, body, err := c.do()
			lats[i] = time.Since(t0)
			st.record(status, body, err)
		})
	}
	ready.Wait()
	time.Sleep(20 * time.Millisecond) // let every goroutine park on release
	t0 = time.Now()
	close(release)
	wg.Wait()
	r := st.result(clients, time.Since(t0), lats)
	r.All = int64(clients)
	return r, nil
}

// stats counts answers; record is called from every client.
type stats struct {
	expect  []byte
	bodyOut string

	mu       sync.Mutex
	ok, bad  int64
	statuses map[int]int64
	firstErr error
	wrote    bool
}

func (s *stats) record(status int, body []byte, err error) {
	good := err == nil && status == 200 && bytes.Contains(body, s.expect)
	if err == nil && status == 200 && !good {
		err = fmt.Errorf("200 body without %q: %.200q", s.expect, body)
	} else if err == nil && status != 200 {
		err = fmt.Errorf("status %d: %.200q", status, body)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statuses[status]++
	if good {
		s.ok++
		if s.bodyOut != "" && !s.wrote {
			s.wrote = true
			if werr := os.WriteFile(s.bodyOut, body, 0o600); werr != nil && s.firstErr == nil {
				s.firstErr = werr
			}
		}
		return
	}
	s.bad++
	if s.firstErr == nil {
		s.firstErr = err
	}
}

func (s *stats) result(clients int, window time.Duration, lats []time.Duration) Result {
	slices.Sort(lats)
	r := Result{Clients: clients, Seconds: window.Seconds(), Requests: s.ok, Errors: s.bad, Statuses: map[string]int64{}}
	for k, v := range s.statuses {
		r.Statuses[strconv.Itoa(k)] = v
	}
	if s.firstErr != nil {
		r.FirstError = s.firstErr.Error()
	}
	if r.Seconds > 0 {
		r.RPS = float64(s.ok) / r.Seconds
	}
	if n := len(lats); n > 0 {
		us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
		pct := func(q float64) float64 { return us(lats[loadresult.Rank(n, q)]) }
		r.P50, r.P90, r.P99, r.P999, r.Max = pct(0.50), pct(0.90), pct(0.99), pct(0.999), us(lats[n-1])
		var sum time.Duration
		for _, d := range lats {
			sum += d
		}
		r.Mean = us(sum / time.Duration(n))
	}
	return r
}

// client is one keep-alive connection; it reconnects after an error or a "Connection: close".
type client struct {
	addr    string
	req     []byte
	timeout time.Duration
	conn    net.Conn
	r       *bufio.Reader
	body    []byte
}

func (c *client) dial() error {
	conn, err := net.DialTimeout("tcp", c.addr, c.timeout)
	if err != nil {
		return err
	}
	c.conn, c.r = conn, bufio.NewReaderSize(conn, 8192)
	return nil
}

func (c *client) close() {
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn = nil
	}
}

// do sends the request and reads the answer; the body is valid until the next call.
func (c *client) do() (int, []byte, error) {
	if c.conn == nil {
		if err := c.dial(); err != nil {
			return 0, nil, err
		}
	}
	_ = c.conn.SetDeadline(time.Now().Add(c.timeout))
	status, body, keep, err := c.exchange()
	if err != nil || !keep {
		c.close()
	}
	return status, body, err
}

func (c *client) exchange() (status int, body []byte, keep bool, err error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return 0, nil, false, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, nil, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, nil, false, fmt.Errorf("bad status line %.64q", line)
	}
	if status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return 0, nil, false, fmt.Errorf("bad status line %.64q", line)
	}
	length, keep := -1, true
	for {
		h, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, nil, false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, nil, false, fmt.Errorf("bad header %.64q", h)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 || length > 1<<20 {
				return 0, nil, false, fmt.Errorf("bad Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Connection")) && bytes.EqualFold(value, []byte("close")):
			keep = false
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return 0, nil, false, errors.New("chunked answers are not supported")
		}
	}
	if length < 0 {
		return 0, nil, false, errors.New("answer without Content-Length")
	}
	if cap(c.body) < length {
		c.body = make([]byte, length)
	}
	c.body = c.body[:length]
	if _, err := io.ReadFull(c.r, c.body); err != nil {
		return 0, nil, false, err
	}
	return status, c.body, keep, nil
}

// fetchToken does the IMDSv2 token PUT, as every SDK does before asking for credentials.
func fetchToken(addr, host string, timeout time.Duration) (string, error) {
	c := &client{addr: addr, timeout: timeout,
		req: []byte("PUT /latest/api/token HTTP/1.1\r\nHost: " + host + "\r\nX-aws-ec2-metadata-token-ttl-seconds: " + tokenTTL + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")}
	defer c.close()
	status, body, err := c.do()
	if err != nil {
		return "", err
	}
	if status != 200 || len(body) == 0 {
		return "", fmt.Errorf("status %d: %.200q", status, body)
	}
	return string(body), nil
}
