// Command soak is `make soak` (not part of CI): steady credential load from several pods while pods
// churn and STS and the apiserver are restarted, for a bounded time (SOAK_DURATION, default 10m). It
// fails on any wrong-pod answer (a pod served another role or another pod's access key), any node
// credential, or agent memory that keeps growing.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iamlet/iamlet/e2e/stack"
)

func main() { os.Exit(stack.Main(run)) }

func run(s *stack.Stack) int {
	t := &stack.Program{}
	return t.Run("soak", func() int { return soak(s, t) })
}

type loadSummary struct {
	Requests, Served, Markers int
	Errors                    map[string]int
	Roles                     map[string]int
	KeyIDs                    map[string]int
}

func soak(s *stack.Stack, t *stack.Program) int {
	dur := 10 * time.Minute
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SOAK_DURATION: %v", err)
		}
		dur = d
	}
	bin, err := stack.BuildAgent(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	load, err := stack.BuildProgram(s.Dir, "soakload", "./e2e/clients/soakload")
	if err != nil {
		t.Fatal(err)
	}
	agent := s.StartAgent(t, bin)
	roleOf := map[string]string{stack.SAA: roleName(stack.RoleARN(stack.AudienceA)), stack.SAB: roleName(stack.RoleARN(stack.AudienceB))}

	// Steady load: four pods, two per role, asking all the time.
	type steady struct {
		pod *stack.Pod
		res loadSummary
	}
	var pods []*steady
	for i, sa := range []string{stack.SAA, stack.SAB, stack.SAA, stack.SAB} {
		pods = append(pods, &steady{pod: s.NewPod(t, fmt.Sprintf("soak-%d", i), stack.PodOptions{ServiceAccount: sa})})
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := p.pod.Exec(ctx, nil, load, "-for", dur.String(), "-markers", strings.Join(stack.Markers, ","))
			if err := json.Unmarshal([]byte(r.Stdout), &p.res); err != nil {
				fmt.Fprintf(os.Stderr, "soak: %s: %v\n%s\n", p.pod.Name, err, r.Output())
			}
		}()
	}

	// Churn, faults and memory samples until the load ends.
	start := time.Now()
	var rss []int
	churned, churnKeys := 0, map[string]string{} // access key id -> pod
	failures := 0
	nextFault := start.Add(dur / 4)
	faults := []string{"minio", "kube-apiserver", "minio"}
	for time.Since(start) < dur {
		sa := []string{stack.SAA, stack.SAB}[churned%2]
		p := s.NewPod(t, fmt.Sprintf("churn-%d", churned), stack.PodOptions{ServiceAccount: sa})
		r := p.Exec(ctx, nil, load, "-for", "1s", "-every", "300ms", "-markers", strings.Join(stack.Markers, ","))
		var res loadSummary
		if json.Unmarshal([]byte(r.Stdout), &res) == nil {
			failures += check(p.Name, roleOf[sa], res)
			for k := range res.KeyIDs {
				churnKeys[k] = p.Name
			}
		}
		p.Remove(t)
		churned++
		if len(faults) > 0 && !time.Now().Before(nextFault) {
			name := faults[0]
			faults = faults[1:]
			fmt.Printf("soak: %s: restarting %s\n", time.Since(start).Round(time.Second), name)
			s.StopComponent(name)
			if err := s.StartComponent(name); err != nil {
				t.Fatalf("restarting %s: %v", name, err)
			}
			nextFault = time.Now().Add(dur / 4)
		}
		if kb := rssKB(agent.Pid()); kb > 0 && (len(rss) == 0 || time.Since(start) > time.Duration(len(rss))*dur/20) {
			rss = append(rss, kb)
		}
	}
	wg.Wait()

	seen := map[string]string{} // access key id -> pod, across every pod
	for k, p := range churnKeys {
		seen[k] = p
	}
	total := 0
	for _, p := range pods {
		failures += check(p.pod.Name, roleOf[p.pod.ServiceAccount], p.res)
		total += p.res.Served
		for k := range p.res.KeyIDs {
			if other, ok := seen[k]; ok && other != p.pod.Name {
				fmt.Printf("soak: WRONG POD: access key %s served to both %s and %s\n", k, other, p.pod.Name)
				failures++
			}
			seen[k] = p.pod.Name
		}
	}
	fmt.Printf("soak: %s, %d credential answers to steady pods, %d churned pods, agent RSS samples (KiB): %v\n",
		dur, total, churned, rss)
	if len(rss) >= 4 {
		early := rss[1]
		if late := rss[len(rss)-1]; float64(late) > float64(early)*1.5+5*1024 {
			fmt.Printf("soak: memory grew from %d KiB to %d KiB\n", early, late)
			failures++
		}
	}
	if total == 0 {
		fmt.Println("soak: no credentials were served at all")
		failures++
	}
	if failures > 0 {
		fmt.Printf("soak: FAILED with %d violations\n", failures)
		return 1
	}
	fmt.Println("soak: zero wrong-pod answers, zero node credentials, memory flat")
	return 0
}

// check counts the violations in one pod's answers: another role, or a node marker.
func check(pod, role string, res loadSummary) int {
	bad := 0
	for r := range res.Roles {
		if r != role {
			fmt.Printf("soak: WRONG ROLE: %s (role %s) was served role %s\n", pod, role, r)
			bad++
		}
	}
	if res.Markers > 0 {
		fmt.Printf("soak: NODE SECRET: %s saw node markers %d times\n", pod, res.Markers)
		bad++
	}
	return bad
}

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
