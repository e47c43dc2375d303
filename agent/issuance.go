package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/policy/issuance"
)

// issuanceNotWritten counts and logs a record the issuance file did not take; the log line carries the record.
func issuanceNotWritten(m *metrics, log *slog.Logger) func(issuance.Record, error) {
	return func(rec issuance.Record, err error) {
		m.unrecorded.Inc()
		log.LogAttrs(context.Background(), slog.LevelError, "issuance record not written",
			append(rec.LogAttrs(), slog.Bool("audit", true), slog.String("error", err.Error()))...)
	}
}

// issuanceOf is the record of credentials c fetched for r: what `iamlet policy` joins with CloudTrail. It identifies
// the credentials (the access key ID, which CloudTrail logs) and never holds a secret.
func issuanceOf(r creds.Request, c creds.Credentials, issued time.Time) issuance.Record {
	return issuance.Record{Time: issued.UTC(), AccessKeyID: c.AccessKeyID, RoleARN: r.RoleARN, ChainedRoleARN: r.ChainRoleARN,
		SessionName: c.SessionName, Namespace: r.Namespace, Pod: r.Pod, PodUID: r.PodUID, ServiceAccount: r.ServiceAccount,
		SessionPolicySHA256: r.SessionPolicySHA256, SessionPolicyARNs: r.SessionPolicyARNs, Expiration: c.Expiration.UTC()}
}

// issuanceFile appends issuance records to a file as JSON lines, for an operator's log shipper. One goroutine writes
// them, in order; a fetch only queues its record, so a disk that stalls (a stuck volume) delays no pod's credentials.
// A record the queue cannot take, because the disk has stalled that long, or the file does not take, is reported to
// notWritten: counted and logged, as the issuance also is in the log.
type issuanceFile struct {
	w          io.WriteCloser
	notWritten func(issuance.Record, error)
	closeWait  time.Duration // how long Close waits for the queue to be written
	queue      chan issuanceItem
	done       chan struct{} // closed when the writer has written what was queued and closed w
	closed     error         // w's Close, once done is closed

	mu      sync.Mutex // orders write against Close, which closes queue
	closing bool
}

// issuanceItem is a record to write, or, with flushed set, a mark: the writer closes flushed when it reaches it (the
// tests wait on one to read what was written).
type issuanceItem struct {
	rec     issuance.Record
	flushed chan struct{}
}

// issuanceQueue is how many records may wait for the disk: minutes of a busy node's fetches.
const issuanceQueue = 1024

// issuanceCloseWait bounds how long Close waits for the queued records to be written: a stalled disk must not hold
// the agent past its termination grace period.
const issuanceCloseWait = 5 * time.Second

var (
	errIssuanceQueueFull = errors.New("the queue of records waiting for the disk is full")
	errIssuanceClosed    = errors.New("the issuance file is closed")
)

func openIssuanceFile(path string, notWritten func(issuance.Record, error)) (*issuanceFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("issuance record: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("issuance record: %w", err)
	}
	return newIssuanceFile(f, issuanceQueue, issuanceCloseWait, notWritten), nil
}

func newIssuanceFile(w io.WriteCloser, queue int, closeWait time.Duration, notWritten func(issuance.Record, error)) *issuanceFile {
	f := &issuanceFile{w: w, notWritten: notWritten, closeWait: closeWait, queue: make(chan issuanceItem, queue), done: make(chan struct{})}
	go f.run()
	return f
}

func (f *issuanceFile) run() {
	defer close(f.done)
	for it := range f.queue {
		if it.flushed != nil {
			close(it.flushed)
			continue
		}
		b, err := json.Marshal(it.rec)
		if err == nil {
			err = f.writeLine(append(b, '\n'))
		}
		if err != nil {
			f.notWritten(it.rec, err)
		}
	}
	f.closed = f.w.Close()
}

// sizedFile is a file whose writes can be taken back: the issuance file itself, not a test's writer.
type sizedFile interface {
	Stat() (os.FileInfo, error)
	Truncate(size int64) error
}

// writeLine appends line whole or not at all: a line the disk took only part of (it filled up) would leave the next
// record on the same line, and `iamlet policy` refuses a file with a line it cannot read.
func (f *issuanceFile) writeLine(line []byte) error {
	sf, sized := f.w.(sizedFile)
	var before int64
	if sized {
		fi, err := sf.Stat()
		if err != nil {
			return err
		}
		before = fi.Size()
	}
	n, err := f.w.Write(line)
	if err != nil && n > 0 && sized {
		// Not below what was there: a rotation may have emptied the file meanwhile, and truncating up would pad it.
		if fi, serr := sf.Stat(); serr == nil && fi.Size() >= before {
			if terr := sf.Truncate(before); terr != nil {
				return fmt.Errorf("%w; taking back the part written: %w", err, terr)
			}
		}
	}
	return err
}

// write queues rec without waiting for the disk.
func (f *issuanceFile) write(rec issuance.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing {
		f.notWritten(rec, errIssuanceClosed)
		return
	}
	select {
	case f.queue <- issuanceItem{rec: rec}:
	default:
		f.notWritten(rec, errIssuanceQueueFull)
	}
}

// Close writes what is queued and closes the file, waiting at most closeWait: what the disk has not taken by then is
// reported to notWritten, as is a write after Close.
func (f *issuanceFile) Close() error {
	f.mu.Lock()
	if !f.closing {
		f.closing = true
		close(f.queue)
	}
	f.mu.Unlock()
	t := time.NewTimer(f.closeWait)
	defer t.Stop()
	select {
	case <-f.done:
		return f.closed
	case <-t.C:
	}
	// The disk does not answer: what still waits is reported record by record, as a failed write is, not lost.
	n := 0
	for it := range f.queue {
		if it.flushed == nil {
			f.notWritten(it.rec, errIssuanceClosed)
			n++
		}
	}
	return fmt.Errorf("issuance file: %d records not written after %v: the disk does not answer", n, f.closeWait)
}
