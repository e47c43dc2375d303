// Command soakload asks the metadata service for its pod's credentials in a loop, the way SDKs do
// (token, role listing, credential document), for a bounded time, and prints one JSON summary: how many
// answers, which role names and access key ids it was served, and whether any node marker appeared.
package main

import (
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

type summary struct {
	Requests int            `json:"requests"`
	Served   int            `json:"served"`
	Errors   map[string]int `json:"errors"`
	Roles    map[string]int `json:"roles"`
	KeyIDs   map[string]int `json:"keyIDs"`
	Markers  int            `json:"markers"`
}

func main() {
	base := flag.String("url", "http://169.254.169.254", "metadata base URL")
	dur := flag.Duration("for", time.Minute, "how long to run (at most 1h)")
	every := flag.Duration("every", 200*time.Millisecond, "pause between rounds")
	markers := flag.String("markers", "", "comma-separated strings that must never appear")
	until := flag.String("until", "", "stop early once this file exists")
	flag.Parse()
	s := summary{Errors: map[string]int{}, Roles: map[string]int{}, KeyIDs: map[string]int{}}
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(min(*dur, time.Hour))
	bad := strings.Split(*markers, ",")
	do := func(method, path, token string) (int, string) {
		s.Requests++
		req, _ := http.NewRequest(method, *base+path, nil)
		if method == http.MethodPut {
			req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "300")
		} else {
			req.Header.Set("X-aws-ec2-metadata-token", token)
		}
		resp, err := c.Do(req)
		if err != nil {
			s.Errors["transport"]++
			return 0, ""
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		body := string(b)
		for _, m := range bad {
			if m != "" && strings.Contains(body, m) {
				s.Markers++
			}
		}
		if resp.StatusCode != http.StatusOK {
			s.Errors[resp.Status]++
		}
		return resp.StatusCode, body
	}
	for time.Now().Before(deadline) {
		code, token := do(http.MethodPut, "/latest/api/token", "")
		if code == http.StatusOK {
			if code, role := do(http.MethodGet, "/latest/meta-data/iam/security-credentials/", token); code == http.StatusOK {
				s.Roles[role]++
				if code, doc := do(http.MethodGet, "/latest/meta-data/iam/security-credentials/"+role, token); code == http.StatusOK {
					var d struct{ AccessKeyId string }
					if json.Unmarshal([]byte(doc), &d) == nil {
						s.KeyIDs[d.AccessKeyId]++
						s.Served++
					}
				}
			}
		}
		if *until != "" {
			if _, err := os.Stat(*until); err == nil {
				break
			}
		}
		time.Sleep(*every)
	}
	_ = json.NewEncoder(os.Stdout).Encode(s)
}
