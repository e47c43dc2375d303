package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
)

// The paths interception tests ask for: the node role's credentials (the mock answers them with its markers, iamlet
// with a refusal), the role listing (iamlet answers a pod with a role with its role's name) and a harmless node fact.
const (
	nodeRolePath   = "/latest/meta-data/iam/security-credentials/" + stack.NodeRoleName
	roleListPath   = "/latest/meta-data/iam/security-credentials/"
	instanceIDPath = "/latest/meta-data/instance-id"
)

// iptablesBackends are the backends iamlet drives; each is a separate kernel subsystem, so each is proved alone.
var iptablesBackends = []string{"nft", "legacy"}

// TestInterception proves on the real stack, with real iptables in the node's network namespace and for both
// backends, that interception fails closed: whatever happens to the agent or to its rules, a pod gets "connection
// refused" or iamlet's own answer, never the node's IMDS, and service comes back without anyone's help. Only an
// explicit uninstall opens the node's IMDS to pods again.
func TestInterception(t *testing.T) {
	for _, backend := range iptablesBackends {
		t.Run(backend, func(t *testing.T) {
			t.Run("killed agent fails closed and a restart serves again", func(t *testing.T) { testKilled(t, backend) })
			t.Run("stopped agent leaves the rules and fails closed", func(t *testing.T) { testStopped(t, backend) })
			t.Run("rules changed by another program are restored", func(t *testing.T) { testDrift(t, backend) })
			t.Run("flow opened before the agent is cut", func(t *testing.T) { testHeldFlow(t, backend) })
			t.Run("start-up takes over rules with another listener port", func(t *testing.T) { testTakeover(t, backend) })
			t.Run("uninstall leaves no trace", func(t *testing.T) { testUninstall(t, backend) })
		})
	}
}

// testKilled: SIGKILL gives the agent no chance to clean up, and must not need one: the rules stay, so a pod's SDK
// and a raw request are refused at once (the DNAT target has no listener), never answered by the node.
func testKilled(t *testing.T, backend string) {
	agent := interceptionAgent(t, backend)
	t.Logf("rules as installed:\n%s%s", iptablesSave(t, backend, false), iptablesSave(t, backend, true))
	p := suite.NewPod(t, "killed-"+backend, stack.PodOptions{ServiceAccount: saA})
	expectServed(t, p)

	agent.Kill()
	if err := interceptionInPlace(backend, stack.AgentPort); err != nil {
		t.Fatalf("after SIGKILL: %v", err)
	}
	expectRefused(t, p)

	restartAgent(t, agent)
	expectServed(t, p)
}

// testStopped: a graceful stop (SIGTERM, as on a DaemonSet rollout or node drain) also leaves the rules in place.
func testStopped(t *testing.T, backend string) {
	agent := interceptionAgent(t, backend)
	p := suite.NewPod(t, "stopped-"+backend, stack.PodOptions{ServiceAccount: saA})
	expectServed(t, p)

	agent.Stop()
	if err := interceptionInPlace(backend, stack.AgentPort); err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
	expectRefused(t, p)
}

// testDrift: another program (a CNI, kube-proxy, an operator) flushes or edits our rules while the agent runs.
// Removing the redirect leaves the guard, so pods are refused in the gap; removing the guard leaves the redirect, so
// pods are still served. Either way the agent puts everything back within its reconcile interval and counts it.
//
// Each case runs twice. First with the agent frozen (SIGSTOP), which holds the gap open so what a pod gets in it is
// checked deterministically. Then live: a pod probes continuously while the rules are broken and restored, and
// nothing it gets may come from the node.
func testDrift(t *testing.T, backend string) {
	agent := interceptionAgent(t, backend, "--reconcile-interval=1s")
	suite.EnsureHostRules(t, suite.agentBin) // its table holds the second guard, which no iptables flush reaches
	p := suite.NewPod(t, "drift-"+backend, stack.PodOptions{ServiceAccount: saA})
	expectServed(t, p)
	ipt := "iptables-" + backend
	cases := []struct {
		name   string
		tamper []string
		// refusedInGap: the redirect is gone and the guard refuses; otherwise the redirect still serves pods.
		refusedInGap bool
	}{
		{"nat table flushed", []string{ipt, "-w", "5", "-t", "nat", "-F"}, true},
		{"PREROUTING jump deleted", []string{ipt, "-w", "5", "-t", "nat", "-D", "PREROUTING",
			"-m", "comment", "--comment", "iamlet: jump to IAMLET-IMDS", "-j", "IAMLET-IMDS"}, true},
		{"guard chain flushed", []string{ipt, "-w", "5", "-t", "filter", "-F", "IAMLET-GUARD"}, false},
		// An iptables-restore without --noflush, as a firewall service's reload runs: the redirect and iptables' guard
		// go together, and the host-rules table's guard still refuses.
		{"nat and filter tables replaced wholesale", []string{"sh", "-c", "printf '*nat\nCOMMIT\n*filter\nCOMMIT\n' | " + ipt + "-restore -w 5"}, true},
		// The routing guard's refusal deleted: the redirect and both netfilter guards still hold.
		{"routing guard's refusal deleted", []string{"sh", "-c", "ip rule del pref 6 && ip -6 rule del pref 6"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.refusedInGap {
				t.Run("frozen gap", func(t *testing.T) {
					before := driftRepairs(t)
					thaw := freezeAgent(t, agent)
					nodeRun(t, c.tamper...)
					if err := interceptionInPlace(backend, stack.AgentPort); err == nil {
						t.Fatalf("%s changed nothing the check can see", strings.Join(c.tamper, " "))
					}
					expectProbeRefused(t, p)
					thaw()
					waitRestored(t, backend)
					waitDriftRepairs(t, before)
					expectServed(t, p)
				})
			}
			t.Run("live", func(t *testing.T) {
				before := driftRepairs(t)
				prober := startNodeRoleProber(t, p)
				nodeRun(t, c.tamper...)
				// Typically one interval and one pass of repairs; the deadline only bounds a failure.
				took := waitRestored(t, backend)
				t.Logf("rules restored %s after %q (reconcile interval 1s)", took.Round(time.Millisecond), strings.Join(c.tamper, " "))
				waitDriftRepairs(t, before)
				got, first := prober.stop(t)
				t.Logf("a pod probing throughout got: %v", got)
				if got["node"] > 0 || got["other"] > 0 {
					t.Errorf("while the rules were broken, a pod got answers that were neither iamlet's nor a refusal: %v; first of each: %q", got, first)
				}
				// A connection opened as the nat table is flushed has, rarely and only under load, been seen to connect
				// and then get no answer (iptables-legacy; about one run in ten with two busy loops; cause not found, see
				// the issue 13 note). It is no leak: the node's IMDS answers at once. More than one is a defect.
				if got["stalled"] > 1 {
					t.Errorf("%d connections stalled while the rules were repaired, want at most one: %q", got["stalled"], first["stalled"])
				} else if got["stalled"] == 1 {
					t.Logf("one connection stalled while the rules were repaired: %s", first["stalled"])
				}
				if !c.refusedInGap && got["refused"] > 0 {
					t.Errorf("with only the guard gone the redirect still holds, yet a pod was refused %d times", got["refused"])
				}
				expectServed(t, p)
			})
		})
	}

	// `nft flush ruleset` removes every nft table at once: iptables-nft's and the host-rules table (stopped here, so
	// that it stays gone). Only the routing guard is left, outside netfilter, and pods are still refused in both
	// families. (iptables-legacy's tables are not nft's, and keep their guard.)
	if backend == "nft" {
		t.Run("every nft table flushed at once", func(t *testing.T) {
			before := driftRepairs(t)
			suite.StopHostRules()
			t.Cleanup(func() { suite.EnsureHostRules(t, suite.agentBin) })
			thaw := freezeAgent(t, agent)
			nodeRun(t, "nft", "flush", "ruleset")
			if out, err := exec.Command("nft", "list", "ruleset").CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Fatalf("after nft flush ruleset: %v\n%s", err, out)
			}
			for _, addr := range []string{stack.IMDSv4 + ":80", imdsV6Endpoint} {
				r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-addr", addr, nodeRolePath)
				stack.AssertNoNodeSecrets(t, "probe "+addr, r.Output())
				if got, _ := classifyProbe(r.Stdout); got["refused"] != 1 || len(got) != 1 {
					t.Errorf("probe of %s with only the routing guard left: want a refusal, got:\n%s", addr, r.Output())
				}
			}
			thaw()
			waitRestored(t, backend)
			waitDriftRepairs(t, before)
			suite.EnsureHostRules(t, suite.agentBin)
			expectServed(t, p)
		})
	}

	// After a repair the agent deletes the conntrack entries of flows to the metadata address that were not
	// redirected (opened while both rules were missing, so answered by the node's IMDS). It must leave a pod's
	// redirected flows alone: an entry deleted mid-request would send iamlet's answer out un-NATed, and the pod would
	// wait for it until its timeout (SDKs reuse keep-alive connections, so this is every busy pod).
	t.Run("keep-alive connection to iamlet survives a repair", func(t *testing.T) {
		h := holdConn(t, p, instanceIDPath, roleListPath)
		entries := conntrackFlow(t, h.ip, h.port)
		if len(entries) != 1 || !strings.Contains(entries[0], "src="+stack.NodeIP+" dst="+h.ip+" sport="+stack.AgentPort) {
			t.Fatalf("want the held connection DNATed to iamlet, got:\n%s", strings.Join(entries, "\n"))
		}
		before := driftRepairs(t)
		nodeRun(t, ipt, "-w", "5", "-t", "filter", "-F", "IAMLET-GUARD")
		waitRestored(t, backend)
		waitRepairDone(t, before)
		if got := conntrackFlow(t, h.ip, h.port); len(got) != 1 || !strings.Contains(got[0], "src="+stack.NodeIP+" dst="+h.ip+" sport="+stack.AgentPort) {
			t.Errorf("after the repair, want the held connection's entry as it was, got:\n%s", strings.Join(got, "\n"))
		}
		out := h.proceed(t)
		stack.AssertNoNodeSecrets(t, "held connection", out)
		if _, second, _ := strings.Cut(out, "=== GET "+roleListPath+"\n"); !strings.HasPrefix(second, "200\n") {
			t.Errorf("second request on a keep-alive connection to iamlet after a repair: want 200, got:\n%s", out)
		}
	})
	t.Run("flow opened while both rules were gone is cut by the repair", func(t *testing.T) {
		// Only a tracked flow keeps its un-redirected fate (see testHeldFlow): keep the kernel tracking flows while
		// the nat rules are gone.
		conntrackOn(t, backend)
		before := driftRepairs(t)
		thaw := freezeAgent(t, agent)
		// Every guard gone: iptables' and, with host-rules stopped so that nothing restores it, the table's.
		suite.StopHostRules()
		t.Cleanup(func() { suite.EnsureHostRules(t, suite.agentBin) })
		nodeRun(t, "nft", "delete", "table", "inet", "iamlet_host")
		nodeRun(t, ipt, "-w", "5", "-t", "nat", "-F")
		nodeRun(t, ipt, "-w", "5", "-t", "filter", "-F", "IAMLET-GUARD")
		nodeRun(t, "ip", "rule", "del", "pref", "6")
		h := holdConn(t, p, instanceIDPath, nodeRolePath)
		if entries := conntrackFlow(t, h.ip, h.port); len(entries) != 1 || !strings.Contains(entries[0], "src="+stack.IMDSv4+" dst="+h.ip) {
			t.Fatalf("with both rules gone, want the held flow answered by the node's IMDS (un-NATed), got:\n%s", strings.Join(entries, "\n"))
		}
		thaw()
		waitRestored(t, backend)
		waitRepairDone(t, before)
		if entries := conntrackFlow(t, h.ip, h.port); len(entries) != 0 {
			t.Errorf("the repair left the un-redirected flow's entry:\n%s", strings.Join(entries, "\n"))
		}
		// The flow must no longer reach the node's IMDS. How it ends is the kernel's business: usually a reset (its
		// next packet is DNATed to a listener that knows no such connection), a stall if a packet of the node's
		// side re-created the entry first. Neither carries anything of the node; only an answer would.
		out := h.proceed(t)
		stack.AssertNoNodeSecrets(t, "held connection", out)
		if _, second, _ := strings.Cut(out, "=== GET "+nodeRolePath+"\n"); !strings.HasPrefix(second, "error ") {
			t.Errorf("second request on the un-redirected flow after the repair: want no answer, got:\n%s", out)
		}
	})
}

// testHeldFlow: a keep-alive connection from a pod to the node's IMDS, opened before iamlet ever ran, must not
// outlive the agent's start. NAT is decided on a flow's first packet, so a flow the kernel already tracks would
// bypass a DNAT rule added later; the agent deletes the conntrack entries of flows to the metadata address once its
// rules are in place. The next packet of the held flow then starts a new conntrack entry (nf_conntrack_tcp_loose,
// on by default, picks a flow up mid-stream), which PREROUTING DNATs to iamlet's listener; that socket knows no such
// connection and answers with a reset. The node's IMDS never sees the second request.
//
// Whether the kernel tracks the flow depends on what else uses conntrack in the namespace: on a real node kube-proxy
// does, in the stack nothing does until iamlet's rules appear (the agent's, and the hostNetwork table of its
// host-rules container). Both are covered; in the second the flush finds nothing and the rules alone pick the flow up.
func testHeldFlow(t *testing.T, backend string) {
	for _, tracked := range []bool{true, false} {
		name := "untracked until the agent's rules appear"
		if tracked {
			name = "tracked, as on a node with kube-proxy"
		}
		t.Run(name, func(t *testing.T) {
			// host-rules restores its table within its interval: its guard for pods would refuse the held flow, and its
			// DNAT rule turns tracking back on. The agent started below starts it again, as the pod's two containers
			// start on a node.
			suite.StopHostRules()
			cleanNode(t)
			t.Cleanup(func() { cleanNode(t) })
			if tracked {
				conntrackOn(t, backend)
			}
			p := suite.NewPod(t, "held-"+backend+map[bool]string{true: "-ct", false: ""}[tracked], stack.PodOptions{ServiceAccount: saA})
			if !tracked {
				waitUntracked(t, p)
			}
			h := holdConn(t, p, instanceIDPath, nodeRolePath)

			entries := conntrackFlow(t, h.ip, h.port)
			switch {
			case tracked && (len(entries) != 1 || !strings.Contains(entries[0], "ESTABLISHED") ||
				!strings.Contains(entries[0], "src="+stack.IMDSv4+" dst="+h.ip)):
				t.Fatalf("before the agent, want one ESTABLISHED un-NATed entry for the held flow, got:\n%s", strings.Join(entries, "\n"))
			case !tracked && len(entries) != 0:
				t.Fatalf("before the agent, want the held flow untracked (nothing in the node namespace uses conntrack), got:\n%s", strings.Join(entries, "\n"))
			}

			dedicatedAgent(t, "--iptables-backend="+backend)
			if entries := conntrackFlow(t, h.ip, h.port); len(entries) != 0 {
				t.Errorf("the agent is ready but the held flow's conntrack entry is still there:\n%s", strings.Join(entries, "\n"))
			}

			out := h.proceed(t)
			stack.AssertNoNodeSecrets(t, "held connection", out)
			first, second, ok := strings.Cut(out, "=== GET "+nodeRolePath+"\n")
			if !ok || !strings.Contains(first, "=== GET "+instanceIDPath+"\n200\n") {
				t.Fatalf("the held connection did not first reach the node's IMDS:\n%s", out)
			}
			if !strings.HasPrefix(second, "error read: ") || !strings.Contains(second, "connection reset by peer") {
				t.Errorf("second request on the held connection: want a reset, got:\n%s", second)
			}

			// How it was cut: re-NATed to iamlet as a new flow (and reset by the listener's host), not refused by the guard.
			nat, filter := iptablesSave(t, backend, false, "-c", "-t", "nat"), iptablesSave(t, backend, false, "-c", "-t", "filter")
			if n := rulePackets(nat, "IAMLET-IMDS", "DNAT"); n < 1 {
				t.Errorf("the held flow's next packet did not go through the DNAT rule (%d packets):\n%s", n, nat)
			}
			if n := rulePackets(filter, "IAMLET-GUARD", "tcp-reset"); n != 0 {
				t.Errorf("the guard reset %d packets; want the held flow handled by the DNAT rule:\n%s", n, filter)
			}
		})
	}
}

// conntrackOn adds, for the test, a rule that uses conntrack: any such rule turns tracking on in the node's
// namespace, as kube-proxy's rules do on a node.
func conntrackOn(t *testing.T, backend string) {
	t.Helper()
	rule := []string{"INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-m", "comment", "--comment", "e2e: conntrack on", "-j", "ACCEPT"}
	nodeRun(t, append([]string{"iptables-" + backend, "-w", "5", "-A"}, rule...)...)
	t.Cleanup(func() { nodeRun(t, append([]string{"iptables-" + backend, "-w", "5", "-D"}, rule...)...) })
}

// testTakeover: an agent started with another listener port finds the rules of the previous one (killed, so they
// are still there) and rewrites them: one DNAT rule per family, to the new port, and pods served through it.
func testTakeover(t *testing.T, backend string) {
	a := interceptionAgent(t, backend)
	if err := interceptionInPlace(backend, stack.AgentPort); err != nil {
		t.Fatalf("agent A: %v", err)
	}
	a.Kill()

	const port = "8183"
	dedicatedAgent(t, "--iptables-backend="+backend, "--metadata-addr="+stack.NodeIP+":"+port+",["+stack.NodeIPv6+"]:"+port)
	if err := interceptionInPlace(backend, port); err != nil {
		t.Fatalf("agent B: %v", err)
	}
	for _, v6 := range []bool{false, true} {
		if nat := iptablesSave(t, backend, v6, "-t", "nat"); strings.Contains(nat, ":"+stack.AgentPort) {
			t.Errorf("a rule still names agent A's port %s:\n%s", stack.AgentPort, nat)
		}
	}
	p := suite.NewPod(t, "takeover-"+backend, stack.PodOptions{ServiceAccount: saA})
	expectServed(t, p)
	// The IPv6 redirect too: the role listing over [fd00:ec2::254] comes from iamlet on the new port.
	r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-addr", "[fd00:ec2::254]:80", roleListPath)
	if !strings.Contains(r.Stdout, "\n200\n") {
		t.Errorf("IPv6 role listing through the new port: want 200, got:\n%s", r.Output())
	}
}

// testUninstall: `iamlet uninstall` is the one way to take interception away, and it takes all of it: afterwards
// neither family of the backend holds anything of iamlet's, and, as the operator asked, a pod reaches the node's
// IMDS again (including the node role: that is what removing iamlet means).
func testUninstall(t *testing.T, backend string) {
	agent := interceptionAgent(t, backend)
	suite.EnsureHostRules(t, suite.agentBin)
	p := suite.NewPod(t, "uninstall-"+backend, stack.PodOptions{ServiceAccount: saA})
	expectServed(t, p)
	// The chart's clean-up waits until the agent's pod is gone, its host-rules container too: one still running would
	// write its table, and its guard for pods, back.
	agent.Stop()
	out, err := exec.Command(suite.agentBin, "uninstall", "--iptables-backend="+backend, "--wait-for-agent=1s").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "host-rules") {
		t.Errorf("uninstall while host-rules runs: %v, want it to remove nothing and say why:\n%s", err, out)
	}
	suite.StopHostRules()
	uninstallRules(t, backend)
	for _, v6 := range []bool{false, true} {
		if out := iptablesSave(t, backend, v6); strings.Contains(strings.ToLower(out), "iamlet") {
			t.Errorf("after uninstall, %s still holds iamlet's rules:\n%s", saveBin(backend, v6), out)
		}
		if left, err := routingGuard(v6); err != nil || len(left) > 0 {
			t.Errorf("after uninstall, routing rules to the metadata address remain: %q (%v)", left, err)
		}
	}
	r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-addr", stack.IMDSv4+":80", nodeRolePath)
	if !strings.Contains(r.Stdout, "\n200\n") || !strings.Contains(r.Stdout, stack.NodeAccessKey) {
		t.Errorf("after uninstall a pod should reach the node's IMDS again (fail open, by request); got:\n%s", r.Output())
	}
}

// TestInterceptionHostNetwork: a connection from the node to the agent's listener directly was not redirected by the
// rules, so it is closed before any work, whether or not a hostNetwork pod with a role claims the address: no role is
// ever served to it. The node's own processes (outside the pods cgroup) keep the node's IMDS. hostNetwork pods
// themselves are intercepted by cgroup (hostnetwork_test.go).
// TestHostRulesRepairOnDeletion: host-rules puts its table back on the kernel's notification of a deletion, not at
// its next tick. hostNetwork pods have no routing guard behind that table, so its repair time is their whole gap.
// Started with a 10-minute interval, it must have the table back within the deadline.
func TestHostRulesRepairOnDeletion(t *testing.T) {
	suite.StopHostRules()
	t.Cleanup(func() {
		suite.StopHostRules()
		suite.EnsureHostRules(t, suite.agentBin)
	})
	suite.StartHostRules(t, suite.agentBin, "--interval=10m")
	for _, tamper := range [][]string{
		{"nft", "delete", "table", "inet", "iamlet_host"},
		{"nft", "delete", "chain", "inet", "iamlet_host", "pods_guard_forward"},
	} {
		nodeRun(t, tamper...)
		start := time.Now()
		var out []byte
		var err error
		for deadline := start.Add(machineDeadline); ; time.Sleep(20 * time.Millisecond) {
			out, err = exec.Command("nft", "list", "table", "inet", "iamlet_host").CombinedOutput()
			if err == nil && strings.Contains(string(out), "chain pods_guard_input") && strings.Contains(string(out), "chain pods_guard_forward") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("host-rules did not restore its table within %s of %q: %v\n%s", machineDeadline, strings.Join(tamper, " "), err, out)
			}
		}
		t.Logf("restored %s after %q (interval 10m)", time.Since(start).Round(time.Millisecond), strings.Join(tamper, " "))
	}
}

func TestInterceptionHostNetwork(t *testing.T) {
	sharedAgent(t)
	direct := stack.NodeIP + ":" + stack.AgentPort
	refused := func(t *testing.T) {
		t.Helper()
		before := scrapeSum(t, "iamlet_listener_unredirected_connections_total")
		out, _ := nodeExec(nil, clientBin(t, "probe"), "-addr", direct, roleListPath, roleListPath+roles.RoleName(stack.RoleARN(stack.AudienceA)))
		stack.AssertNoNodeSecrets(t, "probe from the node", out)
		for _, ans := range stack.ParseProbe(out) {
			if !strings.HasPrefix(ans.Status, "error ") {
				t.Errorf("from the node's address: want the connection closed, got:\n%s", out)
				break
			}
		}
		out, err := nodeExec([]string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://" + direct}, suite.gov2Bin)
		stack.AssertNoNodeSecrets(t, "gov2 from the node", out)
		if err == nil || strings.Contains(out, "creds ") {
			t.Errorf("gov2 from the node's address got credentials, want none (err=%v):\n%s", err, out)
		}
		if n := scrapeSum(t, "iamlet_listener_unredirected_connections_total") - before; n < 3 {
			t.Errorf("the agent closed %v unredirected connections, want at least 3 (two probes and the SDK's)", n)
		}
	}
	t.Run("node address", refused)
	t.Run("hostNetwork pod with a role", func(t *testing.T) {
		suite.NewPod(t, "hostnet", stack.PodOptions{ServiceAccount: saA, HostNetwork: true})
		refused(t)
	})
	// In both families, past the routing guard too: its first rule sends the node's own traffic on.
	t.Run("node traffic is not intercepted", func(t *testing.T) {
		for _, addr := range []string{stack.IMDSv4 + ":80", imdsV6Endpoint} {
			out, err := nodeExec(nil, clientBin(t, "probe"), "-addr", addr, instanceIDPath)
			if err != nil || !strings.Contains(out, "\n200\n") {
				t.Errorf("from the node namespace %s is the node's IMDS itself; got (err=%v):\n%s", addr, err, out)
			}
		}
	})
}

// logText is the content of a log file so far.
func logText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// interceptionAgent runs a dedicated agent on backend from a clean node, and leaves the node clean after it: the
// shared agent is stopped first, since its reconcile would put back what the uninstall takes away.
func interceptionAgent(t *testing.T, backend string, extra ...string) *stack.Proc {
	t.Helper()
	cleanNode(t)
	t.Cleanup(func() { cleanNode(t) }) // registered before the agent's own cleanup, so it runs after the agent stops
	return dedicatedAgent(t, append([]string{"--iptables-backend=" + backend}, extra...)...)
}

// cleanNode stops the shared agent and removes every backend's interception rules, so that no backend's leftovers
// mask another's. The next sharedAgent call installs its rules again.
func cleanNode(t *testing.T) {
	t.Helper()
	stopSharedAgent()
	for _, b := range iptablesBackends {
		uninstallRules(t, b)
	}
}

func uninstallRules(t *testing.T, backend string) {
	t.Helper()
	if out, err := exec.Command(suite.agentBin, "uninstall", "--iptables-backend="+backend).CombinedOutput(); err != nil {
		t.Fatalf("iamlet uninstall --iptables-backend=%s: %v\n%s", backend, err, out)
	}
}

// restartAgent starts a stopped agent again with the same flags and waits until it is ready.
func restartAgent(t *testing.T, p *stack.Proc) *stack.Proc {
	t.Helper()
	np, err := p.Restart()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(np.Stop)
	if err := np.WaitHTTP("http://"+stack.AgentMetricsAddr+"/readyz", machineDeadline); err != nil {
		t.Fatalf("restarted agent not ready: %v", err)
	}
	return np
}

// freezeAgent stops the agent's process (SIGSTOP) so that it cannot repair anything; the returned thaw resumes it, and
// runs at the end of the test if the test does not get there.
func freezeAgent(t *testing.T, p *stack.Proc) (thaw func()) {
	t.Helper()
	if err := syscall.Kill(p.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP agent: %v", err)
	}
	thaw = func() { _ = syscall.Kill(p.Pid(), syscall.SIGCONT) }
	t.Cleanup(thaw)
	return thaw
}

// expectServed runs the SDK client in p: it gets its role's credentials and reads the bucket with them.
func expectServed(t *testing.T, p *stack.Pod) {
	t.Helper()
	r := p.Exec(context.Background(), nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
	stack.AssertNoNodeSecrets(t, "gov2", r.Output())
	if r.Err != nil || !strings.Contains(r.Stdout, "creds EC2RoleProvider ") || !strings.Contains(r.Stdout, "get ok\n") {
		t.Fatalf("gov2 in %s: want its role's credentials and get ok, got err=%v:\n%s", p.Name, r.Err, r.Output())
	}
}

// expectRefused: with the rules in place and no agent, both the SDK and a raw request fail with connection refused.
func expectRefused(t *testing.T, p *stack.Pod) {
	t.Helper()
	r := p.Exec(context.Background(), nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
	stack.AssertNoNodeSecrets(t, "gov2", r.Output())
	if r.Err == nil || strings.Contains(r.Stdout, "creds ") || !strings.Contains(r.Stderr, "connection refused") {
		t.Errorf("gov2 in %s: want no credentials and connection refused, got err=%v:\n%s", p.Name, r.Err, r.Output())
	} else {
		t.Logf("gov2 in %s: %s", p.Name, strings.TrimSpace(r.Stderr))
	}
	expectProbeRefused(t, p)
}

func expectProbeRefused(t *testing.T, p *stack.Pod) {
	t.Helper()
	r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-addr", stack.IMDSv4+":80", nodeRolePath)
	stack.AssertNoNodeSecrets(t, "probe", r.Output())
	if got, _ := classifyProbe(r.Stdout); got["refused"] != 1 || len(got) != 1 {
		t.Errorf("probe in %s: want connection refused, got:\n%s", p.Name, r.Output())
	}
}

// refusal tells whether a dial error is one of the guards' refusals: a reset from iptables' or the host-rules
// table's (connection refused), or the routing guard's prohibit, an ICMP error (no route to host over IPv4,
// permission denied over IPv6).
func refusal(err string) bool {
	return strings.Contains(err, "connection refused") || strings.Contains(err, "no route to host") ||
		strings.Contains(err, "permission denied")
}

// classifyProbe counts the probe's answers to nodeRolePath by who gave them: "iamlet" (any answer of its own),
// "node" (the mock's markers), "refused" (connection refused), "stalled" (connected, then a timeout or a reset) or
// "other"; it keeps the first answer of each kind.
func classifyProbe(out string) (counts map[string]int, first map[string]string) {
	counts, first = map[string]int{}, map[string]string{}
	for _, block := range strings.Split(out, "=== ")[1:] {
		_, answer, _ := strings.Cut(block, "\n")
		kind := "other"
		switch {
		case containsAnyOf(answer, stack.Markers):
			kind = "node"
		case strings.HasPrefix(answer, "error ") && refusal(answer):
			kind = "refused"
		case strings.HasPrefix(answer, "error read ") && (strings.Contains(answer, "i/o timeout") || strings.Contains(answer, "connection reset")):
			kind = "stalled" // connected, then no answer: not the node's (it answers at once), nor iamlet's
		case iamletAnswer.MatchString(answer):
			kind = "iamlet"
		}
		counts[kind]++
		if _, ok := first[kind]; !ok {
			first[kind] = strings.TrimSpace(answer)
		}
	}
	return counts, first
}

// iamletAnswer is a status line and a body of iamlet's own ("iamlet: not found", "iamlet: too many requests ...").
var iamletAnswer = regexp.MustCompile(`^[1-5][0-9][0-9]\niamlet: `)

func containsAnyOf(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// nodeRoleProber is a pod asking for the node role over and over while the test changes the node.
type nodeRoleProber struct {
	stopFile string
	done     chan stack.Result
}

// startNodeRoleProber runs the probe in p, one request every few milliseconds until stop, and returns once its
// requests reach the agent, so the test knows it is watching before it changes anything.
func startNodeRoleProber(t *testing.T, p *stack.Pod) *nodeRoleProber {
	t.Helper()
	before := metadataRequests(t)
	pr := &nodeRoleProber{stopFile: filepath.Join(t.TempDir(), "stop"), done: make(chan stack.Result, 1)}
	bin := clientBin(t, "probe")
	go func() {
		pr.done <- p.Exec(context.Background(), nil, bin, "-addr", stack.IMDSv4+":80", "-for", "5m", "-until", pr.stopFile,
			"-every", "15ms", nodeRolePath)
	}()
	waitUntil(t, machineDeadline, "the prober's requests to reach the agent", func() bool { return metadataRequests(t) > before })
	return pr
}

// stop ends the probe after its current round and counts what it got.
func (pr *nodeRoleProber) stop(t *testing.T) (counts map[string]int, first map[string]string) {
	t.Helper()
	if err := os.WriteFile(pr.stopFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := <-pr.done
	stack.AssertNoNodeSecrets(t, "prober", r.Output())
	if r.Err != nil {
		t.Errorf("prober: %v\n%s", r.Err, r.Stderr)
	}
	return classifyProbe(r.Stdout)
}

// held is a pod's keep-alive connection to the node's IMDS, waiting for its second request.
type heldConn struct {
	ip, port    string
	proceedFile string
	done        chan stack.Result
}

var heldConnLine = regexp.MustCompile(`^held ([0-9.]+):([0-9]+) -> ` + regexp.QuoteMeta(stack.IMDSv4) + `:80\n$`)

// holdConn opens a connection from p to 169.254.169.254:80 and returns once its first request (first) has been
// answered; proceed sends the second (second) on the same connection.
func holdConn(t *testing.T, p *stack.Pod, first, second string) *heldConn {
	t.Helper()
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	h := &heldConn{proceedFile: filepath.Join(dir, "go"), done: make(chan stack.Result, 1)}
	bin := clientBin(t, "holdconn")
	go func() {
		h.done <- p.Exec(context.Background(), nil, bin, "-addr", stack.IMDSv4+":80", "-ready", ready, "-proceed", h.proceedFile,
			first, second)
	}()
	var line []byte
	deadline := time.Now().Add(machineDeadline)
	for {
		var err error
		if line, err = os.ReadFile(ready); err == nil && len(line) > 0 {
			break
		}
		select {
		case r := <-h.done:
			t.Fatalf("holdconn ended before holding its connection: %v\n%s", r.Err, r.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("holdconn did not hold its connection within %s", machineDeadline)
		}
		time.Sleep(20 * time.Millisecond)
	}
	m := heldConnLine.FindStringSubmatch(string(line))
	if m == nil {
		t.Fatalf("holdconn: unexpected %q", line)
	}
	h.ip, h.port = m[1], m[2]
	return h
}

// proceed lets the held connection send its second request and returns everything the client printed.
func (h *heldConn) proceed(t *testing.T) string {
	t.Helper()
	if err := os.WriteFile(h.proceedFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := <-h.done
	return r.Output()
}

// waitUntracked waits until the node's namespace tracks none of p's new flows to the node's IMDS, the untracked case's
// precondition, and fails if it never holds: any rule that needs conntrack keeps it on. Before host-rules was stopped
// for the case, its table came back within its 5 s interval, once in 73 CI runs on a quiet machine and in a loaded
// run for good. Each try clears p's entries, makes one request and looks for an entry of it.
func waitUntracked(t *testing.T, p *stack.Pod) {
	t.Helper()
	probe := clientBin(t, "probe")
	var entries []string
	if !eventually(machineDeadline, func() bool {
		_ = exec.Command("conntrack", "-D", "-p", "tcp", "--orig-src", p.IP).Run() // exits 1 when there is nothing to delete
		p.Exec(context.Background(), nil, probe, "-addr", stack.IMDSv4+":80", instanceIDPath)
		entries = conntrackFlow(t, p.IP, "")
		return len(entries) == 0
	}) {
		t.Fatalf("the node's namespace still tracks new flows %s after the rules were removed:\n%s", machineDeadline, strings.Join(entries, "\n"))
	}
}

// conntrackFlow lists the node namespace's conntrack entries of one TCP flow to the metadata address, by its
// original source; of every TCP flow from ip to it when port is "". Only to it: the pod's earlier connection from the
// same port to another address (MinIO, in TIME_WAIT for two minutes) is another flow.
func conntrackFlow(t *testing.T, ip, port string) []string {
	t.Helper()
	args := []string{"-L", "-p", "tcp", "--orig-src", ip, "--orig-dst", stack.IMDSv4}
	if port != "" {
		args = append(args, "--sport", port)
	}
	out, err := exec.Command("conntrack", args...).Output() // entries on stdout
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	var entries []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			entries = append(entries, line)
		}
	}
	return entries
}

// saveBin is the iptables-save of backend for one family.
func saveBin(backend string, v6 bool) string {
	if v6 {
		return "ip6tables-" + backend + "-save"
	}
	return "iptables-" + backend + "-save"
}

// save is the output of backend's iptables-save for one family, with args.
func iptablesSave(t *testing.T, backend string, v6 bool, args ...string) string {
	t.Helper()
	out, err := exec.Command(saveBin(backend, v6), args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", saveBin(backend, v6), strings.Join(args, " "), err)
	}
	return string(out)
}

// ruleLines returns the rules of chain in iptables-save output, in order, without counters.
func chainRules(save, chain string) []string {
	var rules []string
	for _, line := range strings.Split(save, "\n") {
		if strings.HasPrefix(line, "[") { // -c: "[packets:bytes] -A ..."
			_, line, _ = strings.Cut(line, "] ")
		}
		if strings.HasPrefix(line, "-A "+chain+" ") {
			rules = append(rules, line)
		}
	}
	return rules
}

// packets is the packet counter of the rule of chain containing what, in iptables-save -c output; -1 if none.
func rulePackets(save, chain, what string) int {
	for _, line := range strings.Split(save, "\n") {
		counters, rule, ok := strings.Cut(line, "] ")
		if !ok || !strings.HasPrefix(rule, "-A "+chain+" ") || !strings.Contains(rule, what) {
			continue
		}
		n, _ := strconv.Atoi(strings.TrimPrefix(strings.Split(counters, ":")[0], "["))
		return n
	}
	return -1
}

// interceptionInPlace checks, for both families of backend, the whole rule set an agent listening on port
// installs: the jumps first in PREROUTING, INPUT and FORWARD, exactly one DNAT rule (to port) and both guard rules.
func interceptionInPlace(backend, port string) error {
	for _, fam := range []struct {
		v6     bool
		target string
	}{{false, stack.NodeIP + ":" + port}, {true, "[" + stack.NodeIPv6 + "]:" + port}} {
		nat, err := exec.Command(saveBin(backend, fam.v6), "-t", "nat").Output()
		if err != nil {
			return fmt.Errorf("%s: %w", saveBin(backend, fam.v6), err)
		}
		filter, err := exec.Command(saveBin(backend, fam.v6), "-t", "filter").Output()
		if err != nil {
			return fmt.Errorf("%s: %w", saveBin(backend, fam.v6), err)
		}
		for _, j := range []struct{ save, hook, chain string }{
			{string(nat), "PREROUTING", "IAMLET-IMDS"},
			{string(filter), "INPUT", "IAMLET-GUARD"},
			{string(filter), "FORWARD", "IAMLET-GUARD"},
		} {
			if rules := chainRules(j.save, j.hook); len(rules) == 0 || !strings.HasSuffix(rules[0], "-j "+j.chain) {
				return fmt.Errorf("%s: %s does not jump to %s first:\n%s", saveBin(backend, fam.v6), j.hook, j.chain, j.save)
			}
		}
		if dnat := chainRules(string(nat), "IAMLET-IMDS"); len(dnat) != 1 || !strings.HasSuffix(dnat[0], "-j DNAT --to-destination "+fam.target) {
			return fmt.Errorf("%s: want exactly one DNAT rule to %s in IAMLET-IMDS:\n%s", saveBin(backend, fam.v6), fam.target, nat)
		}
		if guard := chainRules(string(filter), "IAMLET-GUARD"); len(guard) != 2 {
			return fmt.Errorf("%s: want the guard's 2 rules in IAMLET-GUARD:\n%s", saveBin(backend, fam.v6), filter)
		}
		if got, err := routingGuard(fam.v6); err != nil || len(got) != 3 {
			return fmt.Errorf("want the routing guard's 3 rules (ip rule prefs 5-7), got %q (%v)", got, err)
		}
	}
	return nil
}

// routingGuard lists the node's policy routing rules to the instance metadata address of a family, as `ip rule`
// prints them: the routing guard's, when it is in place.
func routingGuard(v6 bool) ([]string, error) {
	args, imds := []string{"rule", "show"}, stack.IMDSv4
	if v6 {
		args, imds = []string{"-6", "rule", "show"}, stack.IMDSv6
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	var rules []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, " to "+imds+" ") {
			rules = append(rules, strings.Join(strings.Fields(l), " "))
		}
	}
	return rules, nil
}

// waitRestored polls until the rules are back and returns how long that took.
// installedBackend is the backend (nft or legacy) holding the agent's rules.
func installedBackend(t *testing.T) string {
	t.Helper()
	for _, b := range []string{"nft", "legacy"} {
		if interceptionInPlace(b, stack.AgentPort) == nil {
			return b
		}
	}
	t.Fatal("the agent's rules are in neither backend")
	return ""
}

func waitRestored(t *testing.T, backend string) time.Duration {
	t.Helper()
	start := time.Now()
	waitUntil(t, machineDeadline, "the rules to be restored", func() bool {
		return interceptionInPlace(backend, stack.AgentPort) == nil
	})
	return time.Since(start)
}

func driftRepairs(t *testing.T) float64 {
	t.Helper()
	return scrapeSum(t, "iamlet_iptables_drift_repairs_total")
}

// scrapeSum is the sum of a metric's series, scraped again until a scrape succeeds: a busy agent can miss one.
func scrapeSum(t *testing.T, name string) float64 {
	t.Helper()
	var m stack.Metrics
	waitUntil(t, machineDeadline, "a scrape of the agent's metrics", func() bool {
		var err error
		m, err = stack.Scrape()
		return err == nil
	})
	return m.Sum(name, nil)
}

func waitDriftRepairs(t *testing.T, before float64) {
	t.Helper()
	waitUntil(t, machineDeadline, "iamlet_iptables_drift_repairs_total to increase", func() bool { return driftRepairs(t) > before })
}

// waitRepairDone waits until the agent has repaired its rules and finished what follows a repair (cutting
// un-redirected flows): the reconcile pass after the repair has begun, and passes run one after the other.
func waitRepairDone(t *testing.T, before float64) {
	t.Helper()
	waitDriftRepairs(t, before)
	passes := scrapeSum(t, "iamlet_iptables_reconciles_total")
	waitUntil(t, machineDeadline, "the reconcile pass after the repair", func() bool {
		return scrapeSum(t, "iamlet_iptables_reconciles_total") > passes
	})
}

func metadataRequests(t *testing.T) float64 {
	t.Helper()
	return scrapeSum(t, "iamlet_metadata_requests_total")
}

// machineDeadline bounds waits on what the machine does: a process start, a reconcile pass, an informer event. A
// passing wait returns as soon as its condition holds, so only a failure costs this much; it is sized for a 2-core
// machine that other work keeps busy, where a pass that takes 50 ms when quiet can take seconds.
const machineDeadline = 60 * time.Second

// waitUntil waits for cond, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run runs a command in the node namespace (where the tests run), failing the test if it fails.
func nodeRun(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// nodeExec runs argv in the node namespace, as a hostNetwork pod would, with no credentials of its own and exactly
// env besides; it returns stdout and stderr together.
func nodeExec(env []string, argv0 string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv0, args...)
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "AWS_CONFIG_FILE=/nonexistent",
		"AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "AWS_REGION=us-east-1", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv4"}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestBackendChangeRemovesOldRules: an agent started with the other iptables backend (a changed iptablesBackend, or
// auto detecting the other one) removes the rules an earlier agent left in the backend it no longer uses, once its
// own are in place: the kernel would apply both.
func TestBackendChangeRemovesOldRules(t *testing.T) {
	for _, c := range []struct{ from, to string }{{"legacy", "nft"}, {"nft", "legacy"}} {
		t.Run(c.from+" to "+c.to, func(t *testing.T) {
			old := interceptionAgent(t, c.from)
			old.Stop()
			if err := interceptionInPlace(c.from, stack.AgentPort); err != nil {
				t.Fatalf("the %s rules after the agent stopped: %v", c.from, err)
			}
			agent := dedicatedAgent(t, "--iptables-backend="+c.to)
			if err := interceptionInPlace(c.to, stack.AgentPort); err != nil {
				t.Fatalf("the new agent's %s rules: %v", c.to, err)
			}
			for _, v6 := range []bool{false, true} {
				if out := iptablesSave(t, c.from, v6); strings.Contains(out, "IAMLET") {
					t.Errorf("%s still holds the old agent's rules:\n%s", saveBin(c.from, v6), out)
				}
			}
			if log := logText(t, agent.Log); !strings.Contains(log, "removing old interception rules") {
				t.Errorf("the agent did not say it removed the old rules:\n%s", log)
			}
			expectServed(t, suite.NewPod(t, "backend-"+c.to, stack.PodOptions{ServiceAccount: saA}))
		})
	}
}
