package agent

import (
	"context"
	"fmt"
	"time"
)

// askAgain calls ask until it succeeds, fails in a way again does not take for passing, or wait has passed, backing
// off from 250 ms to 5 s between tries. Each try has at most a third of wait: one hung request would use it all and
// say only that the deadline passed. It returns ask's last error, saying so when wait ran out.
func askAgain(ctx context.Context, wait time.Duration, again func(error) bool, ask func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for backoff := 250 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		try, cancelTry := context.WithTimeout(ctx, wait/3)
		err := ask(try)
		cancelTry()
		if err == nil || !again(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("for %s: %w", wait, err)
		case <-time.After(backoff):
		}
	}
}
