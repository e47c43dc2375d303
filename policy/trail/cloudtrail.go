package trail

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"
)

// Event is the part of a CloudTrail record that attribution and mapping read.
type Event struct {
	EventTime          time.Time         `json:"eventTime"`
	EventSource        string            `json:"eventSource"`
	EventName          string            `json:"eventName"`
	AWSRegion          string            `json:"awsRegion"`
	RecipientAccountID string            `json:"recipientAccountId"`
	ErrorCode          string            `json:"errorCode"`
	EventID            string            `json:"eventID"`
	UserIdentity       UserIdentity      `json:"userIdentity"`
	RequestParameters  map[string]any    `json:"requestParameters"`
	ResponseElements   *ResponseElements `json:"responseElements"`
}

// UserIdentity is CloudTrail's userIdentity element.
type UserIdentity struct {
	Type        string `json:"type"`
	PrincipalID string `json:"principalId"`
	ARN         string `json:"arn"`
	AccountID   string `json:"accountId"`
	AccessKeyID string `json:"accessKeyId"`
	InvokedBy   string `json:"invokedBy"`
}

// ResponseElements holds what an STS AssumeRole* response tells: which access key belongs to which session.
// Other services' responses are not read.
type ResponseElements struct {
	Credentials *struct {
		AccessKeyID string `json:"accessKeyId"`
	} `json:"credentials"`
	AssumedRoleUser *struct {
		ARN string `json:"arn"`
	} `json:"assumedRoleUser"`
}

// UnmarshalJSON keeps only the object form; services also answer with strings, arrays or null.
func (r *ResponseElements) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || b[0] != '{' {
		return nil
	}
	type plain ResponseElements
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		// A response whose credentials or assumedRoleUser are not the STS shape is some other service's.
		return nil
	}
	*r = ResponseElements(p)
	return nil
}

// ReadCloudTrail reads CloudTrail log files as delivered to S3 ({"Records":[...]}, gzipped or not) from files and
// directories (walked recursively for *.json.gz and *.json). A file named more than once, or also found in a
// directory given, is read once.
func ReadCloudTrail(paths ...string) ([]Event, error) {
	var files []string
	seen := map[string]bool{}
	add := func(path string) error {
		path = filepath.Clean(path)
		abs, err := filepath.Abs(path)
		if err != nil {
			return err
		}
		if !seen[abs] {
			seen[abs] = true
			files = append(files, path)
		}
		return nil
	}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			if err := add(p); err != nil {
				return nil, err
			}
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(path, ".json.gz") || strings.HasSuffix(path, ".json")) {
				return add(path)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	var events []Event
	for _, f := range files {
		ev, err := readCloudTrailFile(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		events = append(events, ev...)
	}
	return events, nil
}

func readCloudTrailFile(name string) ([]Event, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	// Gzip by content, not name: S3 downloads sometimes lose the suffix, or keep it on an already-inflated file.
	head := make([]byte, 2)
	if n, _ := io.ReadFull(f, head); n == 2 && head[0] == 0x1f && head[1] == 0x8b {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		r = zr
	} else if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return DecodeCloudTrail(r)
}

// DecodeCloudTrail reads one CloudTrail log file's content: {"Records":[...]}.
func DecodeCloudTrail(r io.Reader) ([]Event, error) {
	var file struct {
		Records *[]Event `json:"Records"`
	}
	if err := json.NewDecoder(r).Decode(&file); err != nil {
		return nil, fmt.Errorf("not a CloudTrail log file: %w", err)
	}
	if file.Records == nil {
		return nil, errors.New(`not a CloudTrail log file: no "Records"`)
	}
	return *file.Records, nil
}

// AccessDenied says whether the call was refused by IAM: it needed a permission it did not have.
func (e *Event) AccessDenied() bool {
	switch e.ErrorCode {
	case "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Client.UnauthorizedOperation", "UnauthorizedAccess":
		return true
	}
	return false
}

func (e *Event) partition() string {
	if p := strings.Split(e.UserIdentity.ARN, ":"); len(p) > 2 && p[0] == "arn" {
		return p[1]
	}
	switch {
	case strings.HasPrefix(e.AWSRegion, "cn-"):
		return "aws-cn"
	case strings.HasPrefix(e.AWSRegion, "us-gov-"):
		return "aws-us-gov"
	}
	return "aws"
}

func (e *Event) account() string {
	if e.RecipientAccountID != "" {
		return e.RecipientAccountID
	}
	return e.UserIdentity.AccountID
}

// lookup finds a request parameter by the SDK's name (a dotted path; "[]" for each element of an array), trying
// CloudTrail's spellings: the event source's aliases, the name itself, and lowerCamel case.
func (e *Event) lookup(path string) []string {
	values := []any{map[string]any(e.RequestParameters)}
	for _, seg := range strings.Split(path, ".") {
		each := strings.HasSuffix(seg, "[]")
		seg = strings.TrimSuffix(seg, "[]")
		var next []any
		for _, v := range values {
			obj, ok := v.(map[string]any)
			if !ok {
				continue
			}
			val, found := field(obj, seg, parameterAliases[e.EventSource])
			if !found {
				continue
			}
			if list, ok := val.([]any); ok && each {
				next = append(next, list...)
			} else {
				next = append(next, val)
			}
		}
		values = next
	}
	var out []string
	for _, v := range values {
		switch v := v.(type) {
		case string:
			if v != "" {
				out = append(out, v)
			}
		case float64, bool:
			out = append(out, fmt.Sprint(v))
		case []any:
			for _, x := range v {
				if s, ok := x.(string); ok && s != "" {
					out = append(out, s)
				}
			}
		}
	}
	return slices.Compact(out)
}

func field(obj map[string]any, name string, aliases map[string]string) (any, bool) {
	if a, ok := aliases[name]; ok {
		if v, ok := obj[a]; ok {
			return v, true
		}
	}
	if v, ok := obj[name]; ok {
		return v, true
	}
	if name != "" {
		r := []rune(name)
		r[0] = unicode.ToLower(r[0])
		if v, ok := obj[string(r)]; ok {
			return v, true
		}
	}
	return nil, false
}
