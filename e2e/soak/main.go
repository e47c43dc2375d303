// Command soak is `make soak` (not part of CI): steady credential load from pods over IPv4 and IPv6 while pods churn
// (their addresses reused), the agent is restarted under load and stopped while pods start, and STS and the
// apiserver are restarted, for a bounded time (SOAK_DURATION, default 10m). It fails on any wrong-pod answer (a pod
// served another role or another pod's access key), any node credential, any answer that is neither iamlet's nor a
// refusal, a pod the agent does not serve in time, or agent memory that keeps growing. It reports the gap each agent
// restart leaves, as a pod asking all the while sees it.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iamlet/iamlet/e2e/stack"
)

func main() { os.Exit(stack.Main(run)) }

func run(s *stack.Stack) int {
	t := &stack.Program{}
	return t.Run("soak", func() int { return runSoak(s, t) })
}

// Churned pods at once: each is set up, asks for a second and is removed, so two keep the address pool turning
// over several times in ten minutes on two cores.
const churners = 2

type soak struct {
	*tally
	s                 *stack.Stack
	t                 *stack.Program // the main goroutine's
	start             time.Time
	dur               time.Duration
	loadBin, watchBin string
	roleOf            map[string]string // ServiceAccount -> the role name its pods must get
	watchPod          *stack.Pod

	// pause is held shared by each churned pod and exclusively while the apiserver restarts: a pod that cannot be
	// created then is the harness failing, not the agent.
	pause sync.RWMutex

	// Main goroutine only.
	agent             *stack.Proc
	restarts          int             // agent restarts under load
	preAgent          int             // agent stops for a pod started before it
	gaps              []time.Duration // per restart under load
	preAgentServed    []time.Duration // from the agent being ready to the pod started before it being served
	componentRestarts map[string]int
	rss               []int // KiB, samples of the agent now running
	rssPid            int
	rssEvery          time.Duration
	nextSample        time.Time
}

func runSoak(s *stack.Stack, t *stack.Program) int {
	dur := 10 * time.Minute
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SOAK_DURATION: %v", err)
		}
		dur = d
	}
	so := &soak{tally: newTally(), s: s, t: t, dur: dur, componentRestarts: map[string]int{}, rssEvery: dur / 40,
		roleOf: map[string]string{stack.SAA: roleName(stack.RoleARN(stack.AudienceA)), stack.SAB: roleName(stack.RoleARN(stack.AudienceB))}}
	bin, err := stack.BuildAgent(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if so.loadBin, err = stack.BuildProgram(s.Dir, "soakload", "./e2e/clients/soakload"); err != nil {
		t.Fatal(err)
	}
	if so.watchBin, err = stack.BuildProgram(s.Dir, "podwatch", "./e2e/soak/podwatch"); err != nil {
		t.Fatal(err)
	}
	so.agent = s.StartAgent(t, bin)
	so.start = time.Now()
	end := so.start.Add(dur)
	ctx, cancel := context.WithTimeout(context.Background(), dur+3*time.Minute)
	defer cancel()

	// Steady load: four pods, each role in each family, asking all the time.
	var wg sync.WaitGroup
	for i, c := range []struct {
		sa string
		v6 bool
	}{{stack.SAA, false}, {stack.SAB, false}, {stack.SAA, true}, {stack.SAB, true}} {
		p := s.NewPod(t, fmt.Sprintf("soak-%d", i), stack.PodOptions{ServiceAccount: c.sa})
		wg.Go(func() {
			r := p.Exec(ctx, nil, so.loadBin, "-url", metadataURL(c.v6), "-for", dur.String(), "-markers", markers())
			var res loadSummary
			if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
				so.fail(failHarness, "steady pod %s: soakload: %v\n%s", p.Name, err, r.Output())
				return
			}
			so.load("steady", p.Name, so.roleOf[c.sa], res)
			if res.Served == 0 {
				so.fail(failLiveness, "steady pod %s (%s) was never served in %s", p.Name, family(c.v6), dur)
			}
		})
	}
	so.watchPod = s.NewPod(t, "soak-watch", stack.PodOptions{ServiceAccount: stack.SAB})

	var next atomic.Int64
	for range churners {
		wg.Go(func() {
			for time.Now().Before(end) {
				so.churnOne(ctx, int(next.Add(1)-1))
			}
		})
	}

	for _, ev := range so.schedule() {
		at := so.start.Add(ev.at)
		if !at.Before(end) {
			break
		}
		so.idle(at)
		if !time.Now().Before(end) {
			break
		}
		ev.run(ctx)
	}
	so.idle(end)
	wg.Wait()
	return so.verdict()
}

type event struct {
	at  time.Duration // after the start
	run func(ctx context.Context)
}

// schedule is the soak's faults. Agent restarts and stops come first and alternate (each family, each role), so the
// agent that runs the last 55% is one process whose memory can be watched for growth; STS restarts twice and the
// apiserver once, as before.
func (so *soak) schedule() []event {
	var evs []event
	every := max(so.dur/27, 20*time.Second)
	for i, at := 0, every; at <= so.dur*45/100; i, at = i+1, at+every {
		k := i / 2
		if i%2 == 0 {
			evs = append(evs, event{at, func(ctx context.Context) { so.restartAgent(ctx, k) }})
		} else {
			evs = append(evs, event{at, func(ctx context.Context) { so.preAgentPod(ctx, k) }})
		}
	}
	for _, c := range []struct {
		at   time.Duration
		name string
	}{{so.dur * 20 / 100, "minio"}, {so.dur * 60 / 100, "kube-apiserver"}, {so.dur * 80 / 100, "minio"}} {
		evs = append(evs, event{c.at, func(context.Context) { so.restartComponent(c.name) }})
	}
	slices.SortStableFunc(evs, func(a, b event) int { return cmp.Compare(a.at, b.at) })
	return evs
}

// restartComponent stops a stack component and starts it again, waiting until it serves.
func (so *soak) restartComponent(name string) {
	if name == "kube-apiserver" {
		so.pause.Lock()
		defer so.pause.Unlock()
	}
	fmt.Printf("soak: %s: restarting %s\n", so.elapsed(), name)
	so.s.StopComponent(name)
	if err := so.s.StartComponent(name); err != nil {
		so.t.Fatalf("restarting %s: %v", name, err)
	}
	so.componentRestarts[name]++
}

// churnOne creates a pod, has it ask for a second, and removes it. Every third asks over IPv6.
func (so *soak) churnOne(ctx context.Context, k int) {
	so.pause.RLock()
	defer so.pause.RUnlock()
	sa := []string{stack.SAA, stack.SAB}[k%2]
	v6 := k%3 == 2
	name := fmt.Sprintf("churn-%d", k)
	served := false
	// A pod of its own TB: its cleanups run as it ends, and a failure to set it up stops only this pod.
	pt := &stack.Program{}
	code := pt.Run("soak: "+name, func() int {
		p := so.s.NewPod(pt, name, stack.PodOptions{ServiceAccount: sa})
		r := p.Exec(ctx, nil, so.loadBin, "-url", metadataURL(v6), "-for", "1s", "-every", "300ms", "-markers", markers())
		var res loadSummary
		if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
			pt.Fatalf("soakload: %v\n%s", err, r.Output())
		}
		so.load("churn", name, so.roleOf[sa], res)
		served = res.Served > 0
		p.Remove(pt)
		return 0
	})
	if code != 0 {
		so.fail(failHarness, "%s could not be run (above)", name)
		return
	}
	so.churnDone(v6, served)
}

// idle samples the agent's memory every rssEvery until until.
func (so *soak) idle(until time.Time) {
	for time.Now().Before(until) {
		if !time.Now().Before(so.nextSample) {
			so.sampleRSS()
			so.nextSample = time.Now().Add(so.rssEvery)
		}
		wake := until
		if so.nextSample.Before(wake) {
			wake = so.nextSample
		}
		time.Sleep(time.Until(wake)) // pacing only: nothing waits on a condition here
	}
}

// sampleRSS records the running agent's resident memory; a restarted agent starts a new series.
func (so *soak) sampleRSS() {
	if pid := so.agent.Pid(); pid != so.rssPid {
		so.rss, so.rssPid = nil, pid
	}
	if kb := rssKB(so.rssPid); kb > 0 {
		so.rss = append(so.rss, kb)
	}
}

func (so *soak) elapsed() time.Duration { return time.Since(so.start).Round(time.Second) }

// verdict checks the final agent's memory, prints the summary and returns the exit code.
func (so *soak) verdict() int {
	if len(so.rss) >= 4 {
		early := so.rss[1] // the first sample can precede the agent's first full sync
		if late := so.rss[len(so.rss)-1]; float64(late) > float64(early)*1.5+5*1024 {
			so.fail(failMemoryRSS, "the agent grew from %d KiB to %d KiB", early, late)
		}
	} else {
		so.fail(failHarness, "only %d memory samples of the final agent: too short a run to tell growth", len(so.rss))
	}
	if so.groups["steady"] == nil || so.groups["steady"].served == 0 {
		so.fail(failLiveness, "no credentials were served to the steady pods at all")
	}
	so.summary()
	if n := so.failed(); n > 0 {
		fmt.Printf("soak: FAILED with %d failures\n", n)
		return 1
	}
	fmt.Println("soak: zero wrong-pod answers, zero node credentials, every pod served in time, memory flat")
	return 0
}

func (so *soak) summary() {
	so.tally.mu.Lock()
	defer so.tally.mu.Unlock()
	g := func(name string) counts {
		if c := so.groups[name]; c != nil {
			return *c
		}
		return counts{}
	}
	steady, churn, watch := g("steady"), g("churn"), g("watch")
	addrs := so.s.PodAddressStats()
	line := func(k, f string, args ...any) { fmt.Printf("  %-17s %s\n", k, fmt.Sprintf(f, args...)) }
	fmt.Printf("soak: summary after %s\n", so.dur)
	line("requests", "%d: steady pods %d, churned pods %d; and %d podwatch rounds (up to 3 requests each)",
		steady.requests+churn.requests, steady.requests, churn.requests, watch.requests)
	line("served", "%d credential documents: steady pods %d, churned pods %d, podwatch %d",
		steady.served+churn.served+watch.served, steady.served, churn.served, watch.served)
	line("load errors", "%s", byCount(so.loadErrors))
	line("podwatch rounds", "%s", byCount(so.rounds))
	line("in restart gaps", "%s", byCount(so.gapRounds))
	line("pods churned", "%d (%d over IPv6; %d got no credentials in their second, while STS or the agent was down)",
		so.churned, so.churnedV6, so.churnUnserved)
	line("pod addresses", "reused %d times, %d stuck, %d in use at the end", addrs.Reused, addrs.Stuck, addrs.InUse)
	line("restarts", "agent %d under load, agent %d stopped while a pod started, minio %d, kube-apiserver %d",
		so.restarts, so.preAgent, so.componentRestarts["minio"], so.componentRestarts["kube-apiserver"])
	line("agent gap", "%s", spread(so.gaps))
	line("pre-agent pods", "served %s after the agent was ready", spread(so.preAgentServed))
	if len(so.rss) > 0 {
		line("agent RSS", "start %d KiB, end %d KiB (the final agent, %d samples every %s): %v",
			so.rss[0], so.rss[len(so.rss)-1], len(so.rss), so.rssEvery, so.rss)
	}
	line("failures", "%s", byCount(so.failures))
}

func markers() string { return strings.Join(stack.Markers, ",") }

func roleName(arn string) string { return arn[strings.LastIndex(arn, "/")+1:] }

func rssKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}
