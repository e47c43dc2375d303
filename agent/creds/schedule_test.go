package creds

import (
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	tests := []struct {
		name      string
		retryable bool
		base, max time.Duration
	}{
		{"retryable", true, time.Second, 2 * time.Minute},
		{"terminal", false, time.Minute, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for failures := 0; failures <= 70; failures++ {
				d := tt.base
				for i := 1; i < failures && d < tt.max; i++ {
					d *= 2
				}
				d = min(d, tt.max)
				seen := map[time.Duration]bool{}
				for range 200 {
					got := backoff(failures, tt.retryable)
					if got < d/2 || got >= d {
						t.Fatalf("backoff(%d, %v) = %v, want in [%v, %v)", failures, tt.retryable, got, d/2, d)
					}
					seen[got] = true
				}
				if len(seen) < 2 {
					t.Errorf("backoff(%d, %v) gave %d distinct delays in 200 draws, want jitter", failures, tt.retryable, len(seen))
				}
			}
		})
	}
	if got := backoff(1, false); got < 30*time.Second {
		t.Errorf("backoff(1, terminal) = %v, want >= 30s", got)
	}
}

func TestScheduleKeepsRotationInsideServedWindow(t *testing.T) {
	// For every lifetime the cache accepts, the rotation (with the largest jitter) falls after issue
	// and before the credentials stop being served, and they are never served under staleFloor.
	for life := staleFloor + time.Second; life <= 12*time.Hour; life += 7 * time.Second {
		before, minLeft := schedule(life)
		maxJitter := min(before/5, (life-before)/2)
		if minLeft < staleFloor || minLeft > minServe {
			t.Fatalf("schedule(%v) minLeft = %v, want in [%v, %v]", life, minLeft, staleFloor, minServe)
		}
		if before <= minLeft {
			t.Fatalf("schedule(%v) = rotate %v before expiry, served down to %v: rotation after serving stops", life, before, minLeft)
		}
		if before+maxJitter >= life {
			t.Fatalf("schedule(%v) = rotate %v (+%v jitter) before expiry: due at once", life, before, maxJitter)
		}
		if life >= time.Hour && (before != refreshBefore || minLeft != minServe) {
			t.Fatalf("schedule(%v) = %v, %v, want %v, %v", life, before, minLeft, refreshBefore, minServe)
		}
		for range 3 {
			if j := jitter(before, life); j < 0 || j > maxJitter {
				t.Fatalf("jitter(%v, %v) = %v, want in [0, %v]", before, life, j, maxJitter)
			}
		}
	}
}
