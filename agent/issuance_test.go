package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/agent/sts/ststest"
	"github.com/iamlet/iamlet/policy/issuance"
)

// flushIssuance waits until the rig's issuance file has written what was queued.
func flushIssuance(t *testing.T, rig *credentialRig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := rig.record.flush(ctx); err != nil {
		t.Fatalf("flushing the issuance file: %v", err)
	}
}

// readIssuance reads the issuance file's records, once written, with the reader `iamlet policy` uses; a file not yet
// created holds none.
func readIssuance(t *testing.T, rig *credentialRig) []issuance.Record {
	t.Helper()
	flushIssuance(t, rig)
	path := rig.file
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	recs, err := issuance.ReadFiles(path)
	if err != nil {
		t.Fatalf("issuance records in %s: %v", path, err)
	}
	return recs
}

func issuanceLines(t *testing.T, rig *credentialRig) []string {
	t.Helper()
	flushIssuance(t, rig)
	b, err := os.ReadFile(rig.file)
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

			lines := issuanceLines(t, rig)
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

// writeTo makes the rig's issuance records go to w, through a queue of the given length.
func (r *credentialRig) writeTo(w io.WriteCloser, queue int, closeWait time.Duration) {
	_ = r.record.Close()
	r.record = newIssuanceFile(w, queue, closeWait, issuanceNotWritten(r.metrics, r.log))
	r.fetcher.issued = r.record
}

// disk is an issuance file's disk: Write fails with err, or, while stalled is open, waits for it to close.
type disk struct {
	mu      sync.Mutex
	lines   []string
	err     error
	stalled chan struct{}
	writing chan struct{} // gets a value when a Write starts
}

func (d *disk) Write(b []byte) (int, error) {
	if d.writing != nil {
		d.writing <- struct{}{}
	}
	if d.stalled != nil {
		<-d.stalled
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return 0, d.err
	}
	d.lines = append(d.lines, string(b))
	return len(b), nil
}

func (d *disk) Close() error { return nil }

func (d *disk) written() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.lines)
}

// TestIssuanceFileFailingIsCounted: a record the issuance file does not take (the disk full, the file gone) costs the
// pod nothing, and is counted where an alert can see it, beside the log line that still holds the issuance.
func TestIssuanceFileFailingIsCounted(t *testing.T) {
	rig := newCredentialRig(t, map[string]string{roles.AnnotationRoleARN: testRoleARN})
	rig.writeTo(&disk{err: syscall.ENOSPC}, issuanceQueue, issuanceCloseWait)
	if _, err := rig.serve(t); err != nil {
		t.Fatalf("Credentials() with the issuance file failing = %v, want credentials", err)
	}
	flushIssuance(t, rig)
	if got := testutil.ToFloat64(rig.metrics.unrecorded); got != 1 {
		t.Errorf("iamlet_issuance_write_errors_total = %v, want 1", got)
	}
	if out := rig.logs.String(); !strings.Contains(out, "issuance record not written") || !strings.Contains(out, "no space left") {
		t.Errorf("the log does not say the record was not written, and why:\n%s", out)
	}
}

// TestStalledIssuanceDiskDelaysNoPod: a disk that stops answering (a stuck volume) holds up no fetch. Records queue
// for it; one the full queue cannot take is counted as not written at once; Close gives up on the disk within its
// bound and reports what still waited, record by record.
func TestStalledIssuanceDiskDelaysNoPod(t *testing.T) {
	rig := newCredentialRig(t, map[string]string{roles.AnnotationRoleARN: testRoleARN})
	d := &disk{stalled: make(chan struct{}), writing: make(chan struct{}, 8)}
	rig.writeTo(d, 1, 10*time.Millisecond)
	answer := sync.OnceFunc(func() { close(d.stalled) })
	t.Cleanup(answer) // should the test fail with a fetch stuck on the disk

	served := make(chan error, 1)
	go func() {
		_, err := rig.serve(t)
		served <- err
	}()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Credentials() with the disk stalled = %v, want credentials", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Credentials() waited on a stalled disk")
	}
	<-d.writing // the first record is in the disk's hands; the next fills the queue, the one after finds it full
	rig.refresh(t)
	rig.refresh(t)
	if got := testutil.ToFloat64(rig.metrics.unrecorded); got != 1 {
		t.Errorf("iamlet_issuance_write_errors_total with the queue full = %v, want 1", got)
	}
	// The record the disk holds is its own; the one still queued is reported when Close gives up on the disk.
	if err := rig.record.Close(); err == nil || !strings.Contains(err.Error(), "1 records not written") {
		t.Errorf("Close() with the disk stalled = %v, want an error saying 1 record is not written", err)
	}
	if got := testutil.ToFloat64(rig.metrics.unrecorded); got != 2 {
		t.Errorf("iamlet_issuance_write_errors_total after Close gave up = %v, want 2", got)
	}
	answer()
	select {
	case <-rig.record.done:
	case <-time.After(time.Minute):
		t.Fatal("the issuance writer did not finish once the disk answered")
	}
	if lines := d.written(); len(lines) != 1 {
		t.Errorf("the disk got %d records once it answered, want the 1 it was writing:\n%s", len(lines), lines)
	}
}

// fillingFile is an issuance file on a disk that fills up: while full, a write takes half the line and fails.
type fillingFile struct {
	mu   sync.Mutex
	b    []byte
	full bool
}

func (f *fillingFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.full {
		f.b = append(f.b, p[:len(p)/2]...)
		return len(p) / 2, syscall.ENOSPC
	}
	f.b = append(f.b, p...)
	return len(p), nil
}

func (f *fillingFile) Stat() (os.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return sizeInfo(len(f.b)), nil
}

func (f *fillingFile) Truncate(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.b = f.b[:n]
	return nil
}

func (f *fillingFile) Close() error { return nil }

func (f *fillingFile) setFull(full bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.full = full
}

func (f *fillingFile) content() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bytes.Clone(f.b)
}

// sizeInfo is an os.FileInfo that knows only its size.
type sizeInfo int64

func (s sizeInfo) Size() int64      { return int64(s) }
func (sizeInfo) Name() string       { return "issuance.jsonl" }
func (sizeInfo) Mode() fs.FileMode  { return 0o640 }
func (sizeInfo) ModTime() time.Time { return time.Time{} }
func (sizeInfo) IsDir() bool        { return false }
func (sizeInfo) Sys() any           { return nil }

// TestFullDiskLeavesNoTornRecord: a record the disk takes only part of is taken back, so the file stays one whole
// record a line and `iamlet policy` still reads it once the disk has room again; the lost record is counted.
func TestFullDiskLeavesNoTornRecord(t *testing.T) {
	rig := newCredentialRig(t, map[string]string{roles.AnnotationRoleARN: testRoleARN})
	file := &fillingFile{}
	rig.writeTo(file, issuanceQueue, issuanceCloseWait)
	if _, err := rig.serve(t); err != nil {
		t.Fatal(err)
	}
	flushIssuance(t, rig)
	file.setFull(true)
	rig.refresh(t)
	flushIssuance(t, rig)
	file.setFull(false)
	rig.refresh(t)
	flushIssuance(t, rig)

	if got := testutil.ToFloat64(rig.metrics.unrecorded); got != 1 {
		t.Errorf("iamlet_issuance_write_errors_total = %v, want 1 (the record the full disk cut)", got)
	}
	recs, err := issuance.Decode(bytes.NewReader(file.content()))
	if err != nil || len(recs) != 2 {
		t.Errorf("the file after a full disk: %d records, %v; want the 2 written whole, readable:\n%s", len(recs), err, file.content())
	}
}

// flush waits until the records queued before it are written, or ctx ends.
func (f *issuanceFile) flush(ctx context.Context) error {
	mark := make(chan struct{})
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		return errIssuanceClosed
	}
	select {
	case f.queue <- issuanceItem{flushed: mark}:
		f.mu.Unlock()
	default:
		f.mu.Unlock()
		return errIssuanceQueueFull
	}
	select {
	case <-mark:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
