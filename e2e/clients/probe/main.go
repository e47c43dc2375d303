// Command probe sends raw HTTP requests from inside a pod namespace, written byte for byte so that odd
// paths reach the server unnormalised. Each argument is one request line "METHOD PATH"; headers come
// from -H flags; with -token it first fetches an IMDSv2 token and sends it on every request.
// It prints, per request: "=== METHOD PATH", the status code, then the body (with -timed then "took MS").
// With -for it sends the whole list again and again (every -every) until that much time has passed, each request
// on a connection of its own, so a test can watch what a pod gets while the node changes under it; with -until it
// stops once that file exists (and -for is only the upper bound), so the watch lasts as long as the change does.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	addr := flag.String("addr", "169.254.169.254:80", "server address")
	token := flag.Bool("token", false, "fetch an IMDSv2 token first and send it")
	repeatFor := flag.Duration("for", 0, "repeat the requests until this much time has passed (0: once)")
	every := flag.Duration("every", 10*time.Millisecond, "with -for, the pause between rounds")
	until := flag.String("until", "", "with -for, stop once this file exists")
	timeout := flag.Duration("timeout", 8*time.Second, "deadline of each request, from the dial to the last byte")
	timed := flag.Bool("timed", false, "print \"took MILLISECONDS\" after each request's outcome")
	var hs headers
	flag.Var(&hs, "H", "header 'Name: value' (repeatable)")
	flag.Parse()
	if *token {
		status, body, err := do(*addr, "PUT", "/latest/api/token", []string{"X-aws-ec2-metadata-token-ttl-seconds: 300"}, *timeout)
		if err != nil || status != 200 {
			fmt.Fprintf(os.Stderr, "probe: token: %d %v\n", status, err)
			os.Exit(1)
		}
		hs = append(hs, "X-aws-ec2-metadata-token: "+body)
	}
	end := time.Now().Add(*repeatFor)
	for {
		round(*addr, flag.Args(), hs, *timeout, *timed)
		if time.Now().After(end) {
			return
		}
		if *until != "" {
			if _, err := os.Stat(*until); err == nil {
				return
			}
		}
		time.Sleep(*every)
	}
}

// round sends each request line once and prints what came back.
func round(addr string, lines, hs []string, timeout time.Duration, timed bool) {
	for _, line := range lines {
		method, path, ok := strings.Cut(line, " ")
		if !ok {
			method, path = "GET", line
		}
		start := time.Now()
		status, body, err := do(addr, method, path, hs, timeout)
		took := time.Since(start)
		fmt.Printf("=== %s %s\n", method, path)
		if err != nil {
			fmt.Printf("error %v\n", err)
		} else {
			fmt.Printf("%d\n%s\n", status, body)
		}
		if timed {
			fmt.Printf("took %.1f\n", float64(took.Microseconds())/1000)
		}
	}
}

func do(addr, method, path string, hs []string, timeout time.Duration) (int, string, error) {
	deadline := time.Now().Add(timeout)
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	host, _, _ := net.SplitHostPort(addr)
	req := method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n"
	for _, h := range hs {
		req += h + "\r\n"
	}
	if method == "PUT" || method == "POST" {
		req += "Content-Length: 0\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}
