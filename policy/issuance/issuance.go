// Package issuance is the record of each credential set the agent issues: what a pod got, for which role and
// session. Joined with CloudTrail (package policy/trail) it tells which workload made which call. The agent writes
// records; this package owns their format and reads them back.
package issuance

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"
)

// Record is one credential set the agent served: the agent's issuance file holds one per line, and its JSON log
// carries the same fields on each "credentials issued" line. Access key IDs identify credentials; they are not
// secrets.
type Record struct {
	Time                time.Time `json:"time"`
	AccessKeyID         string    `json:"access_key_id"`
	RoleARN             string    `json:"role_arn"`
	ChainedRoleARN      string    `json:"chained_role_arn,omitempty"`
	SessionName         string    `json:"session_name"`
	Namespace           string    `json:"namespace"`
	Pod                 string    `json:"pod"`
	PodUID              string    `json:"pod_uid"`
	ServiceAccount      string    `json:"service_account"`
	SessionPolicySHA256 string    `json:"session_policy_sha256,omitempty"`
	SessionPolicyARNs   []string  `json:"session_policy_arns,omitempty"`
	Expiration          time.Time `json:"expiration"`
}

// ServedRole is the role whose credentials the pod got: the chained role when there is one.
func (r Record) ServedRole() string {
	if r.ChainedRoleARN != "" {
		return r.ChainedRoleARN
	}
	return r.RoleARN
}

// LogMessage is the agent's log message for an issuance (agent/observer.go): its log lines carry the record's
// fields, as LogAttrs gives them.
const LogMessage = "credentials issued"

// LogAttrs are the record's fields as log attributes, under the names its JSON form uses, so that Decode reads the
// agent's log lines as it reads the issuance file. The line's own time stands for Time.
func (r Record) LogAttrs() []slog.Attr {
	attrs := []slog.Attr{slog.String("access_key_id", r.AccessKeyID), slog.String("role_arn", r.RoleARN),
		slog.String("session_name", r.SessionName), slog.String("namespace", r.Namespace), slog.String("pod", r.Pod),
		slog.String("pod_uid", r.PodUID), slog.String("service_account", r.ServiceAccount), slog.Time("expiration", r.Expiration)}
	if r.ChainedRoleARN != "" {
		attrs = append(attrs, slog.String("chained_role_arn", r.ChainedRoleARN))
	}
	if r.SessionPolicySHA256 != "" {
		attrs = append(attrs, slog.String("session_policy_sha256", r.SessionPolicySHA256))
	}
	if len(r.SessionPolicyARNs) > 0 {
		attrs = append(attrs, slog.Any("session_policy_arns", r.SessionPolicyARNs))
	}
	return attrs
}

// ReadFiles reads issuance records from files: the agent's --issuance-file, or its JSON log (kubectl logs,
// with or without --prefix), of which only "credentials issued" lines count.
func ReadFiles(paths ...string) ([]Record, error) {
	var out []Record
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		recs, err := Decode(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, recs...)
	}
	return out, nil
}

// Decode reads issuance records, one JSON object a line. A line with a "msg" is an agent log line and
// counts only when it is "credentials issued"; lines that hold no JSON object (text logs, blank lines) are skipped,
// and so are lines longer than maxLine: no record is anywhere near that long, and a log may hold such a line.
func Decode(r io.Reader) ([]Record, error) {
	var out []Record
	err := eachLine(r, maxLine, func(n int, line []byte) error {
		// kubectl logs --prefix puts "[pod/NAME/CONTAINER] " before each line.
		i := bytes.IndexByte(line, '{')
		if i < 0 {
			return nil
		}
		line = line[i:]
		var probe struct {
			Msg *string `json:"msg"`
		}
		if err := json.Unmarshal(line, &probe); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if probe.Msg != nil && *probe.Msg != LogMessage {
			return nil
		}
		var rec Record
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if err := rec.validate(); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}

// maxLine bounds the lines Decode reads. A record is a few hundred bytes: the session policy is in it only as a hash.
const maxLine = 1 << 20

// eachLine calls f with each line of r that is at most max bytes long, without its line ending, numbered from 1.
// Longer lines are skipped whole, read but never held.
func eachLine(r io.Reader, max int, f func(n int, line []byte) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	long := false
	for n := 1; ; {
		chunk, err := br.ReadSlice('\n')
		if long = long || len(line)+len(chunk) > max; !long {
			line = append(line, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue // the same line goes on
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if !long && len(line) > 0 {
			if ferr := f(n, bytes.TrimRight(line, "\r\n")); ferr != nil {
				return ferr
			}
		}
		if err != nil { // io.EOF
			return nil
		}
		n, line, long = n+1, line[:0], false
	}
}

func (r Record) validate() error {
	var missing []string
	for name, v := range map[string]string{"access_key_id": r.AccessKeyID, "role_arn": r.RoleARN, "session_name": r.SessionName,
		"namespace": r.Namespace, "service_account": r.ServiceAccount} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("record without %s", strings.Join(missing, ", "))
	}
	if r.Time.IsZero() {
		return errors.New("record without time")
	}
	return nil
}
