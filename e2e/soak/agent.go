package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/iamlet/iamlet/e2e/stack"
)

// servedWithin bounds how long a pod may wait for its role once the agent is ready; it only bounds a failure.
const servedWithin = 60 * time.Second

// startAgent starts the stopped agent again with the same arguments, as a DaemonSet's next pod would, and waits
// until it is ready.
func (so *soak) startAgent() error {
	p, err := so.agent.Restart()
	if err != nil {
		return err
	}
	so.t.Cleanup(p.Stop)
	so.agent = p
	return p.WaitHTTP("http://"+stack.AgentMetricsAddr+"/readyz", servedWithin)
}

// restartAgent stops the agent and starts it again while the steady pods, the churn and a watching pod keep asking.
// The gap is what the watching pod sees: from the last credentials the old agent served it to the first the new
// one did. In between it may only be refused or fail to connect; iamlet's own refusals (the new agent before it
// holds the pod's credentials) count as errors too.
func (so *soak) restartAgent(ctx context.Context, k int) {
	v6 := k%2 == 1
	role := so.roleOf[so.watchPod.ServiceAccount]
	stopFile := filepath.Join(so.s.Dir, fmt.Sprintf("podwatch-stop-%d", k))
	w, err := startWatch(ctx, so.watchPod, so.watchBin, stopFile, metadataURL(v6), role)
	if err != nil {
		so.fail(failHarness, "agent restart %d: podwatch: %v", k, err)
		return
	}
	if !w.waitServed(time.Time{}, servedWithin) {
		rounds, res := w.stop()
		so.judgeAll(so.watchPod.Name, role, rounds, time.Time{}, time.Time{})
		so.fail(failLiveness, "agent restart %d: %s (%s) was not served before the restart within %s: %s",
			k, so.watchPod.Name, family(v6), servedWithin, lastKinds(rounds, res))
		return
	}
	so.agent.Stop()
	restarted := time.Now()
	if err := so.startAgent(); err != nil {
		so.t.Fatalf("agent restart %d: %v", k, err)
	}
	ok := w.waitServed(restarted, servedWithin)
	rounds, res := w.stop()
	if !ok {
		so.judgeAll(so.watchPod.Name, role, rounds, time.Time{}, time.Time{})
		so.fail(failLiveness, "agent restart %d: %s (%s) was not served by the new agent within %s of its start: %s",
			k, so.watchPod.Name, family(v6), servedWithin, lastKinds(rounds, res))
		return
	}
	var lastOld, firstNew time.Time
	for _, r := range rounds {
		if r.kind != "served" {
			continue
		}
		if r.at.Before(restarted) {
			lastOld = r.at
		} else if firstNew.IsZero() {
			firstNew = r.at
		}
	}
	// Nothing in the gap can be served (that would end it); judgeAll fails a node marker, a wrong role or a foreign
	// answer there as anywhere, which leaves refusals, failures to connect and iamlet's own refusals.
	so.judgeAll(so.watchPod.Name, role, rounds, lastOld, firstNew)
	gap := firstNew.Sub(lastOld)
	so.gaps = append(so.gaps, gap)
	so.restarts++
	fmt.Printf("soak: %s: agent restart %d (%s): gap %s\n", so.elapsed(), k, family(v6), gap.Round(time.Millisecond))
}

// preAgentPod stops the agent, starts a pod and has it ask while no agent runs (the node's rules stay: it must be
// refused, never answered by the node), then starts the agent and checks the pod gets its own role.
func (so *soak) preAgentPod(ctx context.Context, k int) {
	sa := []string{stack.SAA, stack.SAB}[k%2]
	v6 := k/2%2 == 1
	role := so.roleOf[sa]
	name := fmt.Sprintf("pre-agent-%d", k)
	so.agent.Stop()
	var agentErr error
	pt := &stack.Program{}
	code := pt.Run("soak: "+name, func() int {
		p := so.s.NewPod(pt, name, stack.PodOptions{ServiceAccount: sa})
		r := p.Exec(ctx, nil, so.watchBin, "-for", "2s", "-every", "100ms", "-node-paths",
			"-url", metadataURL(v6), "-role", role, "-markers", markers())
		rounds, err := parseRounds(r.Stdout)
		if err != nil || len(rounds) == 0 {
			pt.Fatalf("podwatch with no agent: %v: %s", err, r.Output())
		}
		so.judgeAll(name, role, rounds, time.Time{}, time.Time{})
		for _, rd := range rounds {
			if !rd.failedToConnect() {
				so.fail(failForeign, "%s (%s) got %s %s while no agent ran", name, family(v6), rd.kind, rd.detail)
			}
		}

		if agentErr = so.startAgent(); agentErr != nil {
			return 1
		}
		ready := time.Now()
		r = p.Exec(ctx, nil, so.watchBin, "-for", servedWithin.String(), "-until-served", "-every", "100ms",
			"-url", metadataURL(v6), "-role", role, "-markers", markers())
		rounds, err = parseRounds(r.Stdout)
		if err != nil || len(rounds) == 0 {
			pt.Fatalf("podwatch after the agent started: %v: %s", err, r.Output())
		}
		so.judgeAll(name, role, rounds, time.Time{}, time.Time{})
		if last := rounds[len(rounds)-1]; last.kind != "served" {
			so.fail(failLiveness, "%s (%s), started before the agent, was not served within %s of the agent being ready: %s",
				name, family(v6), servedWithin, lastKinds(rounds, r))
		} else {
			so.preAgentServed = append(so.preAgentServed, last.at.Sub(ready))
		}
		p.Remove(pt)
		return 0
	})
	if agentErr != nil {
		so.t.Fatalf("%s: starting the agent: %v", name, agentErr)
	}
	if so.agent.Exited() { // the pod could not be set up: the agent still has to come back
		if err := so.startAgent(); err != nil {
			so.t.Fatalf("%s: starting the agent: %v", name, err)
		}
	}
	if code != 0 {
		so.fail(failHarness, "%s could not be set up (above)", name)
		return
	}
	so.preAgent++
	fmt.Printf("soak: %s: %s (%s) refused while no agent ran, then served its role\n", so.elapsed(), name, family(v6))
}

// judgeAll judges every round of pod; those strictly between gapFrom and gapTo count as a restart gap's.
func (so *soak) judgeAll(pod, role string, rounds []round, gapFrom, gapTo time.Time) {
	for _, r := range rounds {
		so.tally.round(pod, role, r, r.at.After(gapFrom) && r.at.Before(gapTo))
	}
}

// lastKinds describes how a watch ended, for a failure message.
func lastKinds(rounds []round, res stack.Result) string {
	if len(rounds) == 0 {
		return fmt.Sprintf("no rounds (err %v): %s", res.Err, res.Stderr)
	}
	counts := map[string]int{}
	for _, r := range rounds {
		counts[r.label()]++
	}
	last := rounds[len(rounds)-1]
	return fmt.Sprintf("rounds %s; last %s %s", byCount(counts), last.kind, last.detail)
}

func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// metadataURL is the metadata address a pod's SDK calls in that family.
func metadataURL(v6 bool) string {
	if v6 {
		return "http://[" + stack.IMDSv6 + "]"
	}
	return "http://" + stack.IMDSv4
}
