// Command firstcreds is a pod's first request, made the instant its container starts: the IMDSv2 exchange an SDK
// makes (token, role name, credentials), once, with no retry, so a refusal or a wait is seen rather than hidden by an
// SDK's retries. It prints one line:
//
//	firstcreds ok ROLE ACCESSKEYID MILLISECONDS   (from the process's start to the credentials)
//	firstcreds fail STEP STATUS-OR-ERROR MILLISECONDS
//
// With -for it repeats the exchange (every -every) for that long, as steady load, printing one line per round with
// the round's start in milliseconds since the process started: "round T ok ROLE KEY MS" or "round T fail STEP WHAT MS".
// With -keep-token it keeps the first IMDSv2 token for every round, as SDKs keep theirs for its lifetime.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	start := time.Now()
	base := flag.String("imds", "http://169.254.169.254", "the instance metadata endpoint")
	repeatFor := flag.Duration("for", 0, "repeat for this long (0: once)")
	every := flag.Duration("every", 50*time.Millisecond, "with -for, the pause between rounds")
	keep := flag.Bool("keep-token", false, "with -for, fetch the IMDSv2 token once and use it in every round")
	flag.Parse()
	// A connection per request, as a fresh SDK process makes, and no keep-alive across a rollout.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if *repeatFor == 0 {
		res, ok := exchange(c, *base, nil)
		fmt.Printf("firstcreds %s %.1f\n", res, ms(start))
		if !ok {
			os.Exit(1)
		}
		return
	}
	var kept *string
	if *keep {
		kept = new(string)
	}
	for time.Since(start) < *repeatFor {
		t := time.Now()
		res, _ := exchange(c, *base, kept)
		fmt.Printf("round %.0f %s %.1f\n", float64(t.Sub(start).Milliseconds()), res, ms(t))
		time.Sleep(*every)
	}
}

// exchange is one IMDSv2 credential exchange: "ok ROLE KEY" or "fail STEP WHAT". With kept, a token it holds is
// used rather than a new one, and a new one is kept.
func exchange(c *http.Client, base string, kept *string) (string, bool) {
	var token string
	if kept != nil {
		token = *kept
	}
	if token == "" {
		req, _ := http.NewRequest(http.MethodPut, base+"/latest/api/token", nil)
		req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
		var status int
		var err error
		token, status, err = do(c, req)
		if err != nil || status != http.StatusOK {
			return fmt.Sprintf("fail token %v", orStatus(err, status)), false
		}
		if kept != nil {
			*kept = token
		}
	}
	get := func(path string) (string, int, error) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.Header.Set("X-aws-ec2-metadata-token", token)
		return do(c, req)
	}
	role, status, err := get("/latest/meta-data/iam/security-credentials/")
	if err != nil || status != http.StatusOK {
		return fmt.Sprintf("fail role %v", orStatus(err, status)), false
	}
	role = strings.TrimSpace(role)
	body, status, err := get("/latest/meta-data/iam/security-credentials/" + role)
	if err != nil || status != http.StatusOK {
		return fmt.Sprintf("fail credentials %v", orStatus(err, status)), false
	}
	var creds struct{ AccessKeyId string }
	if err := json.Unmarshal([]byte(body), &creds); err != nil || creds.AccessKeyId == "" {
		return "fail credentials unreadable", false
	}
	return fmt.Sprintf("ok %s %s", role, creds.AccessKeyId), true
}

func do(c *http.Client, req *http.Request) (string, int, error) {
	resp, err := c.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return string(b), resp.StatusCode, err
}

func orStatus(err error, status int) any {
	if err != nil {
		return strings.ReplaceAll(err.Error(), " ", "_")
	}
	return status
}

func ms(since time.Time) float64 { return float64(time.Since(since).Microseconds()) / 1000 }
