// Command holdconn holds one keep-alive HTTP connection open across a change on the node, to show what happens to
// a flow that was established before the change. It dials -addr once, sends GET FIRST on that connection and prints
// the answer, then prints "held LOCAL -> REMOTE" and waits: for a line on stdin, or with -proceed until that file
// exists (with -ready it first writes the "held" line to that file, so a test driving it knows the connection is up).
// It then sends GET SECOND on the same connection and prints that answer. Each answer is printed as
// "=== GET PATH", then either the status code and the body, or "error " and what went wrong (a reset, EOF, a
// timeout). It never opens a second connection.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "169.254.169.254:80", "server address")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline of each request")
	ready := flag.String("ready", "", "file to write the held line to once the first answer is in")
	proceed := flag.String("proceed", "", "send the second request once this file exists, instead of on a line of stdin")
	wait := flag.Duration("wait", time.Minute, "with -proceed, how long to wait for the file")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: holdconn [-addr host:port] FIRST-PATH SECOND-PATH")
		os.Exit(2)
	}
	// No TCP keep-alive probes: an idle held flow must stay idle, or a probe would start a new conntrack entry.
	conn, err := (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: -1}).Dial("tcp", *addr)
	if err != nil {
		fmt.Printf("error dial: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	host, _, _ := net.SplitHostPort(*addr)
	br := bufio.NewReader(conn)
	if !get(conn, br, host, flag.Arg(0), *timeout) {
		os.Exit(1)
	}
	held := fmt.Sprintf("held %s -> %s\n", conn.LocalAddr(), conn.RemoteAddr())
	fmt.Print(held)
	if *ready != "" {
		if err := os.WriteFile(*ready, []byte(held), 0o600); err != nil {
			fmt.Printf("error ready: %v\n", err)
			os.Exit(1)
		}
	}
	if err := waitForGo(*proceed, *wait); err != nil {
		fmt.Printf("error %v\n", err)
		os.Exit(1)
	}
	get(conn, br, host, flag.Arg(1), *timeout)
}

// waitForGo returns once the file exists or, with no file, once stdin yields a line (or ends).
func waitForGo(file string, wait time.Duration) error {
	if file == "" {
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("stdin: %w", err)
		}
		return nil
	}
	deadline := time.Now().Add(wait)
	for {
		if _, err := os.Stat(file); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proceed: %s did not appear within %s", file, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get sends one keep-alive GET on conn and prints the outcome; it reports whether an answer came.
func get(conn net.Conn, br *bufio.Reader, host, path string, timeout time.Duration) bool {
	fmt.Printf("=== GET %s\n", path)
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
		fmt.Printf("error write: %v\n", err)
		return false
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		fmt.Printf("error read: %v\n", err)
		return false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		fmt.Printf("error body: %v\n", err)
		return false
	}
	fmt.Printf("%d\n%s\n", resp.StatusCode, b)
	return true
}
