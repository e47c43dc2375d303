package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/iptables"
)

// TestHostRulesReport: the agent calls hostNetwork pods covered only on a recent report without an error from the
// host-rules container; a missing, unreadable, failed or stale one says why not.
func TestHostRulesReport(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	write := func(v any) {
		t.Helper()
		if err := writeJSON(filepath.Join(dir, hostStatusFile), v); err != nil {
			t.Fatal(err)
		}
	}
	if got := readHostStatus(dir, 20*time.Second, now); !strings.Contains(got, "no report") {
		t.Errorf("no report: %q", got)
	}
	write(hostRulesStatus{Time: now.Add(-5 * time.Second)})
	if got := readHostStatus(dir, 20*time.Second, now); got != "" {
		t.Errorf("a fresh good report: %q, want covered", got)
	}
	if got := readHostStatus(dir, 20*time.Second, now.Add(time.Minute)); !strings.Contains(got, "last reported") {
		t.Errorf("a stale report: %q", got)
	}
	write(hostRulesStatus{Time: now, Error: "nf_tables cannot hold the hostNetwork rules"})
	if got := readHostStatus(dir, 20*time.Second, now); !strings.Contains(got, "nf_tables") {
		t.Errorf("a failed pass: %q", got)
	}
	if err := os.WriteFile(filepath.Join(dir, hostStatusFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readHostStatus(dir, 20*time.Second, now); !strings.Contains(got, "unreadable") {
		t.Errorf("a torn report: %q", got)
	}
}

// TestHostRulesFirstReportIsAWait: the two containers start together, so a missing first report is a wait (not
// covered, nothing logged) for as long as a report may take; after that it is an error, logged once. Seen on a real
// kubelet, where the agent otherwise logged an error at every start, 50 ms before host-rules' first report.
func TestHostRulesFirstReportIsAWait(t *testing.T) {
	var logs strings.Builder
	h := &hostInterception{dir: t.TempDir(), within: 20 * time.Second, state: hostWaiting,
		log: slog.New(slog.NewTextHandler(&logs, nil))}
	now := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	for _, d := range []time.Duration{0, time.Second, 19 * time.Second} {
		h.reconcile(nil, false, now.Add(d))
		if got := h.status(); got != "not covered: "+hostWaiting {
			t.Errorf("%v after start: %q, want %q", d, got, hostWaiting)
		}
	}
	if logs.Len() != 0 {
		t.Errorf("logged while waiting for the first report:\n%s", logs.String())
	}
	h.reconcile(nil, false, now.Add(20*time.Second))
	h.reconcile(nil, false, now.Add(21*time.Second))
	if got := h.status(); got != "not covered: "+hostNoReport {
		t.Errorf("after the wait: %q, want %q", got, hostNoReport)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Errorf("%d errors logged after the wait, want 1:\n%s", n, logs.String())
	}
	if err := writeJSON(filepath.Join(h.dir, hostStatusFile), hostRulesStatus{Time: now.Add(22 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	h.reconcile(nil, false, now.Add(22*time.Second))
	if got := h.status(); got != hostCovered {
		t.Errorf("after a good report: %q, want covered", got)
	}
}

// TestExemptionsRoundTrip: what the agent writes is what host-rules reads, and the file is replaced whole.
func TestExemptionsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := map[types.UID]iptables.CgroupRef{"a": {Level: 3, ID: 101}, "b": {Level: 2, ID: 202}}
	if err := writeExemptions(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := readExemptions(dir)
	if err != nil || len(got) != 2 {
		t.Fatalf("readExemptions = %v, %v", got, err)
	}
	for _, r := range got {
		if r != want["a"] && r != want["b"] {
			t.Errorf("read %v, not written", r)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, exemptFile+".tmp")); !os.IsNotExist(err) {
		t.Errorf("the temporary file was left behind: %v", err)
	}
	var raw []map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, exemptFile))
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 2 {
		t.Errorf("the file is not a JSON list of two: %s", b)
	}
}

// TestHostNetworkCoveredKeepsTheTaint: the start-up taint waits for hostNetwork pods to be covered where the operator
// asked for them to be (--host-network-pods with the agent's rules), including where their coverage could not be set
// up at all; it does not wait where they were not asked for.
func TestHostNetworkCoveredKeepsTheTaint(t *testing.T) {
	covered := &hostInterception{}                   // no state: covered
	waiting := &hostInterception{state: hostWaiting} // host-rules has not reported
	for _, c := range []struct {
		name  string
		asked bool
		rules bool
		host  *hostInterception
		want  bool
	}{
		{"covered", true, true, covered, true},
		{"waiting for host-rules", true, true, waiting, false},
		{"could not be set up (no cgroup v2, no tracing)", true, true, nil, false},
		{"not asked for (--host-network-pods=false)", false, true, nil, true},
		{"rules not ours to manage (--iptables=false)", true, false, nil, true},
	} {
		a := &agent{cfg: Config{HostNetworkPods: c.asked}, host: c.host}
		if c.rules {
			a.rules = &iptables.Rules{}
		}
		if got := a.hostNetworkCovered(); got != c.want {
			t.Errorf("%s: hostNetworkCovered() = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestInterceptionOffIsReported: an agent told to manage no rules (--iptables=false) reports both families' rules
// missing, so IamletInterceptionRulesMissing fires, and says so in its log, rather than export nothing.
func TestInterceptionOffIsReported(t *testing.T) {
	log, buf := logBuffer()
	a := &agent{cfg: Config{ManageIptables: false}, m: newMetrics(prometheus.NewRegistry(), true), log: log}
	if err := a.guard(t.Context()); err != nil {
		t.Fatal(err)
	}
	a.keepRules(t.Context())
	// Both series exported (reading one through WithLabelValues would make it), each 0.
	if n := testutil.CollectAndCount(a.m.rules); n != 2 {
		t.Fatalf("iamlet_iptables_rules_present has %d series, want one per family", n)
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		if got := testutil.ToFloat64(a.m.rules.WithLabelValues(fam)); got != 0 {
			t.Errorf("iamlet_iptables_rules_present{family=%q} = %v, want 0", fam, got)
		}
	}
	if !strings.Contains(buf.String(), "interception off") {
		t.Errorf("the log does not say interception is off:\n%s", buf.String())
	}
}

// Deletions bring host-rules' passes forward, but no faster than the limiter allows: a pass's own writes are
// deletions too, and a rule rewritten on every pass must not spin. A deletion meanwhile is not lost: its pass comes
// when the limiter allows.
func TestAwaitPassOnDeletions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		signals := make(chan struct{}, 1)
		deleted := (<-chan struct{})(signals)
		soon := rate.NewLimiter(rate.Every(notifiedPassEvery), 1)
		passes := make(chan time.Time, 10)
		ctx1, cancel1 := context.WithCancel(t.Context())
		exited := make(chan struct{})
		go func() {
			defer close(exited)
			for awaitPass(ctx1, nil, &deleted, soon, func() {}) {
				passes <- time.Now()
			}
		}()
		start := time.Now()
		signals <- struct{}{}
		synctest.Wait()
		if len(passes) != 1 {
			t.Fatalf("a deletion brought %d passes, want 1", len(passes))
		}
		// Right after: its pass waits until the limiter allows another.
		signals <- struct{}{}
		synctest.Wait()
		if len(passes) != 1 {
			t.Fatalf("a second deletion at once brought a pass at once")
		}
		time.Sleep(notifiedPassEvery)
		synctest.Wait()
		<-passes
		select {
		case got := <-passes:
			if got.Sub(start) != notifiedPassEvery {
				t.Errorf("second pass %s after the first deletion, want %s", got.Sub(start), notifiedPassEvery)
			}
		default:
			t.Fatal("the second deletion's pass never came")
		}
		cancel1()
		<-exited
		// Notifications that stop are said once and bring one pass; the ticker goes on.
		stoppedAt := 0
		close(signals)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan bool, 1)
		go func() { done <- awaitPass(ctx, nil, &deleted, soon, func() { stoppedAt++ }) }()
		synctest.Wait()
		if ok := <-done; !ok || stoppedAt != 1 || deleted != nil {
			t.Errorf("closed notifications: pass %v, said %d times, channel %v; want a pass, said once, nil", ok, stoppedAt, deleted)
		}
		cancel()
	})
}
