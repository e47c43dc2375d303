package realnode

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/iamlet/iamlet/e2e/stack"
)

// kubeletTokenMinting: with the token the kubelet projected into the agent's container, read from inside it as root
// on the node could, the apiserver lets the agent mint only as its own node, only for that node's pods.
func kubeletTokenMinting(t *testing.T, agent *corev1.Pod) {
	ctx := context.Background()
	token, err := node.ExecRead(stack.AgentNamespace, agent.Name, "iamlet", deadline,
		func(out string) bool { return strings.Count(out, ".") == 2 }, "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token")
	if err != nil {
		t.Fatalf("reading the agent's projected token: %v: %.80s", err, token)
	}
	client := func(asNode string) kubernetes.Interface {
		rc := &rest.Config{Host: stack.APIServerURL, BearerToken: token,
			TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(node.Dir, "ca.crt")}}
		if asNode != "" {
			rc.Impersonate = rest.ImpersonationConfig{UserName: "system:node:" + asNode}
		}
		c, err := kubernetes.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	here := stack.ClientPod("mint-here", stack.SAA, stack.GoClientsImage, "/pause")
	herePod, err := node.Kube.CoreV1().Pods("default").Create(ctx, here, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.DeletePod("default", here.Name) })
	there, err := node.Kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "mint-there"},
		Spec: corev1.PodSpec{NodeName: stack.NodeName2, ServiceAccountName: stack.SAA,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.DeletePod("default", there.Name) })
	request := func(c kubernetes.Interface, pod *corev1.Pod) error {
		secs := int64(600)
		_, err := c.CoreV1().ServiceAccounts("default").CreateToken(ctx, stack.SAA, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
			Audiences: []string{stack.AudienceA}, ExpirationSeconds: &secs,
			BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}, metav1.CreateOptions{})
		return err
	}
	asNode := client(stack.NodeName)
	var last error
	end := time.Now().Add(deadline)
	// The scheduler binds the pod, then the Node authorizer's graph learns of it.
	for last = request(asNode, herePod); last != nil && time.Now().Before(end); last = request(asNode, herePod) {
		time.Sleep(200 * time.Millisecond)
	}
	if last != nil {
		t.Fatalf("as its node, a token for a pod on the node: %v", last)
	}
	for _, c := range []struct {
		name   string
		client kubernetes.Interface
		pod    *corev1.Pod
		reason string
	}{
		{"a pod on another node", asNode, there, "node requested token bound to a pod scheduled on a different node"},
		{"as the agent itself, not the node", client(""), herePod, `cannot create resource "serviceaccounts/token"`},
		{"as another node", client(stack.NodeName2), there, "cannot impersonate-on:arbitrary-node:create"},
	} {
		err := request(c.client, c.pod)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: want a refusal because %q, got: %v", c.name, c.reason, err)
		}
	}
}

// round is one line of a load pod's log: its start (ms since the pod's process started) and outcome.
type round struct {
	at   float64
	ok   bool
	role string
	line string
}

func parseRounds(out string) []round {
	var rs []round
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "round" {
			continue
		}
		at, _ := strconv.ParseFloat(f[1], 64)
		r := round{at: at, ok: f[2] == "ok", line: line}
		if r.ok {
			r.role = f[3]
		}
		rs = append(rs, r)
	}
	return rs
}

// rollingUpdate: under steady load from pods with each role and without one, `helm upgrade` to a new image tag
// replaces the agent. No request reaches the node's IMDS; every round either gets the pod's own role or fails; the
// longest time a pod went without its credentials is reported. The load runs until each pod with a role has been
// served again after the new agent became Ready, however long the rollout took on a loaded machine; a pod that kept
// its IMDSv2 token from before the update is served with it after.
func rollingUpdate(t *testing.T) {
	ctx := context.Background()
	load := map[string]string{"load-a": stack.SAA, "load-b": stack.SAB, "load-none": stack.SANoRole, "load-a-kept": stack.SAA}
	want := map[string]string{"load-a": roleName(stack.AudienceA), "load-b": roleName(stack.AudienceB), "load-a-kept": roleName(stack.AudienceA)}
	for name, sa := range load {
		// load-a-kept keeps its first IMDSv2 token, as SDKs do: the new agent must accept it (the key is the node's).
		var more []string
		if name == "load-a-kept" {
			more = []string{"-keep-token"}
		}
		loadPod(t, name, sa, 10*time.Minute, more...)
	}
	rounds := func(name string) []round { return parseRounds(node.PodLog(ctx, "default", name)) }
	// The load runs before the upgrade starts: each pod has made a round.
	for name := range load {
		waitRounds(t, name, func(rs []round) bool { return len(rs) > 0 }, rounds)
	}
	t0 := time.Now()
	out, err := node.Helm("upgrade", "iamlet", stack.RepoPath("deploy/helm/iamlet"), "--namespace", stack.AgentNamespace,
		"--values", writeValues(t, stack.AgentImageTag2))
	if err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	agentPod(t, stack.AgentImageTag2)
	t.Logf("new agent pod Ready %s after helm upgrade", time.Since(t0).Round(time.Millisecond))
	for name := range load {
		seen := len(rounds(name))
		// Twenty more rounds (about two seconds), the last of them served where the pod has a role.
		waitRounds(t, name, func(rs []round) bool {
			return len(rs) >= seen+20 && (want[name] == "" || rs[len(rs)-1].ok)
		}, rounds)
	}
	for name := range load {
		log := node.PodLog(ctx, "default", name)
		stack.AssertNoNodeSecrets(t, name, log)
		rs := parseRounds(log)
		var oks, fails int
		var gap, lastOK float64
		for _, r := range rs {
			switch {
			case r.ok && r.role != want[name]:
				t.Errorf("%s got role %s, want %q: %s", name, r.role, want[name], r.line)
			case r.ok:
				oks++
				if lastOK > 0 && r.at-lastOK > gap {
					gap = r.at - lastOK
				}
				lastOK = r.at
			default:
				fails++
			}
		}
		t.Logf("%s: %d rounds, %d served, %d refused or unanswered; longest time without credentials %.0f ms", name, len(rs), oks, fails, gap)
	}
}

// waitRounds waits until a load pod's rounds satisfy cond.
func waitRounds(t *testing.T, name string, cond func([]round) bool, rounds func(string) []round) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond(rounds(name)) {
		if time.Now().After(end) {
			rs := rounds(name)
			last := "none"
			if len(rs) > 0 {
				last = rs[len(rs)-1].line
			}
			t.Fatalf("load pod %s: %d rounds after %s, the last %s", name, len(rs), deadline, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// uninstall: `helm uninstall` removes the agent, and its post-delete hooks (templates/cleanup.yaml) remove its rules
// from the node once the agent there has gone, then themselves; afterwards pods reach the node's IMDS, as documented.
func uninstall(t *testing.T) {
	t0 := time.Now()
	if out, err := node.Helm("uninstall", "iamlet", "--namespace", stack.AgentNamespace, "--wait", "--timeout", "5m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s\n%s", err, out, hookLogs())
	}
	t.Logf("helm uninstall with its clean-up hooks took %s", time.Since(t0).Round(time.Millisecond))
	assertNoRules(t, "after helm uninstall")
	// The hooks remove themselves: their objects at once, their pods once terminated.
	for _, kind := range []string{"daemonset", "job", "serviceaccount", "role", "rolebinding"} {
		if out, err := node.Kubectl(nil, "-n", stack.AgentNamespace, "get", kind+"/iamlet-cleanup"); err == nil {
			t.Errorf("the clean-up hook's %s is still there after helm uninstall:\n%s", kind, out)
		}
	}
	waitNoPods(t, "after helm uninstall")
	phase, out := node.RunPod(t, stack.ClientPod("after-uninstall", stack.SAA, stack.GoClientsImage, "/firstcreds"), deadline)
	if f := strings.Fields(out); phase != corev1.PodSucceeded || len(f) < 3 || f[2] != stack.NodeRoleName {
		t.Errorf("after helm uninstall a pod reaches the node's IMDS, as documented: got %s:\n%s", phase, out)
	}
}

// waitNoPods waits until no pod is left in the agent's namespace.
func waitNoPods(t *testing.T, when string) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		pods, err := node.Kube.CoreV1().Pods(stack.AgentNamespace).List(context.Background(), metav1.ListOptions{})
		if err == nil && len(pods.Items) == 0 {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("pods still in %s %s %s: %v", stack.AgentNamespace, deadline, when, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// hookLogs are the clean-up hooks' pods' logs, for a failure's message.
func hookLogs() string {
	var b strings.Builder
	for _, sel := range []string{"app.kubernetes.io/name=iamlet-cleanup", "job-name=iamlet-cleanup"} {
		out, _ := node.Kubectl(nil, "-n", stack.AgentNamespace, "logs", "-l", sel, "--all-containers", "--tail=20")
		fmt.Fprintf(&b, "--- %s:\n%s\n", sel, out)
	}
	return b.String()
}

// assertNoRules fails if anything of iamlet's is in the node's iptables (both families), nftables or policy
// routing rules (the routing guard's, to the metadata addresses).
func assertNoRules(t *testing.T, when string) {
	t.Helper()
	for _, c := range [][]string{{"iptables-nft-save"}, {"ip6tables-nft-save"}, {"nft", "list", "tables"}} {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		if err != nil || strings.Contains(strings.ToLower(string(out)), "iamlet") {
			t.Errorf("%s %s: %v\n%s", c[0], when, err, out)
		}
	}
	for _, c := range [][]string{{"ip", "rule", "show"}, {"ip", "-6", "rule", "show"}} {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		if err != nil || strings.Contains(string(out), " to "+stack.IMDSv4+" ") || strings.Contains(string(out), " to "+stack.IMDSv6+" ") {
			t.Errorf("%s %s: %v\n%s", strings.Join(c, " "), when, err, out)
		}
	}
}

// manualCleanup: an installation removed without Helm's hooks (here `kubectl delete -k`) leaves its rules, so pods
// are refused rather than handed the node's role; the documented clean-up (docs/interception.md#uninstall:
// `iamlet uninstall` in the node's network namespace, from the agent's image) removes them.
func manualCleanup(t *testing.T, kustomization string) {
	if out, err := node.Kubectl(nil, "delete", "-k", kustomization, "--wait=false"); err != nil {
		t.Fatalf("kubectl delete -k: %v\n%s", err, out)
	}
	waitNoPods(t, "after kubectl delete")
	phase, out := node.RunPod(t, stack.ClientPod("after-delete", stack.SAA, stack.GoClientsImage, "/firstcreds"), deadline)
	stack.AssertNoNodeSecrets(t, "a pod after kubectl delete", out)
	if phase != corev1.PodFailed || !strings.Contains(out, "firstcreds fail token") {
		t.Errorf("a pod after kubectl delete, before the clean-up: %s, want refused:\n%s", phase, out)
	}
	cleanup := stack.ClientPod("iamlet-uninstall", "default", stack.AgentImageRepo+":"+stack.AgentImageTag, "iamlet", "uninstall", "--iptables-backend=nft")
	cleanup.Spec.HostNetwork = true
	cleanup.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
		Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}}}
	if phase, out := node.RunPod(t, cleanup, deadline); phase != corev1.PodSucceeded {
		t.Fatalf("iamlet uninstall: %s\n%s", phase, out)
	}
	assertNoRules(t, "after the documented clean-up")
	phase, out = node.RunPod(t, stack.ClientPod("after-cleanup", stack.SAA, stack.GoClientsImage, "/firstcreds"), deadline)
	if f := strings.Fields(out); phase != corev1.PodSucceeded || len(f) < 3 || f[2] != stack.NodeRoleName {
		t.Errorf("after the clean-up a pod reaches the node's IMDS, as documented: got %s:\n%s", phase, out)
	}
}

// kustomizeInstall: the kustomize base, as a user's overlay takes it (their image, their STS endpoint), installs an
// agent that serves the role of a ServiceAccount with the base's one audience, and refuses a ServiceAccount whose
// audience the base does not allow.
func kustomizeInstall(t *testing.T) {
	dir := filepath.Join(node.Dir, "overlay")
	base, err := filepath.Rel(dir, stack.RepoPath("deploy/kustomize/base"))
	if err != nil {
		t.Fatal(err)
	}
	overlay := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ` + base + `
images:
  - name: ghcr.io/iamlet/iamlet
    newName: ` + stack.AgentImageRepo + `
    newTag: ` + stack.AgentImageTag + `
patches:
  - target: {kind: DaemonSet, name: iamlet}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --sts-endpoint=` + stack.STSEndpoint + `
`
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := node.Kubectl(nil, "apply", "-k", dir); err != nil {
		t.Fatalf("kubectl apply -k: %v\n%s", err, out)
	}
	agentPod(t, stack.AgentImageTag)
	phase, out := node.RunPod(t, stack.ClientPod("kustomize-a", stack.SAA, stack.GoClientsImage, "/firstcreds"), deadline)
	if f := strings.Fields(out); phase != corev1.PodSucceeded || len(f) < 3 || f[1] != "ok" || f[2] != roleName(stack.AudienceA) {
		t.Errorf("a pod of %s under the kustomize install: %s, want its role:\n%s", stack.SAA, phase, out)
	}
	phase, out = node.RunPod(t, stack.ClientPod("kustomize-b", stack.SAB, stack.GoClientsImage, "/firstcreds"), deadline)
	stack.AssertNoNodeSecrets(t, "kustomize-b", out)
	if phase != corev1.PodFailed || !strings.Contains(out, "firstcreds fail role 403") {
		t.Errorf("a pod whose audience %s the base does not allow: %s, want 403:\n%s", stack.AudienceB, phase, out)
	}
	manualCleanup(t, dir)
}
