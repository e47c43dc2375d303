// Command spoofdial dials ADDR from source address SRC and reports whether the TCP handshake
// completed, then asks for the role listing: "connected" and the answer, or "failed: ...".
//
//	spoofdial SRC ADDR
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: spoofdial SRC ADDR")
		os.Exit(2)
	}
	d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(os.Args[1])}}
	c, err := d.Dial("tcp", os.Args[2])
	if err != nil {
		fmt.Println("failed:", err)
		return
	}
	defer c.Close()
	fmt.Println("connected")
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = io.WriteString(c, "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		b, _ := io.ReadAll(resp.Body)
		fmt.Println(resp.StatusCode, string(b))
	}
}
