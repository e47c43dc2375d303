package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/iamlet/iamlet/e2e/stack"
)

// round is one line of e2e/soak/podwatch: when a credential fetch ended and how.
type round struct {
	at           time.Time
	kind, detail string
}

func parseRound(line string) (round, error) {
	ts, rest, _ := strings.Cut(line, " ")
	kind, detail, _ := strings.Cut(rest, " ")
	ns, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || kind == "" {
		return round{}, fmt.Errorf("podwatch line %q: not <nanoseconds> <kind> [detail]", line)
	}
	return round{at: time.Unix(0, ns), kind: kind, detail: detail}, nil
}

// parseRounds reads a whole podwatch output.
func parseRounds(out string) ([]round, error) {
	var rs []round
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		r, err := parseRound(l)
		if err != nil {
			return rs, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// served is the role and access key id of a served round.
func (r round) served() (role, keyID string) {
	role, keyID, _ = strings.Cut(r.detail, " ")
	return role, keyID
}

// label is the round's kind for counting; iamlet's refusals by status.
func (r round) label() string {
	if r.kind == "iamlet" {
		status, _, _ := strings.Cut(r.detail, " ")
		return "iamlet " + status
	}
	return r.kind
}

// failedToConnect reports whether the round ended without any HTTP answer: what a pod gets from the node while no
// agent listens behind the interception.
func (r round) failedToConnect() bool {
	return r.kind == "refused" || r.kind == "timeout" || r.kind == "error"
}

// watch is podwatch running in a pod for as long as the soak needs, its rounds read as they come.
type watch struct {
	sess     *stack.Session
	stopFile string
	rounds   chan round
	seen     []round // every round taken from rounds so far
}

// startWatch runs podwatch in p against url until stop; stopFile must not exist yet.
func startWatch(ctx context.Context, p *stack.Pod, bin, stopFile, url, role string) (*watch, error) {
	sess, err := p.Start(ctx, nil, bin, "-until", stopFile, "-for", "4m", "-url", url, "-role", role, "-markers", markers())
	if err != nil {
		return nil, err
	}
	// Room for minutes of rounds: while the soak stops and starts the agent nobody reads, and a blocked podwatch
	// would report late times.
	w := &watch{sess: sess, stopFile: stopFile, rounds: make(chan round, 1<<16)}
	go func() {
		defer close(w.rounds)
		for {
			l, err := sess.Next(10 * time.Minute)
			if err != nil {
				return
			}
			r, err := parseRound(l)
			if err != nil {
				w.rounds <- round{at: time.Now(), kind: "other", detail: strconv.Quote(l)}
				continue
			}
			w.rounds <- r
		}
	}()
	return w, nil
}

// waitServed reads rounds until one served after since, and reports whether one came before deadline.
func (w *watch) waitServed(since time.Time, timeout time.Duration) bool {
	expire := time.After(timeout)
	for {
		select {
		case r, ok := <-w.rounds:
			if !ok {
				return false
			}
			w.seen = append(w.seen, r)
			if r.kind == "served" && r.at.After(since) {
				return true
			}
		case <-expire:
			return false
		}
	}
}

// stop ends podwatch after its current round and returns every round it printed, and how it ended.
func (w *watch) stop() ([]round, stack.Result) {
	if err := os.WriteFile(w.stopFile, nil, 0o644); err != nil {
		return w.seen, stack.Result{Err: err}
	}
	// The reader ends with podwatch's output; only then may Close read what is left of the session.
	for r := range w.rounds {
		w.seen = append(w.seen, r)
	}
	return w.seen, w.sess.Close()
}
