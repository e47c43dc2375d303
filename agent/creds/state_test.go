package creds

import (
	"errors"
	"testing"
	"time"
)

// TestEntryTransitions walks one entry through store and fail and checks what Get, fetchOnce and pick read of it.
func TestEntryTransitions(t *testing.T) {
	type view struct {
		State                         state
		Has, Serve, Stale, BackingOff bool
		Due                           string // "now", "retry" (retryAt) or "rotation" (refreshAt)
		Failures                      int
	}
	now := time.Date(2026, 8, 20, 17, 0, 0, 0, time.UTC)
	creds := Credentials{AccessKeyID: "ASIA0001", Expiration: now.Add(time.Hour)}
	errSTS := errors.New("sts unavailable")
	e := &entry{}
	steps := []struct {
		name string
		do   func()
		want view
	}{
		{"new", func() {}, view{pending, false, false, false, false, "now", 0}},
		{"fail", func() { e.fail(errSTS, now) }, view{failing, false, false, false, true, "retry", 1}},
		{"fail again", func() { e.fail(errSTS, now) }, view{failing, false, false, false, true, "retry", 2}},
		{"store", func() { e.store(creds, now) }, view{valid, true, true, true, false, "rotation", 0}},
		{"fail with older", func() { e.fail(errSTS, now) }, view{failing, true, true, true, true, "rotation", 1}},
		{"store again", func() { e.store(creds, now) }, view{valid, true, true, true, false, "rotation", 0}},
	}
	for _, st := range steps {
		st.do()
		got := view{e.state, e.has(), e.canServe(now), e.canServeStale(now), e.backingOff(now), "", e.failures}
		switch due := e.due(); {
		case due.IsZero():
			got.Due = "now"
		case due.Equal(e.retryAt):
			got.Due = "retry"
		case due.Equal(e.refreshAt):
			got.Due = "rotation"
		}
		if got != st.want {
			t.Errorf("after %s: entry = %+v, want %+v", st.name, got, st.want)
		}
	}
}
