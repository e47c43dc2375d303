package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/iamlet/iamlet/e2e/stack"
)

// The agent's identity as the manifests in deploy/ install it (the stack installs the chart).
const (
	agentNamespace = stack.AgentNamespace
	tokenPolicy    = "iamlet-token-requests"
)

var agentUser = stack.AgentUser

// helmOnlyLabels are the chart's bookkeeping labels; everything else must match the kustomize output.
var helmOnlyLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}

// platforms pairs each kustomization with the Helm values that must render the same objects.
var platforms = []struct{ name, kustomization, values string }{
	{"default", "deploy/kustomize/base", ""},
	{"eks", "deploy/kustomize/overlays/eks", "deploy/helm/platforms/eks.yaml"},
	{"kops-calico", "deploy/kustomize/overlays/kops-calico", "deploy/helm/platforms/kops-calico.yaml"},
	{"kops-cilium", "deploy/kustomize/overlays/kops-cilium", "deploy/helm/platforms/kops-cilium.yaml"},
}

// TestDeployHelmMatchesKustomize renders the chart (helm lint --strict first) and the kustomizations and
// requires the same objects from both, Helm's bookkeeping labels aside, so neither install path drifts.
func TestDeployHelmMatchesKustomize(t *testing.T) {
	for _, p := range platforms {
		args := []string{"lint", "--strict", repoPath(t, "deploy/helm/iamlet")}
		if p.values != "" {
			args = append(args, "-f", repoPath(t, p.values))
		}
		if out, err := exec.Command(helmBin(t), args...).CombinedOutput(); err != nil {
			t.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, p := range platforms {
		t.Run(p.name, func(t *testing.T) {
			compareObjects(t, parseObjects(t, kustomize(t, repoPath(t, p.kustomization))), parseObjects(t, helmTemplate(t, p.values)))
		})
	}
	// Optional pieces are kustomize components and chart values: the ServiceMonitor (it needs the Prometheus
	// Operator's CRD) and cluster-wide minting (for clusters without constrained impersonation).
	for _, c := range []struct{ component, value string }{
		{"servicemonitor", "serviceMonitor.enabled=true"},
		{"cluster-wide-minting", "tokenMinting=cluster"},
	} {
		t.Run(c.component, func(t *testing.T) {
			compareObjects(t, parseObjects(t, kustomizeWith(t, "", "deploy/kustomize/overlays/eks", "deploy/kustomize/components/"+c.component)),
				parseObjects(t, helmTemplate(t, "deploy/helm/platforms/eks.yaml", "--set", c.value)))
		})
	}
}

// kustomizeWith renders a kustomization of base with components, in namespace ns ("" to keep the base's).
func kustomizeWith(t *testing.T, ns, base string, components ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	rel := func(p string) string { // kustomize refuses absolute paths
		r, err := filepath.Rel(dir, repoPath(t, p))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%s]\n", rel(base))
	if ns != "" {
		k += "namespace: " + ns + "\n"
	}
	var rels []string
	for _, c := range components {
		rels = append(rels, rel(c))
	}
	k += fmt.Sprintf("components: [%s]\n", strings.Join(rels, ", "))
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o600); err != nil {
		t.Fatal(err)
	}
	return kustomize(t, dir)
}

// TestDeployServerDryRun applies every rendering with server-side dry run and strict field validation: the
// apiserver accepts each object as written (schemas, CEL in the admission policy, DaemonSet validation).
func TestDeployServerDryRun(t *testing.T) {
	// Namespaced objects are only validated in an existing namespace; a dry-run Namespace does not make one.
	ensureNamespace(t, agentNamespace)
	renderings := map[string][]byte{}
	for _, p := range platforms {
		renderings["kustomize "+p.kustomization] = kustomize(t, repoPath(t, p.kustomization))
		renderings["helm "+p.name] = helmTemplate(t, p.values)
	}
	renderings["helm nft backend, more audiences, extra args"] = helmTemplate(t, "", "--set", "iptablesBackend=nft",
		"--set", "admissionPolicy.audiences={sts.amazonaws.com,sts-b.example}", "--set", "extraArgs={--require-imdsv2}")
	for name, stream := range renderings {
		t.Run(name, func(t *testing.T) {
			out, err := kubectl(stream, "apply", "--dry-run=server", "--validate=strict", "-f", "-")
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
			}
			if n, want := strings.Count(out, "(server dry run)"), len(parseObjects(t, stream)); n != want {
				t.Errorf("server dry run accepted %d objects, want %d:\n%s", n, want, out)
			}
		})
	}
}

// TestAdmissionPolicyLimitsAgentTokens installs cluster-wide minting for real, three ways (the chart as the stack
// installs it, the kustomize base in another namespace, the chart under another release name in another
// namespace), then asks for tokens as that installation's agent ServiceAccount: only Pod-bound tokens for an
// allowed audience and at most ten minutes pass. The refusals carry the policy's name, so they come from the
// policy (whose `object` is the TokenRequest), not from RBAC; the policy names no namespace or user, so it
// follows the installation wherever it goes.
func TestAdmissionPolicyLimitsAgentTokens(t *testing.T) {
	stopSharedAgent() // other installations rebind the cluster-scoped RBAC; the stack's is restored at the end
	t.Cleanup(func() { restoreStackInstall(t) })
	ctx := context.Background()
	pod := suite.NewPod(t, "deploy-token", stack.PodOptions{ServiceAccount: saA})
	secret, err := suite.Kube.CoreV1().Secrets("default").Create(ctx,
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "deploy-token"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = suite.Kube.CoreV1().Secrets("default").Delete(ctx, secret.Name, metav1.DeleteOptions{}) })
	podRef := &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: types.UID(pod.UID)}
	secretRef := &authv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: secret.Name, UID: secret.UID}
	request := func(c kubernetes.Interface, audiences []string, ref *authv1.BoundObjectReference, secs int64) error {
		spec := authv1.TokenRequestSpec{Audiences: audiences, BoundObjectRef: ref}
		if secs > 0 {
			spec.ExpirationSeconds = &secs
		}
		_, err := c.CoreV1().ServiceAccounts("default").CreateToken(ctx, saA, &authv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
		return err
	}
	chart := func(name, ns string) []byte {
		out, err := stack.HelmTemplate(name, ns, "--set", "tokenMinting=cluster")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	installs := []struct {
		name, namespace, serviceAccount, policy string
		rendered                                []byte
	}{
		{"chart as installed", agentNamespace, "iamlet", tokenPolicy, chart("iamlet", agentNamespace)},
		{"kustomize in another namespace", "iamlet-alt", "iamlet", tokenPolicy, kustomizeWith(t, "iamlet-alt", "deploy/kustomize/base", "deploy/kustomize/components/cluster-wide-minting")},
		// The chart names its objects, the ServiceAccount and the policy too, after the release.
		{"chart under another release and namespace", "team-iamlet", "other-iamlet", "other-" + tokenPolicy, chart("other", "team-iamlet")},
	}
	for _, in := range installs {
		t.Run(in.name, func(t *testing.T) {
			if in.policy != tokenPolicy {
				// Every installation's policy binds whoever holds the iamlet.dev marker, so the stack's would refuse
				// this installation's agent too, and the apiserver names whichever refused first: unbind it, so that
				// what is proved is this installation's own policy. restoreStackInstall binds it again.
				if out, err := kubectl(nil, "delete", "validatingadmissionpolicybinding/"+tokenPolicy); err != nil {
					t.Fatalf("kubectl delete: %v\n%s", err, out)
				}
			}
			if out, err := kubectl(in.rendered, "apply", "-f", "-"); err != nil {
				t.Fatalf("kubectl apply: %v\n%s", err, out)
			}
			if in.serviceAccount != stack.AgentServiceAccount {
				// Its cluster-scoped objects have names of their own, which restoreStackInstall does not overwrite. Not
				// waited for: no controller manager runs here to finish deleting its Namespace.
				t.Cleanup(func() { _, _ = kubectl(in.rendered, "delete", "--ignore-not-found", "--wait=false", "-f", "-") })
			}
			agent := impersonate(t, "system:serviceaccount:"+in.namespace+":"+in.serviceAccount)
			// RBAC and the policy take effect once the apiserver's caches have them.
			var last error
			if !eventually(machineDeadline, func() bool {
				last = request(agent, []string{stack.AudienceA}, nil, 600)
				return policyDenied(last, in.policy)
			}) {
				t.Fatalf("the admission policy never refused an unbound token; last answer: %v", last)
			}
			for _, c := range []struct {
				name      string
				audiences []string
				ref       *authv1.BoundObjectReference
				secs      int64
				allowed   bool
			}{
				{"sts audience bound to a pod", []string{stack.AudienceA}, podRef, 600, true},
				{"an audience no one allows", []string{"sts-c.example"}, podRef, 600, false},
				{"the apiserver's audience", []string{stack.APIServerURL}, podRef, 600, false},
				{"no audience (the apiserver's by default)", nil, podRef, 600, false},
				{"an allowed and another audience", []string{stack.AudienceA, "sts-c.example"}, podRef, 600, false},
				{"bound to a secret", []string{stack.AudienceA}, secretRef, 600, false},
				{"not bound", []string{stack.AudienceA}, nil, 600, false},
				{"longer than the cap", []string{stack.AudienceA}, podRef, 3600, false},
				{"no expiration (the apiserver's default hour)", []string{stack.AudienceA}, podRef, 0, false},
			} {
				t.Run(c.name, func(t *testing.T) {
					err := request(agent, c.audiences, c.ref, c.secs)
					switch {
					case c.allowed && err != nil:
						t.Errorf("TokenRequest(%q, %v, %ds) as the agent: %v, want a token", c.audiences, refKind(c.ref), c.secs, err)
					case !c.allowed && !policyDenied(err, in.policy):
						t.Errorf("TokenRequest(%q, %v, %ds) as the agent = %v, want a refusal from %s", c.audiences, refKind(c.ref), c.secs, err, in.policy)
					}
				})
			}
		})
	}
	t.Run("other users are not limited", func(t *testing.T) {
		if err := request(suite.Kube, []string{"sts-c.example"}, secretRef, 0); err != nil {
			t.Errorf("TokenRequest as the admin: %v, want a token (the policy binds only the agent)", err)
		}
	})
}

// restoreStackInstall puts the stack's installation back after a test applied others over it: the chart as the
// stack renders it, and no cluster-wide minting.
func restoreStackInstall(t *testing.T) {
	t.Helper()
	if out, err := kubectl(nil, "delete", "--ignore-not-found", "clusterrolebinding/iamlet-cluster-wide-minting", "clusterrole/iamlet-cluster-wide-minting"); err != nil {
		t.Errorf("kubectl delete: %v\n%s", err, out)
	}
	rendered, err := stack.HelmTemplate("iamlet", agentNamespace)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl(rendered, "apply", "-f", "-"); err != nil {
		t.Errorf("kubectl apply: %v\n%s", err, out)
	}
}

// TestRBACAgentHasOnlyWhatItNeeds lists, with the chart's RBAC as the stack installs it, everything the agent may
// do: exactly the reads and the node-confined minting it needs, plus what every authenticated ServiceAccount has.
func TestRBACAgentHasOnlyWhatItNeeds(t *testing.T) {
	need := []string{
		// Pods only as its own node, whose pods alone the Node authorizer lets it list and watch.
		"pods impersonate-on:associated-node:list", "pods impersonate-on:associated-node:watch",
		"serviceaccounts get", "serviceaccounts list", "serviceaccounts watch",
		"namespaces get", "namespaces list", "namespaces watch",
		// Minting only as its own node; no serviceaccounts/token create of its own.
		"nodes.authentication.k8s.io impersonate:associated-node",
		"serviceaccounts/token impersonate-on:associated-node:create",
		// The admission policies' markers, no permissions.
		"tokenrequests.iamlet.dev constrained", "nodes.iamlet.dev confined",
		// Removing the start-up taint; iamlet-startup-taint allows that change only, on its own node only.
		"nodes get", "nodes update",
	}
	// Bootstrap ClusterRoles bound to every authenticated user (system:basic-user, system:discovery,
	// system:public-info-viewer) or every ServiceAccount (system:service-account-issuer-discovery).
	builtin := []string{
		"selfsubjectaccessreviews.authorization.k8s.io create", "selfsubjectrulesreviews.authorization.k8s.io create",
		"selfsubjectreviews.authentication.k8s.io create",
		"get /api", "get /api/*", "get /apis", "get /apis/*", "get /openapi", "get /openapi/*",
		"get /healthz", "get /livez", "get /readyz", "get /version", "get /version/",
		"get /.well-known/openid-configuration", "get /.well-known/openid-configuration/", "get /openid/v1/jwks", "get /openid/v1/jwks/",
	}
	agent := impersonate(t, agentUser)
	for _, ns := range []string{"default", agentNamespace} {
		t.Run(ns, func(t *testing.T) {
			var got []string
			eventually(machineDeadline, func() bool { // RBAC takes effect once the authorizer's cache has it
				got = rulesOf(t, agent, ns)
				return containsAll(got, need)
			})
			for _, r := range need {
				if !slices.Contains(got, r) {
					t.Errorf("the agent cannot %q; it needs to", r)
				}
			}
			for _, r := range got {
				if !slices.Contains(need, r) && !slices.Contains(builtin, r) {
					t.Errorf("the agent may %q, which it does not need", r)
				}
			}
			if t.Failed() {
				t.Logf("the agent's rules in namespace %s:\n%s", ns, strings.Join(got, "\n"))
			}
		})
	}
}

// rulesOf returns what the client's user may do in ns, one "resource verb" or "verb /path" per entry.
func rulesOf(t *testing.T, c kubernetes.Interface, ns string) []string {
	t.Helper()
	rev, err := c.AuthorizationV1().SelfSubjectRulesReviews().Create(context.Background(),
		&authzv1.SelfSubjectRulesReview{Spec: authzv1.SelfSubjectRulesReviewSpec{Namespace: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rev.Status.Incomplete {
		t.Fatalf("the rules review is incomplete (%s): it cannot show that nothing else is allowed", rev.Status.EvaluationError)
	}
	var out []string
	for _, r := range rev.Status.ResourceRules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				if g != "" {
					res += "." + g
				}
				if len(r.ResourceNames) > 0 {
					res += fmt.Sprintf(" (named %v)", r.ResourceNames)
				}
				for _, v := range r.Verbs {
					out = append(out, res+" "+v)
				}
			}
		}
	}
	for _, r := range rev.Status.NonResourceRules {
		for _, u := range r.NonResourceURLs {
			for _, v := range r.Verbs {
				out = append(out, v+" "+u)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// policyDenied tells whether err is the token policy failing a validation (its own message), rather than RBAC
// or an expression that could not be evaluated.
func policyDenied(err error, policy string) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policy+"'") &&
		strings.Contains(err.Error(), "denied request: iamlet may only request tokens")
}

func refKind(r *authv1.BoundObjectReference) string {
	if r == nil {
		return "unbound"
	}
	return "bound to a " + r.Kind
}

// impersonate returns a client that acts as user through the admin's kubeconfig.
func impersonate(t *testing.T, user string) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", suite.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.Impersonate = rest.ImpersonationConfig{UserName: user}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ensureNamespace(t *testing.T, name string) {
	t.Helper()
	_, err := suite.Kube.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// compareObjects fails with a unified diff unless both sets hold the same objects, Helm's labels aside.
func compareObjects(t *testing.T, kustomized, helm map[string]map[string]any) {
	t.Helper()
	k, h := canonical(t, kustomized), canonical(t, helm)
	if k == h {
		return
	}
	dir := t.TempDir()
	kf, hf := filepath.Join(dir, "kustomize"), filepath.Join(dir, "helm")
	if err := errors.Join(os.WriteFile(kf, []byte(k), 0o600), os.WriteFile(hf, []byte(h), 0o600)); err != nil {
		t.Fatal(err)
	}
	diff, _ := exec.Command("diff", "-u", kf, hf).CombinedOutput()
	t.Errorf("kustomize and helm render different objects:\n%s", diff)
}

// canonical prints the objects sorted by kind, namespace and name, as indented JSON (sorted keys).
func canonical(t *testing.T, objs map[string]map[string]any) string {
	t.Helper()
	var b strings.Builder
	for _, key := range slices.Sorted(maps.Keys(objs)) {
		o := objs[key]
		for _, path := range [][]string{{"metadata", "labels"}, {"spec", "template", "metadata", "labels"}} {
			if labels, found, _ := unstructured.NestedStringMap(o, path...); found {
				for _, l := range helmOnlyLabels {
					delete(labels, l)
				}
				if err := unstructured.SetNestedStringMap(o, labels, path...); err != nil {
					t.Fatal(err)
				}
			}
		}
		j, err := json.MarshalIndent(o, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "# %s\n%s\n", key, j)
	}
	return b.String()
}

// parseObjects reads a YAML stream into objects keyed "Kind namespace/name".
func parseObjects(t *testing.T, stream []byte) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(stream), 4096)
	for {
		var o map[string]any
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("parsing manifests: %v", err)
		}
		if o == nil {
			continue
		}
		u := unstructured.Unstructured{Object: o}
		key := fmt.Sprintf("%s %s/%s", u.GetKind(), u.GetNamespace(), u.GetName())
		if _, dup := out[key]; dup {
			t.Fatalf("%s appears twice", key)
		}
		out[key] = o
	}
}

func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	out, err := exec.Command("kubectl", "kustomize", dir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, exitStderr(err))
	}
	return out
}

// helmTemplate renders the chart as release "iamlet" in the agent's namespace, with the Namespace object (as
// the kustomize base has it), a values file relative to the repo ("" for none) and more helm flags.
func helmTemplate(t *testing.T, values string, flags ...string) []byte {
	t.Helper()
	// No hooks: the kustomize base has no uninstall clean-up (docs/interception.md#uninstall is its way).
	args := []string{"template", "iamlet", repoPath(t, "deploy/helm/iamlet"), "--namespace", agentNamespace, "--set", "namespace.create=true", "--no-hooks"}
	if values != "" {
		args = append(args, "-f", repoPath(t, values))
	}
	out, err := exec.Command(helmBin(t), append(args, flags...)...).Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, exitStderr(err))
	}
	return out
}

// kubectl runs kubectl against the stack's apiserver as the admin, with stdin, and returns its output.
func kubectl(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", suite.Kubeconfig}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func helmBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(stack.BinDir(), "helm")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("helm is missing (%v): run hack/install-stack.sh (make test does)", err)
	}
	return bin
}

// repoPath is a path relative to the module root, made absolute (the tests run in e2e/).
func repoPath(t *testing.T, rel string) string {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join("..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func exitStderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

func eventually(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// TestAgentRunsWithTheShippedArguments: the agents of this suite, and the host-rules container beside them, run
// with the arguments the chart's DaemonSet gives, not friendlier ones. Each DaemonSet argument, with the downward
// API's values for this node substituted, is either one the harness passes with the same value or, where the harness
// passes none, the flag's default; the only differences allowed are where the IMDSv2 key file and the node's cgroup
// hierarchy are found. (The harness adds what only a test needs: the local STS endpoint, the node IMDS
// mock, the loopback debug address, debug logging, this run's own pods cgroup and scratch directory.) The variables
// substituted must come from where the substitution assumes.
func TestAgentRunsWithTheShippedArguments(t *testing.T) {
	env := strings.NewReplacer("$(HOST_IPS)", stack.NodeIP+","+stack.NodeIPv6, "$(NODE_NAME)", stack.NodeName,
		"$(POD_IP)", stack.NodeIP, "$(MEMORY_LIMIT)", strconv.FormatInt(shippedMemoryLimit(t), 10), "$(POD_UID)", suite.AgentPodUID)
	sources := map[string]string{"HOST_IPS": "status.hostIPs", "NODE_NAME": "spec.nodeName", "POD_IP": "status.podIP",
		"MEMORY_LIMIT": "limits.memory", "POD_UID": "metadata.uid"}
	for _, c := range []struct {
		container, command string
		harness            []string
	}{
		{"iamlet", "run", append([]string{"run"}, suite.AgentArgs()...)},
		{"host-rules", "host-rules", suite.HostRulesArgs()},
	} {
		t.Run(c.container, func(t *testing.T) {
			container := shippedContainer(t, c.container)
			shipped, _, _ := unstructured.NestedStringSlice(container, "args")
			envs, _, _ := unstructured.NestedSlice(container, "env")
			for _, e := range envs {
				e := e.(map[string]any)
				field, _, _ := unstructured.NestedString(e, "valueFrom", "fieldRef", "fieldPath")
				res, _, _ := unstructured.NestedString(e, "valueFrom", "resourceFieldRef", "resource")
				if want := sources[e["name"].(string)]; field+res != want {
					t.Errorf("the DaemonSet's %s comes from %q, want %q", e["name"], field+res, want)
				}
			}
			if len(shipped) < 2 || shipped[0] != c.command || c.harness[0] != c.command {
				t.Fatalf("DaemonSet args = %q, want %s and its flags", shipped, c.command)
			}
			harness := map[string]string{}
			for _, a := range c.harness[1:] {
				k, v, _ := strings.Cut(a, "=")
				harness[k] = v
			}
			help, _ := exec.Command(suite.agentBin, c.command, "--help").CombinedOutput()
			for _, a := range shipped[1:] {
				k, v, _ := strings.Cut(env.Replace(a), "=")
				got, passed := harness[k]
				switch {
				case k == "--token-key-file", k == "--cgroup-root":
					// Paths of the pod's filesystem: the harness keeps the key in its scratch directory, and reads
					// the machine's cgroup hierarchy where it is mounted rather than through a hostPath mount of it.
				case passed && got != v:
					t.Errorf("the DaemonSet passes %s=%s, the harness %s=%s", k, v, k, got)
				case !passed && !isFlagDefault(string(help), strings.TrimPrefix(k, "--"), v):
					t.Errorf("the DaemonSet passes %s=%s, which is not the default the harness runs with:\n%s", k, v, help)
				}
			}
		})
	}
}

// isFlagDefault tells from `iamlet run --help` whether value is flag's default: Go's flag package prints
// `(default X)` for non-zero defaults and nothing for zero ones.
func isFlagDefault(help, flag, value string) bool {
	i := strings.Index(help, "  -"+flag+" ")
	if j := strings.Index(help, "  -"+flag+"\n"); i < 0 || j >= 0 && j < i {
		i = j
	}
	if i < 0 {
		return false
	}
	entry := help[i+1:]
	if next := strings.Index(entry, "\n  -"); next >= 0 {
		entry = entry[:next]
	}
	if d := strings.Index(entry, "(default "); d >= 0 {
		return strings.Trim(strings.TrimSuffix(strings.TrimSpace(entry[d+len("(default "):]), ")"), `"`) == value
	}
	return value == "" || value == "false" || value == "0"
}

// shippedContainer is a container of the chart's DaemonSet, rendered with its default values.
func shippedContainer(t *testing.T, name string) map[string]any {
	t.Helper()
	rendered, err := stack.HelmTemplate("iamlet", agentNamespace)
	if err != nil {
		t.Fatal(err)
	}
	for key, o := range parseObjects(t, rendered) {
		if strings.HasPrefix(key, "DaemonSet ") {
			containers, _, _ := unstructured.NestedSlice(o, "spec", "template", "spec", "containers")
			for _, c := range containers {
				if c := c.(map[string]any); c["name"] == name {
					return c
				}
			}
		}
	}
	t.Fatalf("the chart renders no DaemonSet with a container %s", name)
	return nil
}

// shippedMemoryLimit is the memory limit, in bytes, the chart's DaemonSet gives the agent.
func shippedMemoryLimit(t *testing.T) int64 {
	t.Helper()
	v, _, _ := unstructured.NestedString(shippedContainer(t, "iamlet"), "resources", "limits", "memory")
	q, err := resource.ParseQuantity(v)
	if err != nil {
		t.Fatalf("the DaemonSet's memory limit %q: %v", v, err)
	}
	return q.Value()
}

// TestChartReleasesDoNotCollide: two releases under different names in two namespaces render no cluster-scoped
// object of the same kind and name, so neither install overwrites or deletes the other's.
func TestChartReleasesDoNotCollide(t *testing.T) {
	render := func(release, ns string) map[string]bool {
		out, err := exec.Command(helmBin(t), "template", release, repoPath(t, "deploy/helm/iamlet"), "--namespace", ns,
			"--set", "namespace.create=true", "--set", "tokenMinting=cluster", "--set", "serviceMonitor.enabled=true").Output()
		if err != nil {
			t.Fatalf("helm template %s: %v\n%s", release, err, exitStderr(err))
		}
		names := map[string]bool{}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
		for {
			var o struct {
				Kind     string `json:"kind"`
				Metadata struct{ Name, Namespace string }
			}
			if err := dec.Decode(&o); errors.Is(err, io.EOF) {
				return names
			} else if err != nil {
				t.Fatal(err)
			}
			if o.Kind != "" && o.Metadata.Namespace == "" && o.Kind != "Namespace" {
				names[o.Kind+"/"+o.Metadata.Name] = true
			}
		}
	}
	a, b := render("iamlet", "iamlet-system"), render("canary", "iamlet-canary")
	if len(a) < 6 || len(b) != len(a) {
		t.Fatalf("cluster-scoped objects: %d and %d, want the same six or more in each: %v %v", len(a), len(b), a, b)
	}
	for name := range a {
		if b[name] {
			t.Errorf("both releases render the cluster-scoped %s", name)
		}
	}
}

// TestChartSchemaRejectsBadValues: a wrong type, a misspelt key or a value outside its set is refused before
// anything renders, with a message that names it.
func TestChartSchemaRejectsBadValues(t *testing.T) {
	for _, c := range []struct{ set, want string }{
		{"ports.metrics=abc", "/ports/metrics': got string, want integer"},
		{"tokenMinting=nodes", "/tokenMinting': value must be one of 'node', 'cluster'"},
		{"imagee.tag=1", "additional properties 'imagee' not allowed"},
		{"hostNetworkPods.enabled=yes", "/hostNetworkPods/enabled': got string, want boolean"},
		{"admissionPolicy.maxExpirationSeconds=60", "/admissionPolicy/maxExpirationSeconds"},
		// A surged agent on the same node contends for its ports and rules and never becomes ready.
		{"updateStrategy.rollingUpdate.maxSurge=1", "/updateStrategy/rollingUpdate/maxSurge"},
	} {
		out, err := exec.Command(helmBin(t), "template", "iamlet", repoPath(t, "deploy/helm/iamlet"), "--set", c.set).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("--set %s: %v, want a refusal saying %q:\n%s", c.set, err, c.want, out)
		}
	}
}

// TestChartPortsMoveTogether: moving a port moves everything that depends on it: the agent's and host-rules'
// flags, the container port the probes name, the Service.
func TestChartPortsMoveTogether(t *testing.T) {
	out := helmTemplate(t, "", "--set", "ports.metrics=19180", "--set", "ports.metadata=18181", "--set", "ports.hostNetwork=18182")
	objs := parseObjects(t, out)
	ds, svc := objs["DaemonSet "+agentNamespace+"/iamlet"], objs["Service "+agentNamespace+"/iamlet"]
	if ds == nil || svc == nil {
		t.Fatalf("no DaemonSet or Service in the rendering")
	}
	text := func(o map[string]any) string { b, _ := json.Marshal(o); return string(b) }
	for _, want := range []string{`"--metrics-port=19180"`, `"--metadata-port=18181"`, `"containerPort":19180`} {
		if !strings.Contains(text(ds), want) {
			t.Errorf("the DaemonSet has no %s", want)
		}
	}
	if n := strings.Count(text(ds), `"--host-network-port=18182"`); n != 2 {
		t.Errorf("--host-network-port=18182 in %d containers, want the agent and host-rules", n)
	}
	if n := strings.Count(text(ds), `"port":"metrics"`); n != 3 {
		t.Errorf("%d probes name the metrics port, want startup, liveness and readiness", n)
	}
	if !strings.Contains(text(svc), `"port":19180`) {
		t.Errorf("the Service does not follow ports.metrics: %s", text(svc))
	}
}

// TestChartIssuanceRecords: issuanceRecords.hostPath gives the agent --issuance-file on a volume of that node
// directory, and the agent accepts the flag; unset, neither is rendered.
func TestChartIssuanceRecords(t *testing.T) {
	ds := parseObjects(t, helmTemplate(t, "", "--set", "issuanceRecords.hostPath=/var/log/iamlet-records"))["DaemonSet "+agentNamespace+"/iamlet"]
	containers, _, _ := unstructured.NestedSlice(ds, "spec", "template", "spec", "containers")
	volumes, _, _ := unstructured.NestedSlice(ds, "spec", "template", "spec", "volumes")
	agent := containers[0].(map[string]any)
	args, _, _ := unstructured.NestedStringSlice(agent, "args")
	mounts, _, _ := unstructured.NestedSlice(agent, "volumeMounts")
	const flag = "--issuance-file=/var/log/iamlet/issuance.jsonl"
	if !slices.Contains(args, flag) {
		t.Fatalf("agent args %q lack %s", args, flag)
	}
	var mount string
	for _, m := range mounts {
		if m := m.(map[string]any); m["mountPath"] == "/var/log/iamlet" {
			mount = m["name"].(string)
		}
	}
	var hostPath string
	for _, v := range volumes {
		if v := v.(map[string]any); v["name"] == mount {
			hostPath, _, _ = unstructured.NestedString(v, "hostPath", "path")
		}
	}
	if mount == "" || hostPath != "/var/log/iamlet-records" {
		t.Errorf("/var/log/iamlet is mounted from volume %q with hostPath %q, want the node's /var/log/iamlet-records", mount, hostPath)
	}
	if out, err := exec.Command(suite.agentBin, "run", "--help").CombinedOutput(); !strings.Contains(string(out), "-issuance-file") {
		t.Errorf("iamlet run has no --issuance-file flag: %v\n%s", err, out)
	}
	if plain := helmTemplate(t, ""); strings.Contains(string(plain), "issuance") {
		t.Errorf("rendered with issuance records though issuanceRecords.hostPath is empty")
	}
}

// TestChartPackages: the chart packages (as the release pipeline does before pushing it as an OCI artifact), and the
// package carries its schema, NOTES and README, lints, and renders the same objects as the source tree.
func TestChartPackages(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(helmBin(t), "package", repoPath(t, "deploy/helm/iamlet"), "-d", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("helm package: %v\n%s", err, out)
	}
	pkgs, _ := filepath.Glob(filepath.Join(dir, "iamlet-*.tgz"))
	if len(pkgs) != 1 {
		t.Fatalf("helm package made %v", pkgs)
	}
	list, err := exec.Command("tar", "-tzf", pkgs[0]).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"iamlet/values.schema.json", "iamlet/templates/NOTES.txt", "iamlet/README.md", "iamlet/files/alerts.yaml", "iamlet/files/dashboard.json"} {
		if !strings.Contains(string(list), f+"\n") {
			t.Errorf("the package has no %s:\n%s", f, list)
		}
	}
	if out, err := exec.Command(helmBin(t), "lint", "--strict", pkgs[0]).CombinedOutput(); err != nil {
		t.Errorf("helm lint of the package: %v\n%s", err, out)
	}
	render := func(chart string) []byte {
		out, err := exec.Command(helmBin(t), "template", "iamlet", chart, "--namespace", agentNamespace,
			"--set", "prometheusRule.enabled=true", "--set", "dashboard.enabled=true", "--set", "serviceMonitor.enabled=true").Output()
		if err != nil {
			t.Fatalf("helm template %s: %v\n%s", chart, err, exitStderr(err))
		}
		return out
	}
	if a, b := render(repoPath(t, "deploy/helm/iamlet")), render(pkgs[0]); !bytes.Equal(a, b) {
		t.Errorf("the package renders differently from the source tree")
	}
}
