package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Failure classes. Each failure is printed when it happens; the summary counts them.
const (
	failWrongPod  = "wrong pod"   // another role, or another pod's access key
	failNode      = "node secret" // a node marker reached a pod
	failForeign   = "foreign answer"
	failLiveness  = "liveness" // a pod that should have been served within the deadline was not
	failHarness   = "harness"  // the soak could not do what it reports doing
	failMemoryRSS = "memory"
)

// loadSummary is what e2e/clients/soakload prints.
type loadSummary struct {
	Requests, Served, Markers int
	Errors                    map[string]int
	Roles                     map[string]int
	KeyIDs                    map[string]int
}

// counts are the requests and credential documents of one group of pods.
type counts struct{ requests, served int }

// tally is what the soak saw, added to by every goroutine that drives a pod.
type tally struct {
	mu         sync.Mutex
	groups     map[string]*counts // "steady", "churn": soakload; "watch": podwatch rounds
	loadErrors map[string]int     // soakload's error kinds
	rounds     map[string]int     // podwatch rounds by kind
	gapRounds  map[string]int     // podwatch rounds inside restart gaps, by kind
	keyOwner   map[string]string  // access key id -> the one pod it was served to
	failures   map[string]int

	churned, churnedV6 int
	churnUnserved      int // churned pods that got no credential document in their second
}

func newTally() *tally {
	return &tally{groups: map[string]*counts{}, loadErrors: map[string]int{}, rounds: map[string]int{},
		gapRounds: map[string]int{}, keyOwner: map[string]string{}, failures: map[string]int{}}
}

// fail records a failure of class and prints it at once, so a long run shows it where it happened.
func (t *tally) fail(class, format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failures[class]++
	fmt.Printf("soak: %s: %s\n", strings.ToUpper(class), fmt.Sprintf(format, args...))
}

func (t *tally) failed() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.failures {
		n += c
	}
	return n
}

func (t *tally) group(name string) *counts {
	if t.groups[name] == nil {
		t.groups[name] = &counts{}
	}
	return t.groups[name]
}

// load adds one soakload run in pod (which must only ever see role) to group.
func (t *tally) load(group, pod, role string, res loadSummary) {
	for r := range res.Roles {
		if r != role {
			t.fail(failWrongPod, "%s (role %s) was served role %s", pod, role, r)
		}
	}
	if res.Markers > 0 {
		t.fail(failNode, "%s saw node markers %d times", pod, res.Markers)
	}
	for k := range res.KeyIDs {
		t.key(k, pod)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.group(group)
	g.requests += res.Requests
	g.served += res.Served
	for k, n := range res.Errors {
		t.loadErrors[k] += n
	}
}

// churnDone counts a churned pod that ran.
func (t *tally) churnDone(v6, served bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.churned++
	if v6 {
		t.churnedV6++
	}
	if !served {
		t.churnUnserved++
	}
}

// key records that pod was served access key id; STS never hands one key out twice, so a second pod is a wrong
// answer.
func (t *tally) key(id, pod string) {
	t.mu.Lock()
	other, ok := t.keyOwner[id]
	if !ok {
		t.keyOwner[id] = pod
	}
	t.mu.Unlock()
	if ok && other != pod {
		t.fail(failWrongPod, "access key %s served to both %s and %s", id, other, pod)
	}
}

// round judges one podwatch round in pod (which must only ever see role); inGap counts it as a restart gap's too.
func (t *tally) round(pod, role string, r round, inGap bool) {
	switch r.kind {
	case "node":
		t.fail(failNode, "%s saw node marker %s at %s", pod, r.detail, r.at.Format(time.TimeOnly))
	case "wrongrole":
		t.fail(failWrongPod, "%s (role %s) was listed role %s", pod, role, r.detail)
	case "other":
		t.fail(failForeign, "%s got an answer that is neither iamlet's nor a credential: %s", pod, r.detail)
	case "served":
		if got, id := r.served(); got != role {
			t.fail(failWrongPod, "%s (role %s) was served role %s", pod, role, got)
		} else {
			t.key(id, pod)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.group("watch")
	g.requests++
	if r.kind == "served" {
		g.served++
	}
	t.rounds[r.label()]++
	if inGap {
		t.gapRounds[r.label()]++
	}
}

// byCount formats m as "k n, k n", largest first.
func byCount(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// spread is "median M, max X over N (each ...)" of ds.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none measured"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	var each []string
	for _, d := range ds {
		each = append(each, d.Round(time.Millisecond).String())
	}
	return fmt.Sprintf("median %s, max %s over %d (each: %s)", med.Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond),
		len(ds), strings.Join(each, " "))
}
