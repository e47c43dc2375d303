package stack

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
)

// AuditReceiver is the target of MinIO's audit webhook: it keeps every entry MinIO sends, for the tests that
// learn from what workloads really called (issue 17). It listens on loopback, where MinIO runs.
type AuditReceiver struct {
	url     string
	mu      sync.Mutex
	entries []AuditEntry
}

// AuditEntry is the part of a MinIO audit entry the tests read.
type AuditEntry struct {
	Time string `json:"time"`
	API  struct {
		Name       string `json:"name"`
		Bucket     string `json:"bucket"`
		Object     string `json:"object"`
		StatusCode int    `json:"statusCode"`
	} `json:"api"`
	RemoteHost    string            `json:"remotehost"`
	RequestID     string            `json:"requestID"`
	UserAgent     string            `json:"userAgent"`
	AccessKey     string            `json:"accessKey"`
	RequestQuery  map[string]string `json:"requestQuery"`
	RequestHeader map[string]string `json:"requestHeader"`
}

func startAuditReceiver() (*AuditReceiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("audit receiver: %w", err)
	}
	a := &AuditReceiver{url: "http://" + l.Addr().String() + "/minio/audit"}
	go http.Serve(l, http.HandlerFunc(a.serve)) //nolint:errcheck // lives as long as the test process
	return a, nil
}

func (a *AuditReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// One entry per request, or several when MinIO batches them as a JSON array or as JSON lines.
	var batch []AuditEntry
	dec := json.NewDecoder(bytes.NewReader(body))
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if len(raw) > 0 && raw[0] == '[' {
			var many []AuditEntry
			if err := json.Unmarshal(raw, &many); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			batch = append(batch, many...)
			continue
		}
		var e AuditEntry
		if err := json.Unmarshal(raw, &e); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		batch = append(batch, e)
	}
	a.mu.Lock()
	a.entries = append(a.entries, batch...)
	a.mu.Unlock()
}

// Audit returns the entries MinIO has sent so far whose access key is one of keys (all of them when none given).
func (s *Stack) Audit(keys ...string) []AuditEntry {
	a := s.audit
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []AuditEntry
	for _, e := range a.entries {
		if len(keys) == 0 || slices.Contains(keys, e.AccessKey) {
			out = append(out, e)
		}
	}
	return out
}
