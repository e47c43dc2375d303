package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/iamlet/iamlet/e2e/stack"
)

// Every path by which a pod's request could reach the node's IMDS without passing the agent: a family without a
// listener, an agent that never got going, an interface no one thought of, and the listener's own address.

// imdsV6Endpoint is the IPv6 metadata endpoint as SDKs call it.
const imdsV6Endpoint = "[" + imdsV6 + "]:80"

// probeNodeRole asks for the node role's credentials and user-data at addr from p and returns how the answers
// classify (see classifyProbe), with the first answer of each kind.
func probeNodeRole(t *testing.T, p *stack.Pod, addr string) (map[string]int, map[string]string) {
	t.Helper()
	r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-addr", addr, nodeRolePath, "/latest/user-data")
	stack.AssertNoNodeSecrets(t, "probe "+addr, r.Output())
	return classifyProbe(r.Stdout)
}

// TestOneFamilyNodes: the shipped manifests pass every host address ($(HOST_IPS), from status.hostIPs), so a node
// with one family gets one listener. The other family is still guarded: a pod asking there is refused, never sent
// to the node's IMDS. An IPv6-only node's bare address parses (the old $(HOST_IP):8181 did not).
func TestOneFamilyNodes(t *testing.T) {
	for _, c := range []struct {
		name, hostIPs       string
		served, refusedAddr string
		servedEnv           []string
	}{
		{"ipv4 only", stack.NodeIP, stack.IMDSv4 + ":80", imdsV6Endpoint, nil},
		{"ipv6 only", stack.NodeIPv6, imdsV6Endpoint, stack.IMDSv4 + ":80", []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dedicatedAgent(t, "--metadata-addr="+c.hostIPs)
			p := suite.NewPod(t, "family-"+strings.ReplaceAll(c.name, " ", "-"), stack.PodOptions{ServiceAccount: saA})
			waitCached(t, p)
			if got, first := probeNodeRole(t, p, c.refusedAddr); got["refused"] != 2 || len(got) != 1 {
				t.Errorf("%s, no listener of that family: want both requests refused, got %v %q", c.refusedAddr, got, first)
			}
			r := p.Exec(context.Background(), c.servedEnv, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
			stack.AssertNoNodeSecrets(t, "gov2", r.Output())
			if !strings.Contains(r.Stdout, "creds EC2RoleProvider ") || !strings.Contains(r.Stdout, "get ok") {
				t.Errorf("gov2 over %s: want the pod's own role, got %v:\n%s", c.served, r.Err, r.Output())
			}
		})
	}
}

// TestCrashLoopingAgentKeepsPodsRefused: the rules go in before anything that can fail, so an agent that exits at
// start (here: its kubeconfig is missing) has already closed the node's IMDS to pods, in both families, and the
// next crash-loop iteration finds them in place.
func TestCrashLoopingAgentKeepsPodsRefused(t *testing.T) {
	cleanNode(t)
	t.Cleanup(func() { cleanNode(t) })
	p := suite.NewPod(t, "crashloop", stack.PodOptions{ServiceAccount: saA})
	for i := range 2 {
		a, err := stack.StartProc(suite.Dir, fmt.Sprintf("iamlet-crashloop-%d", i), nil, suite.agentBin,
			append(suite.AgentArgs(), "--kubeconfig=/nonexistent/kubeconfig", "--iptables-backend=nft")...)
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, machineDeadline, "the agent to exit", a.Exited)
		if log := logText(t, a.Log); !strings.Contains(log, "kubernetes client config") {
			t.Errorf("run %d: want the kubeconfig error, got:\n%s", i, log)
		}
		if err := interceptionInPlace("nft", stack.AgentPort); err != nil {
			t.Fatalf("run %d: after the agent exited: %v", i, err)
		}
		for _, addr := range []string{stack.IMDSv4 + ":80", imdsV6Endpoint} {
			if got, first := probeNodeRole(t, p, addr); got["refused"] != 2 || len(got) != 1 {
				t.Errorf("run %d, %s: want refused, got %v %q", i, addr, got, first)
			}
		}
	}
}

// TestBadArgumentsLeavePodsRefused: an agent that stops on a bad argument, before it writes any rule of its own (a
// helm upgrade with a wrong extraArgs, reaching a new node), leaves pods refused all the same: the host-rules
// container beside it wrote its table at its start, and that table's guard refuses pods' packets to the metadata
// addresses, in both families.
func TestBadArgumentsLeavePodsRefused(t *testing.T) {
	cleanNode(t)
	t.Cleanup(func() { cleanNode(t) })
	suite.StopHostRules() // its next start writes its table afresh, as on a new node
	suite.EnsureHostRules(t, suite.agentBin)
	p := suite.NewPod(t, "badargs", stack.PodOptions{ServiceAccount: saA})
	// A variable the chart does not define, which the kubelet leaves as written.
	a, err := stack.StartProc(suite.Dir, "iamlet-badargs", nil, suite.agentBin, append(suite.AgentArgs(), "--metadata-addr=$(HOST_IP)")...)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, machineDeadline, "the agent to exit", a.Exited)
	if log := logText(t, a.Log); !strings.Contains(log, "metadata-addr") {
		t.Errorf("want the agent to name the bad argument, got:\n%s", log)
	}
	for _, b := range iptablesBackends {
		if err := interceptionInPlace(b, stack.AgentPort); err == nil {
			t.Fatalf("the agent wrote its %s rules before checking its arguments: this test no longer shows the second guard", b)
		}
	}
	for _, addr := range []string{stack.IMDSv4 + ":80", imdsV6Endpoint} {
		if got, first := probeNodeRole(t, p, addr); got["refused"] != 2 || len(got) != 1 {
			t.Errorf("%s with only host-rules' table: want refused, got %v %q", addr, got, first)
		}
	}
}

// TestPodInterfaceNamesDoNotMatter: the rules name no interface, so a pod whose host-side link has a name no CNI
// pattern would list (a bridge port, a vlan for security groups for pods, a custom prefix) is intercepted like
// any other: served its own role, never the node's.
func TestPodInterfaceNamesDoNotMatter(t *testing.T) {
	sharedAgent(t)
	p := suite.NewPod(t, "renamed", stack.PodOptions{ServiceAccount: saA})
	waitCached(t, p)
	if err := p.RenameHostInterface("vlan" + suite.Run); err != nil {
		t.Fatal(err)
	}
	for _, env := range [][]string{nil, {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6"}} {
		r := p.Exec(context.Background(), env, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
		stack.AssertNoNodeSecrets(t, "gov2", r.Output())
		if !strings.Contains(r.Stdout, "get ok") {
			t.Errorf("gov2 (%v) behind vlan%s: want the pod's own role, got %v:\n%s", env, suite.Run, r.Err, r.Output())
		}
	}
	for _, addr := range []string{stack.IMDSv4 + ":80", imdsV6Endpoint} {
		if got, first := probeNodeRole(t, p, addr); got["iamlet"] != 2 || len(got) != 1 {
			t.Errorf("%s behind vlan%s: want iamlet's answers, got %v %q", addr, suite.Run, got, first)
		}
	}
}

// TestDirectConnectionsToTheListenerAreRefused: the listener's address is the node's, which every pod in the
// cluster can reach. Only connections the rules redirected from a metadata address count; one made to the listener
// directly (from a pod here, as a pod on another node would) is closed before any work: no identity lookup.
func TestDirectConnectionsToTheListenerAreRefused(t *testing.T) {
	sharedAgent(t)
	p := suite.NewPod(t, "direct", stack.PodOptions{ServiceAccount: saA})
	waitCached(t, p)
	closed, requests := scrapeSum(t, "iamlet_listener_unredirected_connections_total"), metadataRequests(t)
	for _, addr := range []string{stack.NodeIP + ":" + stack.AgentPort, "[" + stack.NodeIPv6 + "]:" + stack.AgentPort} {
		r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-addr", addr, roleListPath)
		stack.AssertNoNodeSecrets(t, "probe "+addr, r.Output())
		if ans := stack.ParseProbe(r.Stdout); len(ans) != 1 || !strings.HasPrefix(ans[0].Status, "error ") {
			t.Errorf("%s directly: want the connection closed without an answer, got:\n%s", addr, r.Output())
		}
	}
	if d := scrapeSum(t, "iamlet_listener_unredirected_connections_total") - closed; d < 2 {
		t.Errorf("iamlet_listener_unredirected_connections_total rose by %v, want >= 2", d)
	}
	if d := metadataRequests(t) - requests; d != 0 {
		t.Errorf("direct connections reached the metadata handler: %v requests", d)
	}
	// The redirected path from the same pod is unaffected.
	if got, first := probeNodeRole(t, p, stack.IMDSv4+":80"); got["iamlet"] != 2 {
		t.Errorf("the redirected path: want iamlet's answers, got %v %q", got, first)
	}
}
