package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
)

// The credential engine on the real stack (issue 3): prefetch, IP reuse, role changes, namespace
// allow-lists, and STS outages.

func podLabels(p *stack.Pod) map[string]string {
	return map[string]string{"namespace": p.Namespace, "pod": p.Name}
}

// waitCached waits until the agent holds credentials for each pod. On a node the prefetch a pod's appearance starts
// is done long before its containers start; here the harness creates the Pod object and runs the client at once, and
// on a busy machine the client's first request could find the fetch still running. Tests whose subject is what a
// client gets, not the cold path, wait for the prefetch first.
func waitCached(t *testing.T, pods ...*stack.Pod) {
	t.Helper()
	for _, p := range pods {
		waitMetric(t, "credentials cached for "+p.Name, machineDeadline, func(m stack.Metrics) bool {
			_, ok := m.Value("iamlet_credentials_expiry_timestamp_seconds", podLabels(p))
			return ok
		})
	}
}

// waitMetric polls the agent's metrics until cond holds.
func waitMetric(t *testing.T, what string, timeout time.Duration, cond func(stack.Metrics) bool) stack.Metrics {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m, err := stack.Scrape()
		if err == nil && cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not seen within %s (last scrape error: %v)", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// untilClientSays runs the gov2 client in p until its output contains want.
func untilClientSays(t *testing.T, p *stack.Pod, want, what string) stack.Result {
	t.Helper()
	deadline := time.Now().Add(machineDeadline)
	for {
		r := p.Exec(context.Background(), nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
		if strings.Contains(r.Stdout, want) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within %s:\n%s", what, machineDeadline, r.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// akid returns the access key id the gov2 client printed.
func akid(t *testing.T, out string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "creds" {
			return f[2]
		}
	}
	t.Fatalf("no credentials in client output:\n%s", out)
	return ""
}

// TestPrefetchMakesFirstRequestAHit: a pod created after the agent started is served its first
// request from cache. Proven by the agent's own counters, not by timing: the prefetch is recorded
// before the pod asks, and the pod's request outcome is "hit" with no "miss".
func TestPrefetchMakesFirstRequestAHit(t *testing.T) {
	sharedAgent(t)
	p := suite.NewPod(t, "prefetch", stack.PodOptions{ServiceAccount: saA})
	waitMetric(t, "the pod's prefetched credentials", machineDeadline, func(m stack.Metrics) bool {
		_, ok := m.Value("iamlet_credentials_expiry_timestamp_seconds", podLabels(p))
		return ok
	})
	r := p.Exec(context.Background(), nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
	if r.Err != nil || !strings.Contains(r.Stdout, "get ok") {
		t.Fatalf("gov2: %v\n%s", r.Err, r.Output())
	}
	m, err := stack.Scrape()
	if err != nil {
		t.Fatal(err)
	}
	labels := func(outcome string) map[string]string {
		l := podLabels(p)
		l["outcome"] = outcome
		return l
	}
	hits, _ := m.Value("iamlet_pod_credential_requests_total", labels("hit"))
	misses, _ := m.Value("iamlet_pod_credential_requests_total", labels("miss"))
	if hits < 1 || misses != 0 {
		t.Errorf("pod requests: hits = %v, misses = %v; want hits >= 1 and no miss (prefetch should have filled the cache)", hits, misses)
	}
}

// TestIPReuseNeverServesThePreviousPod: pod A is deleted and pod B takes its address with another
// ServiceAccount and role. B gets B's credentials, never A's.
func TestIPReuseNeverServesThePreviousPod(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	a := suite.NewPod(t, "reuse-a", stack.PodOptions{ServiceAccount: saA})
	ra := a.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
	if ra.Err != nil || !strings.Contains(ra.Stdout, "get ok") {
		t.Fatalf("pod A: %v\n%s", ra.Err, ra.Output())
	}
	keyA := akid(t, ra.Stdout)
	n := ipIndex(t, a.IP)
	a.Remove(t)

	b := suite.NewPod(t, "reuse-b", stack.PodOptions{ServiceAccount: saB, IP: n})
	if b.IP != a.IP {
		t.Fatalf("pod B got %s, want A's address %s", b.IP, a.IP)
	}
	rb := b.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
	stack.AssertNoNodeSecrets(t, "gov2", rb.Output())
	if rb.Err != nil {
		t.Fatalf("pod B: %v\n%s", rb.Err, rb.Output())
	}
	if keyB := akid(t, rb.Stdout); keyB == keyA {
		t.Fatalf("pod B at A's address was served A's credentials (%s)", keyA)
	}
	checkAccess(t, b.Name, rb.Stdout, "get", false)
	checkAccess(t, b.Name, rb.Stdout, "put", true)
	// A's series are gone with A: cardinality follows the node's live pods.
	waitMetric(t, "pod A's series to be deleted", machineDeadline, func(m stack.Metrics) bool {
		_, ok := m.Value("iamlet_credentials_expiry_timestamp_seconds", podLabels(a))
		return !ok
	})
}

func ipIndex(t *testing.T, ip string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscanf(ip, "10.200.0.%d", &n); err != nil {
		t.Fatalf("pod address %q: %v", ip, err)
	}
	return n
}

// TestSessionDurationChangeTakesEffectAtOnce: lowering a ServiceAccount's session duration, to limit what a leaked
// set is worth, starts a new and shorter session for its pods at once, not at the old session's next rotation.
func TestSessionDurationChangeTakesEffectAtOnce(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	sa := newServiceAccount(t, "default", "shortened", map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceA)})
	p := suite.NewPod(t, "shortened", stack.PodOptions{ServiceAccount: sa})
	expiresWithin := func(lo, hi time.Duration) func(stack.Metrics) bool {
		return func(m stack.Metrics) bool {
			v, ok := m.Value("iamlet_credentials_expiry_timestamp_seconds", podLabels(p))
			left := time.Until(time.Unix(int64(v), 0))
			return ok && left > lo && left <= hi
		}
	}
	waitMetric(t, "an hour-long session", machineDeadline, expiresWithin(45*time.Minute, time.Hour))
	before := akid(t, untilClientSays(t, p, "get ok", "the hour-long session").Stdout)

	patch := `{"metadata":{"annotations":{"` + roles.AnnotationSessionDuration + `":"15m"}}}`
	if _, err := suite.Kube.CoreV1().ServiceAccounts("default").Patch(ctx, sa, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, "a 15-minute session", machineDeadline, expiresWithin(0, 15*time.Minute))
	if after := akid(t, untilClientSays(t, p, "get ok", "the 15-minute session").Stdout); after == before {
		t.Errorf("after the session duration was lowered the pod was still served the hour-long session (%s)", before)
	}
}

// TestRoleAnnotationChangeSwitchesRole: changing the ServiceAccount's role annotation switches the
// role its pod receives, without restarting anything.
func TestRoleAnnotationChangeSwitchesRole(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	sa := newServiceAccount(t, "default", "switcher", map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceA)})
	p := suite.NewPod(t, "switcher", stack.PodOptions{ServiceAccount: sa})
	r := p.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
	checkAccess(t, p.Name, r.Stdout, "get", true)
	before := akid(t, r.Stdout)

	patch := `{"metadata":{"annotations":{"` + roles.AnnotationRoleARN + `":"` + stack.RoleARN(stack.AudienceB) +
		`","` + roles.AnnotationAudience + `":"` + stack.AudienceB + `"}}}`
	if _, err := suite.Kube.CoreV1().ServiceAccounts("default").Patch(ctx, sa, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	r = untilClientSays(t, p, "put ok", "the pod to receive role B after the annotation changed")
	checkAccess(t, p.Name, r.Stdout, "get", false)
	if akid(t, r.Stdout) == before {
		t.Errorf("same access key id after the role changed")
	}
}

// TestNamespaceAllowListExcludesRole: a namespace whose allow-list does not include the role its
// ServiceAccount names gets an error, not credentials; allowing it makes the pod work.
func TestNamespaceAllowListExcludesRole(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	ns := newNamespace(t, "restricted", map[string]string{roles.AnnotationAllowedRoles: stack.RoleARN(stack.AudienceB)})
	sa := newServiceAccount(t, ns, "wants-a", map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceA)})
	p := suite.NewPod(t, "restricted", stack.PodOptions{Namespace: ns, ServiceAccount: sa})
	pr := p.Exec(ctx, nil, clientBin(t, "probe"), "-token", "/latest/meta-data/iam/security-credentials/")
	if !strings.Contains(pr.Stdout, "\n403\niamlet: ") {
		t.Errorf("role listing from a pod whose role is not allowed: want 403, got:\n%s", pr.Output())
	}
	r := p.Exec(ctx, nil, suite.gov2Bin)
	if r.Err == nil {
		t.Errorf("gov2 got credentials for a role the namespace does not allow:\n%s", r.Output())
	}
	patch := `{"metadata":{"annotations":{"` + roles.AnnotationAllowedRoles + `":"arn:minio:iam:::role/*"}}}`
	if _, err := suite.Kube.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	untilClientSays(t, p, "get ok", "the pod to be served after the allow-list admitted its role")
}

// TestSTSOutage: with MinIO (the STS) stopped, pods keep being served their cached credentials; a pod
// that appears during the outage is refused with a clear error and served once STS is back, without
// restarting the agent.
func TestSTSOutage(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	cached := suite.NewPod(t, "outage-cached", stack.PodOptions{ServiceAccount: saA})
	waitCached(t, cached)
	r := cached.Exec(ctx, nil, suite.gov2Bin)
	if r.Err != nil {
		t.Fatalf("before the outage: %v\n%s", r.Err, r.Output())
	}
	key := akid(t, r.Stdout)

	suite.StopComponent("minio")
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if err := suite.StartComponent("minio"); err != nil {
				t.Errorf("restarting minio: %v", err)
			}
		}
	})
	r = cached.Exec(ctx, nil, suite.gov2Bin)
	if r.Err != nil || akid(t, r.Stdout) != key {
		t.Errorf("during the outage the cached pod was not served its cached credentials: %v\n%s", r.Err, r.Output())
	}
	stsErrors := func(m stack.Metrics) float64 {
		return m.Sum("iamlet_sts_requests_total", map[string]string{"result": "error"})
	}
	failedBefore := stsErrors(waitMetric(t, "a scrape", machineDeadline, func(stack.Metrics) bool { return true }))
	fresh := suite.NewPod(t, "outage-new", stack.PodOptions{ServiceAccount: saA})
	waitMetric(t, "a failed prefetch for the new pod", machineDeadline, func(m stack.Metrics) bool {
		return stsErrors(m) > failedBefore
	})
	pr := fresh.Exec(ctx, nil, clientBin(t, "probe"), "-token", "/latest/meta-data/iam/security-credentials/")
	if !strings.Contains(pr.Stdout, "\n503\niamlet: ") {
		t.Errorf("new pod during the outage: want 503, got:\n%s", pr.Output())
	}

	if err := suite.StartComponent("minio"); err != nil {
		t.Fatal(err)
	}
	restarted = true
	waitMetric(t, "the new pod's credentials after STS returned", 3*time.Minute, func(m stack.Metrics) bool {
		_, ok := m.Value("iamlet_credentials_expiry_timestamp_seconds", podLabels(fresh))
		return ok
	})
	r = fresh.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
	if r.Err != nil || !strings.Contains(r.Stdout, "get ok") {
		t.Errorf("new pod after STS returned: %v\n%s", r.Err, r.Output())
	}
}

func newNamespace(t *testing.T, name string, ann map[string]string) string {
	t.Helper()
	ctx := context.Background()
	_, err := suite.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	// Without a namespace controller a deleted namespace would stay Terminating; its objects are the
	// test's own and are deleted by their own cleanups, so the namespace is left.
	return name
}

func newServiceAccount(t *testing.T, ns, name string, ann map[string]string) string {
	t.Helper()
	ctx := context.Background()
	api := suite.Kube.CoreV1().ServiceAccounts(ns)
	if _, err := api.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service account %s/%s: %v", ns, name, err)
	}
	t.Cleanup(func() { _ = api.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return name
}
