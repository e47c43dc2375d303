package main

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
	"github.com/iamlet/iamlet/iptables"
)

// Workload 4's grid: pods on the agent's node, and pods on other nodes of the cluster.
var (
	scaleNodePods    = []int{10, 110, 250}
	scaleClusterPods = []int{1000, 10000}
)

// The cluster around the node: pods spread over namespaces of 10, each with 10 ServiceAccounts (half
// of them with a role), on 100 other nodes; so 1,000 pods come with 1,000 ServiceAccounts in 100
// namespaces, and 10,000 with 10,000 in 1,000. The agent watches ServiceAccounts and Namespaces
// cluster-wide, so they, not the cluster's pods, are what its memory could follow.
const (
	podsPerNamespace = 10
	sasPerNamespace  = 10
	otherNodes       = 100
)

// scale is workloads 4 and 6: for each point of the grid, fresh agent processes (so no point inherits
// another's heap), each in a memory cgroup of its own, are started, timed to /readyz, left to prefetch
// every node pod, and then measured: memory (see Mem), Go heap, CPU. At 110 node pods the start-up
// baselines, and the floor server's memory, are measured between the agent's runs.
func (b *bench) scale(ctx context.Context) error {
	return phase(func(t *tb) error {
		var nodePods []string
		cluster := clusterState{}
		for _, c := range scaleClusterPods {
			t0 := time.Now()
			if err := b.growCluster(ctx, &cluster, c); err != nil {
				return err
			}
			logf("scale: cluster holds %d pods on other nodes, %d namespaces, %d ServiceAccounts (grown in %s)",
				cluster.pods, cluster.namespaces, cluster.sas, time.Since(t0).Round(100*time.Millisecond))
			for _, n := range scaleNodePods {
				for len(nodePods) < n {
					name := fmt.Sprintf("node-pod-%03d", len(nodePods))
					if _, _, err := b.createPod(ctx, "default", name, stack.NodeName, stack.SAA, b.ips.get()); err != nil {
						return err
					}
					nodePods = append(nodePods, name)
				}
				if len(nodePods) > n {
					if err := b.deletePods(ctx, "default", nodePods[n:]); err != nil {
						return err
					}
					nodePods = nodePods[:n]
				}
				runs := 3
				if n == 110 {
					runs = b.o.runs // the start-up target's point
				}
				if b.o.quick {
					runs = 1
				}
				for r := range runs {
					sr, err := b.scaleRun(ctx, n, cluster)
					if err != nil {
						return err
					}
					if n == 110 {
						// Interleaved with the agent's starts (after one, so its rules are in place).
						sb, err := b.startBaseline(ctx)
						if err != nil {
							return fmt.Errorf("start-up baseline: %w", err)
						}
						sb.ClusterPods = c
						// The same agent without managing iptables (the rules stay from the run before): how much of
						// its start-up the interception step costs inside the agent.
						na, err := b.startAgent("iamlet-noipt", "--iptables=false")
						if err != nil {
							return err
						}
						sb.NoIptablesMS = ms(na.ready)
						na.stop()
						logf("start-up baseline: process %.0fms, informers synced %.0fms, iptables %.0fms; iamlet --iptables=false ready %.0fms; floor RSS %.1f MiB (anon %.1f, working set %.1f)",
							sb.ProcMS, sb.SyncMS, sb.IptablesMS, sb.NoIptablesMS, sb.FloorMem.RSSMiB, sb.FloorMem.AnonMiB, sb.FloorMem.WorkingSetMiB)
						b.res.StartBase = append(b.res.StartBase, sb)
					}
					logf("scale node=%d cluster=%d run %d: ready %.0fms (init %.0f, rules %.0f), all cached %.1fs, RSS %.1f MiB (anon %.1f, file %.1f, working set %.1f), heap %.1f MiB, start CPU %.2fs, idle CPU %.1f%%, %v goroutines",
						n, c, r+1, sr.StartupMS, sr.InitMS, sr.RulesMS, sr.AllCachedS, sr.RSSMiB, sr.AnonMiB, sr.FileMiB, sr.WorkingSetMiB, sr.HeapMiB, sr.CPUStartS, sr.IdleCPUPct, sr.Goroutines)
					b.res.Scale = append(b.res.Scale, sr)
				}
			}
		}
		return nil
	})
}

func (b *bench) scaleRun(ctx context.Context, n int, cluster clusterState) (ScaleRun, error) {
	sr := ScaleRun{NodePods: n, ClusterPods: cluster.pods, ClusterSAs: cluster.sas, ClusterNS: cluster.namespaces}
	ag, err := b.startAgent("iamlet-scale")
	if err != nil {
		return sr, err
	}
	defer ag.stop()
	sr.StartupMS = ms(ag.ready)
	pid := ag.p.Pid()
	lt := ag.logTimes(msgWaiting, msgRules)
	sr.InitMS, sr.RulesMS = ms(lt[msgWaiting]), ms(lt[msgRules])
	if err := waitStatus(ctx, fmt.Sprintf("%d node pods cached", n), 90*time.Second, func(st agentStatus) bool {
		valid := 0
		for _, p := range st.Pods {
			if p.State == "valid" {
				valid++
			}
		}
		return valid == n && len(st.Pods) == n
	}); err != nil {
		return sr, err
	}
	sr.AllCachedS = time.Since(ag.started).Seconds()
	cpu0, err := procCPU(pid)
	if err != nil {
		return sr, err
	}
	sr.CPUStartS = cpu0.Seconds()
	// Settle, then sample.
	t0 := time.Now()
	time.Sleep(2 * time.Second)
	if sr.Mem, err = b.sampleMem(pid, ag.cgroup); err != nil {
		return sr, err
	}
	cpu1, _ := procCPU(pid)
	sr.IdleCPUPct = 100 * (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()
	if m, err := scrape(); err == nil {
		v, _ := m.Value("go_memstats_heap_inuse_bytes", nil)
		sr.HeapMiB = v / (1 << 20)
		g, _ := m.Value("go_memstats_next_gc_bytes", nil)
		sr.HeapGoalMiB = g / (1 << 20)
		sr.Goroutines, _ = m.Value("go_goroutines", nil)
	}
	return sr, nil
}

// The agent's log lines that mark its start-up's steps.
const (
	msgWaiting = "waiting for informers to sync"
	msgRules   = "interception rules in place"
)

// startBaseline measures what start-up cannot go below here, and the floor server's memory (see
// StartBaseline).
func (b *bench) startBaseline(ctx context.Context) (StartBaseline, error) {
	var sb StartBaseline
	body := filepath.Join(b.s.Dir, "startup-floor-body")
	if err := os.WriteFile(body, []byte("ok"), 0o600); err != nil {
		return sb, err
	}
	argv, cg := b.command("floor-startup", -1, b.bins.floor, "-addr", "127.0.0.1:18182", "-path", "/", "-body", body)
	defer b.cgroups.remove(cg)
	t0 := time.Now()
	p, err := stack.StartProc(b.s.Dir, "floor-startup", nil, argv[0], argv[1:]...)
	if err != nil {
		return sb, err
	}
	defer p.Stop()
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get("http://127.0.0.1:18182/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if p.Exited() || time.Since(t0) > 30*time.Second {
			return sb, fmt.Errorf("floor did not start: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	sb.ProcMS = ms(time.Since(t0))
	// Settled as the agent's are before theirs are read.
	time.Sleep(2 * time.Second)
	if sb.FloorMem, err = b.sampleMem(p.Pid(), cg); err != nil {
		return sb, fmt.Errorf("floor memory: %w", err)
	}
	p.Stop()

	// The agent's own informers (agent/pods, agent/roles), run here until synced: its initial lists of the
	// node's pods and of all ServiceAccounts and Namespaces, the way it makes them.
	t0 = time.Now()
	if err := informersSynced(ctx, b.api); err != nil {
		return sb, err
	}
	sb.SyncMS = ms(time.Since(t0))

	t0 = time.Now()
	rules, err := iptables.New(iptables.Config{
		MetadataV4: netip.MustParseAddrPort(stack.NodeIP + ":" + stack.AgentPort),
		MetadataV6: netip.MustParseAddrPort("[" + stack.NodeIPv6 + "]:" + stack.AgentPort),
		LockWait:   5 * time.Second,
	}, nil)
	if err != nil {
		return sb, err
	}
	if missing, err := rules.Check(ctx); err != nil || len(missing) > 0 {
		return sb, fmt.Errorf("iptables check: missing %v, %v", missing, err)
	}
	for _, a := range []string{stack.IMDSv4, "fd00:ec2::254"} {
		if err := iptables.FlushConntrack(ctx, netip.MustParseAddr(a)); err != nil {
			return sb, err
		}
	}
	sb.IptablesMS = ms(time.Since(t0))
	return sb, nil
}

// informersSynced runs the agent's pod index and role mapper against the apiserver until both have
// synced, then stops them.
func informersSynced(ctx context.Context, api *kube.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	index := pods.New(api, stack.NodeName, time.Time{}, 0)
	mapper := roles.New(api, roles.Config{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		index.Run(ctx)
	}()
	mapper.Start(ctx)
	defer func() {
		cancel()
		<-done
		mapper.Shutdown()
	}()
	for !index.HasSynced() || !mapper.HasSynced() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("informers not synced: %w", ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// clusterState is what growCluster has created so far.
type clusterState struct{ pods, namespaces, sas int }

// growCluster creates namespaces, ServiceAccounts and pods on other nodes until the cluster holds want
// pods there, 32 requests at a time.
func (b *bench) growCluster(ctx context.Context, c *clusterState, want int) error {
	needNS := (want + podsPerNamespace - 1) / podsPerNamespace
	nsName := func(i int) string { return fmt.Sprintf("bench-c%03d", i) }
	saName := func(j int) string { return fmt.Sprintf("sa-%d", j) }
	from := c.namespaces
	err := parallel(16, needNS-from, func(k int) error {
		i := from + k
		_, err := b.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName(i)}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		for j := range sasPerNamespace {
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: saName(j), Namespace: nsName(i)}}
			if j%2 == 0 {
				sa.Annotations = map[string]string{roles.AnnotationRoleARN: fmt.Sprintf("arn:aws:iam::123456789012:role/team-%03d-app-%d", i, j)}
			}
			if _, err := b.kube.CoreV1().ServiceAccounts(nsName(i)).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster namespaces: %w", err)
	}
	c.namespaces, c.sas = needNS, needNS*sasPerNamespace
	from = c.pods
	err = parallel(32, want-from, func(k int) error {
		i := from + k
		ns := nsName(i / podsPerNamespace)
		p := podSpec(ns, fmt.Sprintf("app-%05d", i), fmt.Sprintf("node-%03d", 2+i%otherNodes), saName(i%sasPerNamespace))
		_, err := b.kube.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster pods: %w", err)
	}
	c.pods = want
	return nil
}
