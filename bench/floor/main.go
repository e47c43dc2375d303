// Command floor is the baseline the benchmark holds iamlet's cached answer against: the most trivial Go
// HTTP server that answers the same bytes on the same path (and the IMDSv2 token PUT before it), with
// the same headers, and does nothing else: no caller identification, no token check, no metrics. Reached
// through a DNAT rule of the same kind as iamlet's, it is the floor of this machine's network path.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18181", "listen address")
	path := flag.String("path", "/latest/meta-data/iam/security-credentials/role", "the path answered with -body")
	bodyFile := flag.String("body", "", "file holding the answer's bytes")
	flag.Parse()
	if err := run(*addr, *path, *bodyFile); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(addr, path, bodyFile string) error {
	body, err := os.ReadFile(bodyFile)
	if err != nil {
		return err
	}
	token := []byte("floor-token-0123456789abcdef0123456789abcdef0123456789abcdef")
	length := strconv.Itoa(len(body))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == path:
			hd := w.Header()
			hd["Content-Type"] = []string{"text/plain"}
			hd["Content-Length"] = []string{length}
			hd["Server"] = []string{"EC2ws"}
			_, _ = w.Write(body)
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
			_, _ = w.Write(token)
		default:
			http.NotFound(w, r)
		}
	})
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 2 * time.Second, IdleTimeout: 60 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
