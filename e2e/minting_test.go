package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/iamlet/iamlet/agent/satoken"
	"github.com/iamlet/iamlet/e2e/stack"
)

// agentClient is the agent's own client: its pod-bound ServiceAccount token from the chart's install, acting as
// the node named asNode ("" for itself), exactly as the agent's minting client does.
func agentClient(t *testing.T, asNode string) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", suite.AgentKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if asNode != "" {
		rc.Impersonate = rest.ImpersonationConfig{UserName: "system:node:" + asNode}
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// podOnNode2 creates a Pod object of sa bound to the second node: another node's pod, which the agent on
// stack.NodeName must not reach.
func podOnNode2(t *testing.T, name, sa string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	p, err := suite.Kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: stack.NodeName2, ServiceAccountName: sa, AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = suite.Kube.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}) })
	return p
}

// TestNodeConfinedMinting: with the chart's RBAC and the agent's pod-bound token, the apiserver (Node authorizer,
// NodeRestriction, constrained impersonation) lets the agent mint tokens only as its own node, only for that
// node's pods, bound to them, for the granted STS audiences. Root on this node, holding the agent's token, gets
// nothing of another node's pods. Each refusal is asserted by its reason, so it is the rule meant that refused.
func TestNodeConfinedMinting(t *testing.T) {
	ctx := context.Background()
	here := suite.NewPod(t, "mint-here", stack.PodOptions{ServiceAccount: saA})
	there := podOnNode2(t, "mint-there", saA)
	const elsewhereSA = "only-on-node-2"
	if _, err := suite.Kube.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: elsewhereSA}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	elsewhere := podOnNode2(t, "mint-elsewhere", elsewhereSA)
	asNode, direct, asOtherNode := agentClient(t, stack.NodeName), agentClient(t, ""), agentClient(t, stack.NodeName2)

	request := func(c kubernetes.Interface, sa string, pod *corev1.Pod, audiences []string) error {
		secs := int64(600)
		spec := authv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs}
		if pod != nil {
			spec.BoundObjectRef = &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		_, err := c.CoreV1().ServiceAccounts("default").CreateToken(ctx, sa, &authv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
		return err
	}
	herePod, err := suite.Kube.CoreV1().Pods("default").Get(ctx, here.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sts := []string{stack.AudienceA}

	// The Node authorizer learns of new pods from its own informer: wait until this node's pod is minted for.
	var last error
	if !eventually(machineDeadline, func() bool { last = request(asNode, saA, herePod, sts); return last == nil }) {
		t.Fatalf("as the node, a token for a pod on the node: %v", last)
	}
	for _, c := range []struct {
		name   string
		client kubernetes.Interface
		sa     string
		pod    *corev1.Pod
		aud    []string
		reason string
	}{
		{"a pod on another node", asNode, saA, there, sts, "node requested token bound to a pod scheduled on a different node"},
		{"a ServiceAccount with no pod on this node", asNode, elsewhereSA, elsewhere, sts, "no relationship found between node '" + stack.NodeName + "' and this object"},
		{"an unbound token", asNode, saA, nil, sts, "node requested token not bound to a pod"},
		{"the apiserver's audience", asNode, saA, herePod, []string{stack.APIServerURL}, "not found in pod spec volume"},
		{"an audience not granted to nodes", asNode, saA, herePod, []string{"sts-c.example"}, "not found in pod spec volume"},
		{"as the agent itself, not the node", direct, saA, herePod, sts, `cannot create resource "serviceaccounts/token"`},
		{"as another node", asOtherNode, saA, there, sts, "cannot impersonate-on:arbitrary-node:create"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := request(c.client, c.sa, c.pod, c.aud)
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), c.reason) {
				t.Errorf("want a refusal because %q, got: %v", c.reason, err)
			}
			t.Log(err)
		})
	}
}

// TestMintingNotConfinedIsNotReady: an installation where confinement does not hold (cluster-wide minting with the
// admission policy's binding missing) is caught by the agent's own check: it is not ready, says why in /readyz,
// status and metrics, and mints nothing for new pods. Once the binding is back the next check, seconds later while
// not confined, makes it ready.
func TestMintingNotConfinedIsNotReady(t *testing.T) {
	rendered := installClusterMinting(t)
	if out, err := kubectl(nil, "delete", "validatingadmissionpolicybinding/"+tokenPolicy); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
	// The check the agent makes: once the apiserver grants it, the broken installation is in effect.
	direct := agentClient(t, "")
	if !eventually(machineDeadline, func() bool {
		return unboundToken(direct) == nil
	}) {
		t.Fatal("the apiserver still refuses an unbound token without the policy binding")
	}

	// The shipped check interval (5 minutes): while not confined the agent checks again within seconds.
	p, err := stack.StartProc(suite.Dir, "iamlet-unconfined", nil, suite.agentBin,
		append(suite.AgentArgs(), "--token-minting=cluster")...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	const why = "cluster-wide minting: the apiserver granted a token not bound to any pod"
	code, body := waitReadyz(t, func(_ int, body string) bool { return strings.Contains(body, why) })
	if code != 503 {
		t.Errorf("/readyz = %d %q, want 503 naming %q", code, body, why)
	}
	pod := suite.NewPod(t, "unconfined", stack.PodOptions{ServiceAccount: saA})
	r := pod.Exec(context.Background(), nil, clientBin(t, "probe"), "-token", roleListPath)
	stack.AssertNoNodeSecrets(t, "probe", r.Output())
	if ans := stack.ParseProbe(r.Stdout); len(ans) != 1 || ans[0].Status == "200" {
		t.Errorf("a new pod while minting is not confined: want no role, got:\n%s", r.Output())
	}
	m, err := stack.Scrape()
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Value("iamlet_token_minting_confined", nil); v != 0 {
		t.Errorf("iamlet_token_minting_confined = %v, want 0", v)
	}
	if v, _ := m.Value("iamlet_token_minting_info", map[string]string{"mode": "cluster"}); v != 1 {
		t.Errorf(`iamlet_token_minting_info{mode="cluster"} = %v, want 1`, v)
	}
	if v := m.Sum("iamlet_kube_token_requests_total", nil); v != 0 {
		t.Errorf("the agent minted %v pod tokens while not confined, want none", v)
	}
	_, status, err := stack.Get("http://" + stack.AgentDebugAddr + "/status")
	if err != nil || !strings.Contains(status, `"minting":"cluster-wide minting"`) || !strings.Contains(status, why) {
		t.Errorf("status = %s (%v), want the minting mode and the reason", status, err)
	}

	// The binding back, cluster-wide minting kept: the next check passes and the agent mints again.
	if out, err := kubectl(rendered, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	code, body = waitReadyz(t, func(code int, _ string) bool { return code == 200 })
	if !strings.Contains(body, "ok: cluster-wide minting") {
		t.Errorf("/readyz = %q, want it to name cluster-wide minting", body)
	}
	untilClientSays(t, pod, "get ok", "the pod served once confinement holds")
}

// TestNodeMintingNeedsAPodBoundToken: minting as the node needs the agent to run with its pod's ServiceAccount
// token; run with any other identity (here the admin's), the agent exits at once with the reason instead of
// serving, so the DaemonSet pod crash-loops visibly.
func TestNodeMintingNeedsAPodBoundToken(t *testing.T) {
	stopSharedAgent()
	p, err := stack.StartProc(suite.Dir, "iamlet-admin", nil, suite.agentBin, append(suite.AgentArgs(), "--kubeconfig="+suite.Kubeconfig)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	start := time.Now()
	waitUntil(t, machineDeadline, "the agent to exit", p.Exited)
	t.Logf("the agent exited %s after start", time.Since(start).Round(time.Millisecond))
	err = p.Wait(0, func() bool { return false })
	log := logText(t, p.Log)
	if err == nil || !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(log, `runs as "admin", not a ServiceAccount`) {
		t.Errorf("want exit status 1 naming the identity; got %v\n%s", err, log)
	}
}

// TestLeftoverClusterGrantIsNotConfined: minting as the node (the chart's default) while the cluster-wide minting RBAC
// is still bound (applied once and never pruned), root on any node could mint for every ServiceAccount in the cluster
// with the agent's own token. The agent says minting is not confined and is not ready until the grant is gone.
func TestLeftoverClusterGrantIsNotConfined(t *testing.T) {
	installClusterMinting(t)
	// Once RBAC allows the agent's own request, only the admission policy refuses it.
	direct := agentClient(t, "")
	var last error
	if !eventually(machineDeadline, func() bool {
		last = unboundToken(direct)
		return last == nil || !strings.Contains(last.Error(), `cannot create resource "serviceaccounts/token"`)
	}) {
		t.Fatalf("RBAC still refuses the agent's own token request with the cluster-wide grant bound: %v", last)
	}

	p, err := stack.StartProc(suite.Dir, "iamlet-leftover-grant", nil, suite.agentBin, suite.AgentArgs()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	const why = "node-confined minting: the agent's ServiceAccount " + agentNamespace + "/iamlet may request tokens itself"
	code, body := waitReadyz(t, func(_ int, body string) bool { return strings.Contains(body, why) })
	if code != 503 {
		t.Errorf("/readyz = %d %q, want 503 naming %q", code, body, why)
	}

	// The grant removed: the next check, within seconds while not confined, passes.
	restoreStackInstall(t)
	waitReadyz(t, func(code int, _ string) bool { return code == 200 })
}

// waitReadyz polls the agent's /readyz until done accepts its answer, which it returns; it fails the test at the
// machine's deadline with the last answer.
func waitReadyz(t *testing.T, done func(code int, body string) bool) (int, string) {
	t.Helper()
	var code int
	var body string
	var err error
	if !eventually(machineDeadline, func() bool {
		code, body, err = stack.Get("http://" + stack.AgentMetricsAddr + "/readyz")
		return err == nil && done(code, body)
	}) {
		t.Fatalf("/readyz = %d %q (%v): not the answer waited for", code, body, err)
	}
	return code, body
}

// TestAgentReadsOnlyItsNodesPods: with the chart's RBAC, the agent's token (what root on its node holds) lists and
// watches pods only as its own node, and the Node authorizer lets a node see only the pods bound to it: no pod of
// another node, no pod spec cluster-wide, and nothing as the ServiceAccount itself.
func TestAgentReadsOnlyItsNodesPods(t *testing.T) {
	sharedAgent(t) // the stack's install in place
	ctx := context.Background()
	mine := suite.NewPod(t, "reads-mine", stack.PodOptions{ServiceAccount: saA})
	self, asNode := agentClient(t, ""), agentClient(t, stack.NodeName)
	onNode := func(n string) metav1.ListOptions {
		return metav1.ListOptions{FieldSelector: "spec.nodeName=" + n}
	}
	list := func(c kubernetes.Interface, opts metav1.ListOptions) error {
		l, err := c.CoreV1().Pods("").List(ctx, opts)
		if err == nil && opts.FieldSelector != "" && !slices.ContainsFunc(l.Items, func(p corev1.Pod) bool { return p.Name == mine.Name }) {
			return fmt.Errorf("listed %d pods, none of them %s", len(l.Items), mine.Name)
		}
		return err
	}
	watch := func(c kubernetes.Interface, opts metav1.ListOptions) error {
		w, err := c.CoreV1().Pods("").Watch(ctx, opts)
		if err == nil {
			w.Stop()
		}
		return err
	}
	for _, c := range []struct {
		name    string
		do      func() error
		allowed bool
	}{
		{"as its node, its node's pods", func() error { return list(asNode, onNode(stack.NodeName)) }, true},
		{"as its node, watching its node's pods", func() error { return watch(asNode, onNode(stack.NodeName)) }, true},
		{"as its node, every pod", func() error { return list(asNode, metav1.ListOptions{}) }, false},
		{"as its node, another node's pods", func() error { return list(asNode, onNode(stack.NodeName2)) }, false},
		{"as its node, watching every pod", func() error { return watch(asNode, metav1.ListOptions{}) }, false},
		{"as itself, every pod", func() error { return list(self, metav1.ListOptions{}) }, false},
		{"as itself, its node's pods", func() error { return list(self, onNode(stack.NodeName)) }, false},
		{"as another node, that node's pods", func() error { return list(agentClient(t, stack.NodeName2), onNode(stack.NodeName2)) }, false},
	} {
		var err error
		if !eventually(machineDeadline, func() bool { // RBAC takes effect once the authorizer's cache has it
			err = c.do()
			return (err == nil) == c.allowed && (c.allowed || apierrors.IsForbidden(err))
		}) {
			want := "allowed"
			if !c.allowed {
				want = "forbidden"
			}
			t.Errorf("%s: %v, want %s", c.name, err, want)
		}
	}
}

// installClusterMinting stops the shared agent and applies the chart as tokenMinting=cluster renders it, over the
// stack's installation, which is restored when the test ends; it returns what it applied.
func installClusterMinting(t *testing.T) []byte {
	t.Helper()
	stopSharedAgent()
	t.Cleanup(func() { restoreStackInstall(t) })
	rendered, err := stack.HelmTemplate("iamlet", agentNamespace, "--set", "tokenMinting=cluster")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl(rendered, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	return rendered
}

// unboundToken asks, with c, for the token the agent's confinement check asks for: the agent's own, bound to nothing.
func unboundToken(c kubernetes.Interface) error {
	secs := int64(600)
	_, err := c.CoreV1().ServiceAccounts(agentNamespace).CreateToken(context.Background(), "iamlet",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{Audiences: []string{satoken.CheckAudience}, ExpirationSeconds: &secs}}, metav1.CreateOptions{})
	return err
}
