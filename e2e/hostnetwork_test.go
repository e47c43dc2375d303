package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/iamlet/iamlet/agent"
	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
)

// hostForceIMDSv1 refuses the token PUT of one hostNetwork pod's processes, as forceIMDSv1 does for a pod in its
// own namespace: in the node's namespace, matched by the pod's cgroup (iptables resolves the path in the test's
// own cgroup namespace, the machine's). It returns the check that the SDK really tried and fell back.
func hostForceIMDSv1(t *testing.T, p *stack.HostPod) func() {
	t.Helper()
	root, err := stack.CgroupV2Mount()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(root, p.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	rule := []string{"OUTPUT", "-p", "tcp", "-m", "cgroup", "--path", rel, "-m", "string", "--string", "PUT /latest/api/token",
		"--algo", "bm", "-j", "REJECT", "--reject-with", "tcp-reset"}
	if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
		t.Fatalf("forcing IMDSv1 for %s: %v: %s", p, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("iptables", append([]string{"-D"}, rule...)...).Run() })
	return func() {
		t.Helper()
		out, _ := exec.Command("iptables", "-L", "OUTPUT", "-v", "-n", "-x").CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "REJECT") && strings.Contains(l, "cgroup") {
				if f := strings.Fields(l); len(f) > 0 && f[0] != "0" {
					return
				}
			}
		}
		t.Errorf("%s: the SDK never tried the token PUT, so IMDSv1 fallback was not exercised:\n%s", p, out)
	}
}

// agentStatus is the agent's /status, as `iamlet status` reads it.
func agentStatus(t *testing.T) agent.Status {
	t.Helper()
	code, body, err := stack.Get("http://" + stack.AgentDebugAddr + "/status")
	if err != nil || code != 200 {
		t.Fatalf("agent status: %d %v", code, err)
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("agent status: %v\n%s", err, body)
	}
	return st
}

// TestHostNetworkPodsGetTheirOwnRole: hostNetwork pods share the node's address; the agent tells them apart by their
// sockets' cgroup. Two of them with different roles and QoS classes (so at different depths of the pods cgroup),
// calling at the same time, each get their own role through aws-sdk-go-v2, the AWS CLI and boto3, over IMDSv2, over
// IMDSv1 and over IPv6; the agent's metrics and status show each as that pod.
func TestHostNetworkPodsGetTheirOwnRole(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	a := suite.NewHostPod(t, "host-a", stack.QoSBestEffort, stack.PodOptions{ServiceAccount: saA})
	b := suite.NewHostPod(t, "host-b", stack.QoSGuaranteed, stack.PodOptions{ServiceAccount: saB})
	waitCached(t, a.Pod, b.Pod)
	boto3 := programRun([]string{stack.Python3, stack.RepoPath(stack.Boto3Client), "--endpoint", stack.MinIOFromPods, "--bucket", stack.Bucket})
	gov2 := programRun([]string{suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket})
	allowed := map[*stack.HostPod][2]bool{a: {true, false}, b: {false, true}} // get, put
	check := func(t *testing.T, p *stack.HostPod, client string, r sdkResult) {
		t.Helper()
		stack.AssertNoNodeSecrets(t, client, r.out)
		if !r.gotCreds() {
			t.Errorf("%s in %s got no credentials: %v\n%s", client, p, r.err, r.out)
			return
		}
		checkAccess(t, p.Name, "get "+r.get+"\nput "+r.put+"\n", "get", allowed[p][0])
		checkAccess(t, p.Name, "get "+r.get+"\nput "+r.put+"\n", "put", allowed[p][1])
	}
	for _, mode := range []struct {
		name string
		env  []string
		v1   bool
	}{{"IMDSv2", nil, false}, {"IPv6", []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6"}, false}, {"IMDSv1", nil, true}} {
		t.Run(mode.name, func(t *testing.T) {
			var checks []func()
			if mode.v1 {
				checks = append(checks, hostForceIMDSv1(t, a), hostForceIMDSv1(t, b))
			}
			// Both pods at once, every client.
			var wg sync.WaitGroup
			for _, p := range []*stack.HostPod{a, b} {
				for name, run := range map[string]func(context.Context, execer, []string) sdkResult{"aws-sdk-go-v2": gov2, "boto3": boto3, "aws-cli": cliRun} {
					if mode.name == "IPv6" && name == "aws-cli" {
						continue // one CLI run per pod and mode is most of this test's time; botocore's IPv6 path is boto3's
					}
					wg.Go(func() { check(t, p, name+"/"+mode.name, run(ctx, p, mode.env)) })
				}
			}
			wg.Wait()
			for _, c := range checks {
				c()
			}
		})
	}
	st := agentStatus(t)
	if st.HostNetwork != "covered" {
		t.Errorf("status hostNetwork = %q, want covered", st.HostNetwork)
	}
	for _, p := range []*stack.HostPod{a, b} {
		found := false
		for _, ps := range st.Pods {
			if ps.Namespace == p.Namespace && ps.Pod == p.Name {
				found = ps.HostNetwork && ps.State == "valid"
			}
		}
		if !found {
			t.Errorf("status does not show %s as a hostNetwork pod with valid credentials: %+v", p, st.Pods)
		}
	}
	m := waitMetric(t, "a scrape", machineDeadline, func(stack.Metrics) bool { return true })
	for _, p := range []*stack.HostPod{a, b} {
		if n := m.Sum("iamlet_pod_credential_requests_total", podLabels(p.Pod)); n == 0 {
			t.Errorf("no credential requests counted for %s", p)
		}
	}
}

// TestHostNetworkPodsNeverGetTheNode: a hostNetwork pod without a role and one whose role its namespace does not
// allow get nothing of the node under every attack spelling, with and without a token, over IPv4 and IPv6; SDKs in
// them find no credentials.
func TestHostNetworkPodsNeverGetTheNode(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	ns := newNamespace(t, "host-restricted", map[string]string{roles.AnnotationAllowedRoles: stack.RoleARN(stack.AudienceB)})
	sa := newServiceAccount(t, ns, "wants-a", map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceA)})
	pods := []*stack.HostPod{
		suite.NewHostPod(t, "host-norole", stack.QoSBurstable, stack.PodOptions{ServiceAccount: saNoRole}),
		suite.NewHostPod(t, "host-restricted", stack.QoSBestEffort, stack.PodOptions{Namespace: ns, ServiceAccount: sa}),
	}
	probe := clientBin(t, "probe")
	for _, p := range pods {
		for _, addr := range []string{stack.IMDSv4 + ":80", imdsV6Endpoint} {
			for _, token := range []bool{false, true} {
				args := []string{probe, "-addr", addr}
				if token {
					args = append(args, "-token")
				}
				r := p.Exec(ctx, nil, append(args, stack.AttackPaths...)...)
				stack.AssertNoNodeSecrets(t, p.Name+" "+addr, r.Output())
				if len(stack.ParseProbe(r.Stdout)) != len(stack.AttackPaths) {
					t.Errorf("%s over %s (token %v): %d answers to %d requests:\n%s", p, addr, token, len(stack.ParseProbe(r.Stdout)), len(stack.AttackPaths), r.Output())
				}
			}
		}
		r := p.Exec(ctx, nil, suite.gov2Bin)
		stack.AssertNoNodeSecrets(t, "gov2", r.Output())
		if r.Err == nil || strings.Contains(r.Stdout, "creds ") {
			t.Errorf("gov2 in %s got credentials, want none:\n%s", p, r.Output())
		}
	}
}

// TestHostNetworkTokensStayWithTheirPod: hostNetwork pods share the node's address, so an IMDSv2 token is bound to
// the pod the agent traced its socket to: one hostNetwork pod's token is refused from another (401), as a pod's is
// from another pod's address, and is accepted from its own.
func TestHostNetworkTokensStayWithTheirPod(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	a := suite.NewHostPod(t, "host-token-a", stack.QoSBestEffort, stack.PodOptions{ServiceAccount: saA})
	b := suite.NewHostPod(t, "host-token-b", stack.QoSBurstable, stack.PodOptions{ServiceAccount: saB})
	waitCached(t, a.Pod, b.Pod)
	probe := clientBin(t, "probe")
	r := a.Exec(ctx, nil, probe, "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", "PUT /latest/api/token")
	ans := stack.ParseProbe(r.Stdout)
	if len(ans) != 1 || ans[0].Status != "200" || ans[0].Body == "" {
		t.Fatalf("token PUT in %s: want 200 and a token, got:\n%s", a, r.Output())
	}
	withToken := []string{probe, "-H", "X-aws-ec2-metadata-token: " + ans[0].Body, "/latest/meta-data/iam/security-credentials/"}
	for _, c := range []struct {
		in   *stack.HostPod
		want string
	}{{a, "200"}, {b, "401"}} {
		r := c.in.Exec(ctx, nil, withToken...)
		stack.AssertNoNodeSecrets(t, c.in.Name, r.Output())
		if ans := stack.ParseProbe(r.Stdout); len(ans) != 1 || ans[0].Status != c.want {
			t.Errorf("%s's token used in %s: want %s, got:\n%s", a, c.in, c.want, r.Output())
		}
	}
}

// TestHostNetworkPodDeletedWhileItsProcessLingers: a process left in a deleted hostNetwork pod's cgroup names a pod
// that no longer exists: it is refused, never served that pod's role nor the node's.
func TestHostNetworkPodDeletedWhileItsProcessLingers(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	p := suite.NewHostPod(t, "host-lingering", stack.QoSBestEffort, stack.PodOptions{ServiceAccount: saA})
	waitCached(t, p.Pod)
	role := roles.RoleName(stack.RoleARN(stack.AudienceA))
	path := roleListPath + role
	if r := p.Exec(ctx, nil, clientBin(t, "probe"), "-token", path); !strings.Contains(r.Stdout, "\n200\n") {
		t.Fatalf("%s before its deletion: want its role, got:\n%s", p, r.Output())
	}
	// A process that stays in the cgroup across the deletion, asking until told to stop.
	stop := filepath.Join(t.TempDir(), "stop")
	lingering := p.Start(ctx, nil, clientBin(t, "probe"), "-token", "-for", "60s", "-every", "100ms", "-until", stop, path)
	var out strings.Builder
	lingering.Stdout = &out
	if err := lingering.Start(); err != nil {
		t.Fatal(err)
	}
	p.Delete(t)
	waitMetric(t, "the deleted pod's credentials dropped", machineDeadline, func(m stack.Metrics) bool {
		_, ok := m.Value("iamlet_credentials_expiry_timestamp_seconds", podLabels(p.Pod))
		return !ok
	})
	after := p.Exec(ctx, nil, clientBin(t, "probe"), "-token", roleListPath, path)
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = lingering.Wait()
	stack.AssertNoNodeSecrets(t, "the lingering process", out.String()+after.Output())
	for _, a := range stack.ParseProbe(after.Stdout) {
		if a.Status == "200" {
			t.Errorf("a process of the deleted %s was served: %s -> %s %.80s", p, a.Request, a.Status, a.Body)
		}
	}
}

// TestHostNetworkOutsideThePodsKeepsTheNode: what is not a pod keeps the node's IMDS: the node's own processes, the
// agent itself (its node facts are fetched from the node's IMDS), a hostNetwork pod the operator lists as
// node-trusted (here with the agent's --node-trusted, as the EKS values do for the VPC CNI), and static pods.
func TestHostNetworkOutsideThePodsKeepsTheNode(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, "host-trusted", nil)
	sa := newServiceAccount(t, ns, "cni", nil)
	dedicatedAgent(t, "--node-trusted="+ns+"/"+sa)
	trusted := suite.NewHostPod(t, "host-cni", stack.QoSBurstable, stack.PodOptions{Namespace: ns, ServiceAccount: sa})
	other := suite.NewHostPod(t, "host-other", stack.QoSBurstable, stack.PodOptions{ServiceAccount: saNoRole})
	probe := clientBin(t, "probe")

	out, err := nodeExec(nil, probe, "-addr", stack.IMDSv4+":80", nodeRolePath, instanceIDPath)
	if err != nil || !strings.Contains(out, stack.NodeAccessKey) {
		t.Errorf("a node process: want the node's IMDS, got (err=%v):\n%s", err, out)
	}
	answers := stack.ParseProbe(out)
	if len(answers) != 2 || answers[1].Status != "200" {
		t.Fatalf("a node process asking the node's instance id:\n%s", out)
	}
	instanceID := strings.TrimSpace(answers[1].Body)
	// The exemption follows the pod's appearance; until then the agent answers it 503 (retry), never the node's role
	// through itself.
	var r stack.Result
	if !eventually(machineDeadline, func() bool {
		r = trusted.Exec(ctx, nil, probe, "-addr", stack.IMDSv4+":80", nodeRolePath)
		return strings.Contains(r.Stdout, stack.NodeAccessKey)
	}) {
		t.Errorf("a node-trusted hostNetwork pod: want the node's IMDS, got:\n%s", r.Output())
	}
	r = other.Exec(ctx, nil, probe, "-addr", stack.IMDSv4+":80", nodeRolePath, instanceIDPath)
	stack.AssertNoNodeSecrets(t, "a hostNetwork pod that is not trusted", r.Output())
	// The node fact comes from the node's IMDS through the agent, so the agent's own requests were not intercepted.
	if !strings.Contains(r.Stdout, "\n200\n"+instanceID) {
		t.Errorf("a hostNetwork pod's node fact: want the node's instance id through the agent, got:\n%s", r.Output())
	}
	// A static pod (its cgroup named after a manifest hash, as kops runs etcd-manager and the API server) is the
	// node's own, like the files it comes from.
	static, err := suite.PodCgroup("0123456789abcdef0123456789abcdef", stack.QoSBurstable)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(static, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(static); _ = os.Remove(filepath.Dir(static)) })
	if !eventually(machineDeadline, func() bool {
		out, _ := nodeExec(nil, stack.InCgroup(static, probe, "-addr", stack.IMDSv4+":80", nodeRolePath)[0],
			stack.InCgroup(static, probe, "-addr", stack.IMDSv4+":80", nodeRolePath)[1:]...)
		r.Stdout = out
		return strings.Contains(out, stack.NodeAccessKey)
	}) {
		t.Errorf("a static pod: want the node's IMDS, got:\n%s", r.Stdout)
	}
	st := agentStatus(t)
	if len(st.NodeTrusted) != 1 || st.NodeTrusted[0] != ns+"/"+sa {
		t.Errorf("status nodeTrusted = %v, want [%s/%s]", st.NodeTrusted, ns, sa)
	}
}

// TestHostNetworkNotCoveredIsSaid: where hostNetwork pods cannot be intercepted the agent says so in /readyz, its
// status, a metric and its log: when their callers cannot be traced (here the pods cgroup does not exist, as on a
// node without a cgroup v2 hierarchy), and when the host-rules container does not report (here the agent is given a
// directory it never writes to): first that it waits for the report, then, once a report is overdue (three reconcile
// intervals and 10 s; the interval is 1 s here), that there is none. Either way the node keeps its start-up taint:
// it is ready to serve pods that are not hostNetwork, not to have pods scheduled.
func TestHostNetworkNotCoveredIsSaid(t *testing.T) {
	for _, c := range []struct {
		name       string
		args       []string
		first, why string
	}{
		{"no pods cgroup", []string{"--pods-cgroup=iamlet-nonexistent/kubepods.slice"}, "no cgroup v2 pods hierarchy", "no cgroup v2 pods hierarchy"},
		{"no host-rules", []string{"--host-rules-dir=" + t.TempDir(), "--reconcile-interval=1s"},
			"waiting for the host-rules container's first report", "no report from the host-rules container"},
	} {
		t.Run(c.name, func(t *testing.T) {
			setTaints(t, suite.Kube, stack.NodeName, corev1.Taint{Key: startupTaint, Value: "true", Effect: corev1.TaintEffectNoSchedule})
			t.Cleanup(func() { setTaints(t, suite.Kube, stack.NodeName) })
			p := dedicatedAgent(t, c.args...)
			code, body, err := stack.Get("http://" + stack.AgentMetricsAddr + "/readyz")
			if err != nil || code != 200 || !strings.Contains(body, "hostNetwork pods not covered: ") || !strings.Contains(body, c.first) {
				t.Errorf("/readyz: %d %q %v, want ready and saying hostNetwork pods are not covered: %s", code, body, err, c.first)
			}
			if !eventually(machineDeadline, func() bool {
				code, body, err = stack.Get("http://" + stack.AgentMetricsAddr + "/readyz")
				return err == nil && code == 200 && strings.Contains(body, "hostNetwork pods not covered: "+c.why)
			}) {
				t.Errorf("/readyz: %d %q %v, want ready and saying hostNetwork pods are not covered: %s", code, body, err, c.why)
			}
			if st := agentStatus(t); !strings.HasPrefix(st.HostNetwork, "not covered: ") {
				t.Errorf("status hostNetwork = %q, want not covered and why", st.HostNetwork)
			}
			m := waitMetric(t, "a scrape", machineDeadline, func(stack.Metrics) bool { return true })
			if v, ok := m.Value("iamlet_host_network_intercepted", nil); !ok || v != 0 {
				t.Errorf("iamlet_host_network_intercepted = %v (present %v), want 0", v, ok)
			}
			if log := logText(t, p.Log); !strings.Contains(log, "hostNetwork pods are NOT covered") {
				t.Errorf("the log does not say hostNetwork pods are not covered:\n%s", log)
			}
			// A ready agent removes the taint within its 50 ms readiness poll; watched for 3 s, a removal would be seen
			// unless the machine stalled the agent throughout (then this passes without proving, never fails wrongly).
			for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
				if !slices.Contains(taintKeys(t, stack.NodeName), startupTaint) {
					t.Fatalf("the agent removed the start-up taint while hostNetwork pods are not covered")
				}
			}
		})
	}
}

// TestHostRulesRefusesAPrivateCgroupNamespace: host-rules in a cgroup namespace of its own, as containerd starts an
// unprivileged container on a cgroup v2 node, cannot place rules on the pods cgroup (the kernel counts a rule's cgroup
// level from the writer's namespace): it exits saying so, rather than install rules that would match nothing.
func TestHostRulesRefusesAPrivateCgroupNamespace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), machineDeadline)
	defer cancel()
	var args []string
	for _, a := range suite.HostRulesArgs() {
		if !strings.HasPrefix(a, "--dir=") {
			args = append(args, a)
		}
	}
	argv0, pre := suite.AgentCommand("/usr/bin/unshare")
	cmd := exec.CommandContext(ctx, argv0, append(append(pre, "--cgroup", suite.agentBin), append(args, "--dir="+t.TempDir())...)...)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cgroup namespace of its own") {
		t.Errorf("host-rules in a private cgroup namespace: %v, want it to exit saying why:\n%s", err, out)
	}
}
