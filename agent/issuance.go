package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/policy/issuance"
)

// issuanceOf is the record of credentials c fetched for r: what `iamlet policy` joins with CloudTrail. It identifies
// the credentials (the access key ID, which CloudTrail logs) and never holds a secret.
func issuanceOf(r creds.Request, c creds.Credentials, issued time.Time) issuance.Record {
	return issuance.Record{Time: issued.UTC(), AccessKeyID: c.AccessKeyID, RoleARN: r.RoleARN, ChainedRoleARN: r.ChainRoleARN,
		SessionName: c.SessionName, Namespace: r.Namespace, Pod: r.Pod, PodUID: r.PodUID, ServiceAccount: r.ServiceAccount,
		SessionPolicySHA256: r.SessionPolicySHA256, SessionPolicyARNs: r.SessionPolicyARNs, Expiration: c.Expiration.UTC()}
}

// issuanceFile appends issuance records to a file as JSON lines, for an operator's log shipper. Writes are
// synchronous, by the fetch that obtained the credentials: a record the file lost would be a call `iamlet policy`
// cannot attribute.
type issuanceFile struct {
	mu sync.Mutex
	w  io.WriteCloser
}

func openIssuanceFile(path string) (*issuanceFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("issuance record: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("issuance record: %w", err)
	}
	return &issuanceFile{w: f}, nil
}

func (f *issuanceFile) write(rec issuance.Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err = f.w.Write(append(b, '\n'))
	return err
}

func (f *issuanceFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w.Close()
}
