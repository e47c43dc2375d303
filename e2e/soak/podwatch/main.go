// Command podwatch runs in a pod during the soak and asks for the pod's credentials round after round, as SDKs do
// (token, role listing, credential document), each request on a connection of its own so every one passes the
// node's interception afresh. It prints one line per round, so the soak can tell when answers stopped and resumed:
//
//	<unix nanoseconds when the round ended> <kind> [detail]
//
// where kind is served (detail: role and access key id), wrongrole (a role other than -role was listed), refused
// (connection refused), timeout, error (any other transport failure), iamlet (a refusal of iamlet's own: status and
// text), other (an answer that is neither iamlet's nor a credential: status and body) or node (a node marker).
// It stops after -for, after the first served round with -until-served, or once the file -until names exists.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	base := flag.String("url", "http://169.254.169.254", "metadata base URL")
	role := flag.String("role", "", "the role this pod must be served")
	dur := flag.Duration("for", time.Minute, "how long to run (at most 1h)")
	every := flag.Duration("every", 20*time.Millisecond, "pause between rounds")
	markers := flag.String("markers", "", "comma-separated strings that must never appear")
	nodePaths := flag.Bool("node-paths", false, "also ask for the node role and user-data without a token each round")
	untilServed := flag.Bool("until-served", false, "stop after the first served round")
	until := flag.String("until", "", "stop once this file exists")
	flag.Parse()

	w := &watcher{base: *base, role: *role, bad: strings.Split(*markers, ","),
		// No keep-alive: a connection held to the old agent would hide what a new connection gets.
		c: &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	deadline := time.Now().Add(min(*dur, time.Hour))
	for time.Now().Before(deadline) {
		kind, detail := w.round(*nodePaths)
		fmt.Fprintf(out, "%d %s %s\n", time.Now().UnixNano(), kind, detail)
		out.Flush() // line by line: the soak reads while the round goes on
		if *untilServed && kind == "served" {
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

type watcher struct {
	base, role string
	bad        []string
	c          *http.Client
}

// answer is one request's outcome: kind is "" for a 200 without markers, so the round goes on.
type answer struct {
	kind, detail, body string
}

// round is one SDK-style credential fetch; the first step that is not a clean 200 decides the kind.
func (w *watcher) round(nodePaths bool) (kind, detail string) {
	if nodePaths {
		// What a pod gets when it asks the node's IMDS straight for its secrets: any answer but a node marker is fine.
		for _, path := range []string{"/latest/meta-data/iam/security-credentials/node-role", "/latest/user-data"} {
			if a := w.do(http.MethodGet, path, ""); a.kind == "node" {
				return a.kind, a.detail
			}
		}
	}
	tok := w.do(http.MethodPut, "/latest/api/token", "")
	if tok.kind != "" {
		return tok.kind, tok.detail
	}
	list := w.do(http.MethodGet, "/latest/meta-data/iam/security-credentials/", tok.body)
	if list.kind != "" {
		return list.kind, list.detail
	}
	if list.body != w.role {
		return "wrongrole", quote(list.body)
	}
	doc := w.do(http.MethodGet, "/latest/meta-data/iam/security-credentials/"+list.body, tok.body)
	if doc.kind != "" {
		return doc.kind, doc.detail
	}
	var d struct{ AccessKeyId string }
	if err := json.Unmarshal([]byte(doc.body), &d); err != nil || d.AccessKeyId == "" {
		return "other", "200 " + quote(doc.body)
	}
	return "served", list.body + " " + d.AccessKeyId
}

func (w *watcher) do(method, path, token string) answer {
	req, _ := http.NewRequest(method, w.base+path, nil)
	if method == http.MethodPut {
		req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "300")
	} else if token != "" {
		req.Header.Set("X-aws-ec2-metadata-token", token)
	}
	resp, err := w.c.Do(req)
	if err != nil {
		return transportAnswer(err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	body := string(b)
	for _, m := range w.bad {
		if m != "" && strings.Contains(body, m) {
			return answer{kind: "node", detail: m}
		}
	}
	if err != nil {
		return transportAnswer(err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return answer{body: body}
	case strings.HasPrefix(body, "iamlet: "):
		return answer{kind: "iamlet", detail: fmt.Sprintf("%d %s", resp.StatusCode, quote(body))}
	default:
		return answer{kind: "other", detail: fmt.Sprintf("%d %s", resp.StatusCode, quote(body))}
	}
}

func transportAnswer(err error) answer {
	var ne net.Error
	switch {
	case strings.Contains(err.Error(), "connection refused"):
		return answer{kind: "refused"}
	case errors.As(err, &ne) && ne.Timeout():
		return answer{kind: "timeout"}
	default:
		return answer{kind: "error", detail: quote(err.Error())}
	}
}

// quote keeps a detail on one line and short.
func quote(s string) string {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return fmt.Sprintf("%q", s)
}
