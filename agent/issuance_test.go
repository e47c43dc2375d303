package agent

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/agent/sts/ststest"
	"github.com/iamlet/iamlet/policy/issuance"
)

// readIssuance reads the issuance file's records with the reader `iamlet policy` uses; a file not yet created holds
// none.
func readIssuance(t *testing.T, path string) []issuance.Record {
	t.Helper()
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	recs, err := issuance.ReadFiles(path)
	if err != nil {
		t.Fatalf("issuance records in %s: %v", path, err)
	}
	return recs
}

func issuanceLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("reading the issuance file: %v", err)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(b) > 0 && !bytes.HasSuffix(b, []byte("\n")) {
		t.Errorf("the issuance file does not end its last line:\n%s", b)
	}
	return lines
}

// TestIssuanceFile: every credential set issued, first and refreshed, is one JSON line holding exactly the fields of
// issuance.Record, its session policy as the SHA-256 of the compact policy STS was sent, and no secret; the log of the same
// issuances holds none either.
func TestIssuanceFile(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string
		chained     bool
	}{
		{"plain role", map[string]string{roles.AnnotationRoleARN: testRoleARN}, false},
		{"session policies", map[string]string{roles.AnnotationRoleARN: testRoleARN, roles.AnnotationSessionPolicy: sessionPolicy,
			roles.AnnotationSessionPolicyARNs: sessionPolicyARN}, false},
		{"chained with session policies", chainedAnnotations(chainExternalID), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rig := newCredentialRig(t, tt.annotations)
			var want []issuance.Record
			for round := range 2 {
				if round > 0 {
					rig.refresh(t)
				}
				if _, err := rig.serve(t); err != nil {
					t.Fatalf("round %d: Credentials() error = %v", round, err)
				}
				// The served session is the last one STS issued, by the call that carried the session policies.
				calls, sessions := rig.sts.Calls(), rig.issued.all()
				call, served := calls[len(calls)-1], sessions[len(sessions)-1]
				rec := issuance.Record{Time: rig.clock.Now().UTC(), AccessKeyID: served.accessKeyID, RoleARN: testRoleARN,
					SessionName: testSessionName, Namespace: testPod.Namespace, Pod: testPod.Name, PodUID: string(testPod.UID),
					ServiceAccount: testPod.ServiceAccount, SessionPolicyARNs: call.PolicyARNs, Expiration: served.expiration}
				if tt.chained {
					rec.ChainedRoleARN = chainedRoleARN
					if call.Action != ststest.AssumeRole {
						t.Fatalf("round %d: the last STS call is %s, want the chained AssumeRole", round, call.Action)
					}
				}
				if call.Policy != "" {
					sum := sha256.Sum256([]byte(call.Policy))
					rec.SessionPolicySHA256 = hex.EncodeToString(sum[:])
				}
				if _, narrowed := tt.annotations[roles.AnnotationSessionPolicy]; narrowed != (call.Policy != "") {
					t.Fatalf("round %d: session policy sent = %q, want one exactly when annotated", round, call.Policy)
				}
				want = append(want, rec)
			}

			lines := issuanceLines(t, rig.file)
			if len(lines) != len(want) {
				t.Fatalf("issuance file has %d lines, want %d:\n%s", len(lines), len(want), strings.Join(lines, "\n"))
			}
			for i, line := range lines {
				if got, want := jsonObject(t, line), issuanceObject(t, want[i]); !reflect.DeepEqual(got, want) {
					t.Errorf("issuance record %d = %v, want %v", i, got, want)
				}
			}

			secrets := rig.issued.secrets()
			assertHoldsNoSecret(t, "the issuance file", strings.Join(lines, "\n"), secrets)
			logs := rig.logs.String()
			assertHoldsNoSecret(t, "the log", logs, secrets)
			if n := strings.Count(logs, `"msg":"credentials issued"`); n != len(want) {
				t.Errorf("the log has %d issuance lines, want %d:\n%s", n, len(want), logs)
			}
			for _, rec := range want {
				if !strings.Contains(logs, `"access_key_id":"`+rec.AccessKeyID+`"`) {
					t.Errorf("the log does not name access key %s:\n%s", rec.AccessKeyID, logs)
				}
			}
		})
	}
}

// issuanceObject is rec as the issuance file should hold it, decoded as jsonObject decodes a line.
func issuanceObject(t *testing.T, rec issuance.Record) map[string]any {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatalf("json.Marshal(%+v) error = %v", rec, err)
	}
	return jsonObject(t, string(b))
}

// jsonObject decodes one JSON object generically, so that a field issuance.Record does not have is seen, not dropped.
func jsonObject(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("json.Unmarshal(%q) error = %v", s, err)
	}
	return m
}

// TestIssuanceFileFailingIsCounted: a record the issuance file does not take (the disk full, the file gone) costs the
// pod nothing, and is counted where an alert can see it, beside the log line that still holds the issuance.
func TestIssuanceFileFailingIsCounted(t *testing.T) {
	rig := newCredentialRig(t, map[string]string{roles.AnnotationRoleARN: testRoleARN})
	if err := rig.record.Close(); err != nil { // every write now fails
		t.Fatal(err)
	}
	if _, err := rig.serve(t); err != nil {
		t.Fatalf("Credentials() with the issuance file failing = %v, want credentials", err)
	}
	if got := testutil.ToFloat64(rig.metrics.unrecorded); got != 1 {
		t.Errorf("iamlet_issuance_write_errors_total = %v, want 1", got)
	}
	if !strings.Contains(rig.logs.String(), "issuance record not written") {
		t.Errorf("the log does not say the record was not written:\n%s", rig.logs.String())
	}
}
