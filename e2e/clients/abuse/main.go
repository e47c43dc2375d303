// Command abuse misbehaves against the metadata address from inside a pod, for the adversarial tests.
// Every mode is bounded in count and time.
//
//	abuse -mode conns -n 1000 -for 5s      open n connections and hold them
//	abuse -mode slowloris -n 50 -for 5s    open n connections and dribble a never-ending header
//	abuse -mode bigheader                  one request with a 1 MiB header
//	abuse -mode bigbody                    a token PUT with a 10 MiB body
//	abuse -mode garbage                    bytes that are not HTTP
//	abuse -mode flood -n 2000 -c 64        n requests as fast as c connections allow
//	abuse -mode sources -from 10.201.0.1 -sources 200 -n 16 -for 20s
//	                                       from each of 200 addresses, n connections that each send a request
//	                                       and then stay open; one the server closes is opened again a second later
//
// It prints "opened N" for the holding modes and "status CODE" or "error ..." for the others.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "169.254.169.254:80", "server address")
	mode := flag.String("mode", "", "conns, slowloris, bigheader, bigbody, garbage or flood")
	n := flag.Int("n", 100, "connections or requests")
	hold := flag.Duration("for", 5*time.Second, "how long to hold connections")
	conc := flag.Int("c", 1, "with -mode flood, connections sending at once")
	from := flag.String("from", "", "with -mode sources, the first source address")
	sources := flag.Int("sources", 1, "with -mode sources, how many consecutive source addresses")
	flag.Parse()
	switch *mode {
	case "conns", "slowloris":
		holdConns(*addr, *mode == "slowloris", min(*n, 5000), min(*hold, time.Minute))
	case "bigheader":
		report(request(*addr, "GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 1<<20)+"\r\n\r\n"))
	case "bigbody":
		body := strings.Repeat("b", 10<<20)
		report(request(*addr, fmt.Sprintf("PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: %d\r\n\r\n%s", len(body), body)))
	case "garbage":
		report(request(*addr, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n"))
	case "sources":
		first, err := netip.ParseAddr(*from)
		if err != nil {
			fmt.Fprintln(os.Stderr, "abuse: -from:", err)
			os.Exit(2)
		}
		fromSources(*addr, first, min(*sources, 1000), min(*n, 100), min(*hold, time.Minute))
	case "flood":
		flood(*addr, min(*n, 100000), min(max(*conc, 1), 1000))
	default:
		fmt.Fprintln(os.Stderr, "abuse: unknown -mode")
		os.Exit(2)
	}
}

func holdConns(addr string, slow bool, n int, hold time.Duration) {
	var conns []net.Conn
	deadline := time.Now().Add(hold)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		conns = append(conns, c)
		if slow {
			_, _ = io.WriteString(c, "GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n")
		}
	}
	fmt.Println("opened", len(conns))
	for time.Now().Before(deadline) {
		if slow {
			for _, c := range conns {
				_, _ = io.WriteString(c, "X-Slow: a\r\n")
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, c := range conns {
		c.Close()
	}
}

func request(addr, raw string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { _, _ = io.WriteString(c, raw) }() // the server may answer before reading it all
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func report(code int, err error) {
	if err != nil {
		fmt.Println("error", err)
		return
	}
	fmt.Println("status", code)
}

// flood prints "status CODE xN" per answer code (0: no answer) and "elapsed SECONDS", so a test can compare what was
// served with what the pod's rate allows in that time.
func flood(addr string, n, conc int) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	var mu sync.Mutex
	counts := map[int]int{}
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	next := make(chan struct{})
	go func() {
		defer close(next)
		for i := 0; i < n && time.Now().Before(deadline); i++ {
			next <- struct{}{}
		}
	}()
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for range next {
				code := 0
				if resp, err := client.Get("http://" + addr + "/latest/meta-data/iam/security-credentials/"); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				mu.Lock()
				counts[code]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for code, c := range counts {
		fmt.Printf("status %d x%d\n", code, c)
	}
	fmt.Printf("elapsed %.3f\n", time.Since(start).Seconds())
}

// fromSources holds, from each of sources consecutive addresses, n connections that have sent one request and read
// its answer; a connection the server refuses or closes is opened again a second later, until hold is over. It prints
// "dials D answered A closed C".
func fromSources(addr string, first netip.Addr, sources, n int, hold time.Duration) {
	deadline := time.Now().Add(hold)
	var dials, answered, closed atomic.Int64
	var wg sync.WaitGroup
	src := first
	for range sources {
		d := &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		for range n {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					dials.Add(1)
					if holdOne(d, addr, deadline) {
						answered.Add(1)
					}
					closed.Add(1)
					if wait := time.Until(deadline); wait > 0 {
						time.Sleep(min(time.Second, wait))
					}
				}
			})
		}
		src = src.Next()
	}
	wg.Wait()
	fmt.Printf("dials %d answered %d closed %d\n", dials.Load(), answered.Load(), closed.Load())
}

// holdOne sends a request on a new connection, reads the answer and keeps the connection until the server closes
// it or the deadline passes; it reports whether an answer came.
func holdOne(d *net.Dialer, addr string, deadline time.Time) bool {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := io.WriteString(c, "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"); err != nil {
		return false
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_, _ = br.ReadByte() // blocks until the server closes the connection or the deadline
	return true
}
