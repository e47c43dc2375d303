// Package stack runs the real components the end-to-end tests need on one machine: etcd, kube-apiserver,
// MinIO as STS and S3, and amazon-ec2-metadata-mock playing the node's own IMDS, all inside a "node"
// network namespace, plus one network namespace per pod joined to it by a veth pair.
//
// The test binary re-executes itself inside the node namespace (Main), so tests reach the apiserver and
// MinIO on that namespace's loopback and never touch the machine's root namespace. Binaries come from
// hack/install-stack.sh (IAMLET_STACK_DIR, default /var/cache/iamlet-stack).
package stack

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Addresses and names of the node.
const (
	NodeName      = "node-1"
	NodeIP        = "10.200.0.1"
	NodeIPv6      = "fd00:200::1"
	IMDSv4        = "169.254.169.254"
	IMDSv6        = "fd00:ec2::254"
	APIServerURL  = "https://127.0.0.1:6443"
	STSEndpoint   = "http://127.0.0.1:9000"
	MinIOFromPods = "http://" + NodeIP + ":9000"
	MinIOUser     = "iamletadmin"
	MinIOPassword = "iamletadmin-secret"
	adminToken    = "iamlet-e2e-admin-token"
)

// The node's own secrets as the metadata mock serves them; no pod may ever see these.
const (
	NodeRoleName      = "node-role"
	NodeAccessKey     = "NODEROLEAKID_MUST_NOT_LEAK"
	NodeSecretKey     = "NODEROLESECRET_MUST_NOT_LEAK"
	NodeSessionToken  = "NODEROLETOKEN_MUST_NOT_LEAK"
	NodeUserData      = "NODEUSERDATA_MUST_NOT_LEAK"
	NodeProfileMarker = "NODEPROFILE_MUST_NOT_LEAK"
)

// Markers lists every node secret, for leak checks.
var Markers = []string{NodeAccessKey, NodeSecretKey, NodeSessionToken, NodeUserData, NodeProfileMarker}

// Roles as MinIO names them: one OpenID provider per audience, each with its own built-in policy:
// role A may read objects (GetObject) and not write them; role B may write and not read; role C, the broad
// role teams share, may do anything to any bucket (the least-privilege tests narrow it with session policies).
const (
	AudienceA = "sts.amazonaws.com"
	AudienceB = "sts-b.example"
	AudienceC = "sts-shared.example"
	PolicyA   = "readonly"
	PolicyB   = "writeonly"
	PolicyC   = "readwrite"
	Bucket    = "iamlet-e2e"
	// OtherBucket is a second bucket role C may use, and a workload's generated policy must not.
	OtherBucket = "iamlet-e2e-other"
)

// RoleARN is MinIO's role ARN for the provider whose client ID is audience.
func RoleARN(audience string) string {
	sum := sha1.Sum([]byte(audience))
	return "arn:minio:iam:::role/" + base64.RawURLEncoding.EncodeToString(sum[:])
}

const (
	envInside = "IAMLET_E2E_NODE_NS"
	envRun    = "IAMLET_E2E_RUN"
)

// Main runs body inside a node network namespace on a running stack with its fixtures, and tears
// everything down afterwards, even when body crashes. From TestMain:
// os.Exit(stack.Main(func(s *stack.Stack) int { ...; return m.Run() })).
func Main(body func(*Stack) int) int { return mainOf(simulated, body) }

// MainRealNode is Main on a real node: a kubelet, containerd, the controllers and kube-proxy (realnode.go). Pods are
// created as Pod objects and run by the kubelet; the agent is installed by the test, as a user installs it.
func MainRealNode(body func(*Stack) int) int { return mainOf(realNode, body) }

// kind is what plays the node: the harness itself, pods being network namespaces whose Pod objects it patches, or a
// real kubelet.
type kind string

const (
	simulated kind = "simulated"
	realNode  kind = "real"
)

const envKind = "IAMLET_E2E_KIND"

func mainOf(k kind, body func(*Stack) int) int {
	if os.Getenv(envInside) == "" {
		return outer(k)
	}
	s, err := start(k, os.Getenv(envInside), os.Getenv(envRun), os.Getenv(envDir))
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: starting the stack:", err)
		if s != nil {
			s.Stop()
		}
		return 1
	}
	defer s.Stop()
	if err := s.fixtures(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: fixtures:", err)
		return 1
	}
	return body(s)
}

const envDir = "IAMLET_E2E_DIR"

// outer checks what the stack needs, makes the node namespace and the scratch directory, re-runs this test binary
// inside the namespace and cleans up after it. Missing prerequisites fail loudly: these tests are part of the suite.
func outer(k kind) (code int) {
	if err := Prerequisites(k); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL:", err)
		return 1
	}
	run := fmt.Sprintf("%04x", os.Getpid()&0xffff)
	node := "iamlet-" + run + "-node"
	if out, err := exec.Command("ip", "netns", "add", node).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: ip netns add %s: %v: %s\n", node, err, out)
		return 1
	}
	dir, err := os.MkdirTemp("", "iamlet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL:", err)
		return 1
	}
	var before realNodeSnapshot
	if k == realNode {
		before = snapshotRealNode()
	}
	defer func() {
		if k == realNode {
			cleanupRealNode(node, dir, before)
			if left := realNodeLeftovers(dir, before); len(left) > 0 {
				fmt.Fprintf(os.Stderr, "e2e: FAIL: the real node's teardown left %s\n", strings.Join(left, ", "))
				code = 1
			}
		}
		cleanupRun(run)
		if os.Getenv("IAMLET_E2E_KEEP") == "" {
			_ = os.RemoveAll(dir)
		}
	}()
	// `ip netns exec` also unshares the mount namespace and remounts /sys; a real node's kubelet and containerd must
	// share the machine's mounts, so it enters only the network namespace.
	argv := append([]string{"ip", "netns", "exec", node, os.Args[0]}, os.Args[1:]...)
	if k == realNode {
		argv = append([]string{"nsenter", "--net=/var/run/netns/" + node, "--", os.Args[0]}, os.Args[1:]...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), envInside+"="+node, envRun+"="+run, envDir+"="+dir, envKind+"="+string(k))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return code
}

// cleanupRun kills whatever still runs in this run's namespaces and deletes them.
func cleanupRun(run string) {
	defer RemoveRunCgroups(run) // after the namespaces' processes are killed
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, "iamlet-"+run+"-") {
			continue
		}
		pids, _ := exec.Command("ip", "netns", "pids", name).Output()
		for _, p := range strings.Fields(string(pids)) {
			_ = exec.Command("kill", "-9", p).Run()
		}
		_ = exec.Command("ip", "netns", "delete", name).Run()
	}
}

// Prerequisites reports what is missing for a stack of kind k to run.
func Prerequisites(k kind) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the end-to-end tests need root (network namespaces, iptables); run them as root via make test")
	}
	var missing []string
	for _, tool := range []string{"ip", "iptables", "iptables-nft", "iptables-legacy", "ip6tables", "conntrack", "etcd", "nft", "unshare", "mount", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	bins := []string{"kube-apiserver", "minio", "ec2-metadata-mock"}
	if k == realNode {
		for _, tool := range []string{"containerd", "runc", "ctr", "buildah", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local"} {
			if _, err := exec.LookPath(tool); err != nil {
				missing = append(missing, tool)
			}
		}
		bins = append(bins, "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "helm")
	}
	for _, b := range bins {
		if _, err := os.Stat(filepath.Join(BinDir(), b)); err != nil {
			missing = append(missing, filepath.Join(BinDir(), b))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: run hack/install-stack.sh (make test does)", strings.Join(missing, ", "))
	}
	return nil
}

// BinDir is where hack/install-stack.sh put the component binaries.
func BinDir() string {
	if d := os.Getenv("IAMLET_STACK_DIR"); d != "" {
		return filepath.Join(d, "bin")
	}
	return "/var/cache/iamlet-stack/bin"
}

// Stack is the running node.
type Stack struct {
	Run        string // short id; prefixes every namespace and link of this run
	NodeNS     string
	Dir        string // scratch directory: certificates, data, logs
	Kubeconfig string // the admin's
	// AgentKubeconfig holds the agent's pod-bound ServiceAccount token (installAgent).
	AgentKubeconfig string
	// AgentPodUID is the agent's Pod object's UID (installAgent): its --pod-uid, and where its cgroup is.
	AgentPodUID string
	hostRules   *Proc // the agent pod's host-rules container (EnsureHostRules)
	Kube        kubernetes.Interface
	procs       []*Proc
	addrs       podAddrs
	kind        kind // pod addresses, reused once a pod's network is gone
	audit       *AuditReceiver
}

// Component returns the running process of a stack component ("etcd", "kube-apiserver", "minio",
// "ec2-metadata-mock").
func (s *Stack) Component(name string) *Proc {
	for i := len(s.procs) - 1; i >= 0; i-- {
		if s.procs[i].Name == name {
			return s.procs[i]
		}
	}
	return nil
}

// StopComponent stops a component (SIGTERM, then SIGKILL).
func (s *Stack) StopComponent(name string) {
	if p := s.Component(name); p != nil {
		p.Stop()
	}
}

// StartComponent restarts a stopped component and waits until it serves again.
func (s *Stack) StartComponent(name string) error {
	old := s.Component(name)
	if old == nil {
		return fmt.Errorf("no component %q", name)
	}
	p, err := old.Restart()
	if err != nil {
		return err
	}
	s.procs = append(s.procs, p)
	switch name {
	case "minio":
		return p.WaitHTTP(STSEndpoint+"/minio/health/ready", 60*time.Second)
	case "kube-apiserver":
		return p.Wait(60*time.Second, func() bool {
			return s.Kube.Discovery().RESTClient().Get().AbsPath("/readyz").Do(context.Background()).Error() == nil
		})
	case "etcd":
		return p.WaitHTTP("http://127.0.0.1:2379/health", 30*time.Second)
	case "ec2-metadata-mock":
		return p.WaitHTTP("http://"+IMDSv4+"/latest/meta-data/instance-id", 30*time.Second)
	}
	return nil
}

func start(k kind, nodeNS, run, dir string) (*Stack, error) {
	s := &Stack{Run: run, NodeNS: nodeNS, Dir: dir, kind: k}
	t0 := time.Now()
	steps := []step{
		{"node network", s.nodeNetwork},
		{"certificates", func() error { return writePKI(dir) }},
	}
	if k == realNode {
		steps = append(steps, step{"node certificates", s.nodeCerts})
	}
	steps = append(steps, []step{
		{"etcd", s.startEtcd},
		{"kube-apiserver", s.startAPIServer},
		{"cluster objects", s.clusterObjects},
	}...)
	if k == simulated {
		steps = append(steps, step{"agent install", s.installAgent})
	}
	steps = append(steps, step{"minio", s.startMinIO}, step{"metadata mock", s.startMock})
	if k == realNode {
		steps = append(steps, s.realNodeSteps()...)
	}
	for _, st := range steps {
		t := time.Now()
		if err := st.f(); err != nil {
			return s, fmt.Errorf("%s: %w", st.name, err)
		}
		if k == realNode {
			fmt.Fprintf(os.Stderr, "e2e: %s in %s\n", st.name, time.Since(t).Round(time.Millisecond))
		}
	}
	fmt.Fprintf(os.Stderr, "e2e: %s node up in %s (scratch %s)\n", k, time.Since(t0).Round(time.Millisecond), dir)
	return s, nil
}

// Stop stops every process; the outer process removes the rest (outer).
func (s *Stack) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop()
	}
}

// The node's IMDS is off the node, as on EC2: in a namespace of its own (imdsNetNS), reached by a route through a
// link, so a pod's packet that no rule redirected is forwarded to it (FORWARD), not delivered to the node (INPUT).
// Nitro instances answer IMDS on fd00:ec2::254 too: the node's IMDS is reachable over IPv6 here as well.
const (
	imdsLinkNode, imdsLinkIMDS     = "10.254.169.1", "10.254.169.2"
	imdsLinkNodeV6, imdsLinkIMDSV6 = "fd00:254:169::1", "fd00:254:169::2"
)

// imdsNetNS is the namespace the node's IMDS answers in; imdsLink the node's end of the link to it.
func imdsNetNS(run string) string { return "iamlet-" + run + "-imds" }
func imdsLink(run string) string  { return "ia" + run + "imds" }

func (s *Stack) nodeNetwork() error {
	ns, link := imdsNetNS(s.Run), imdsLink(s.Run)
	cmds := [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "addr", "add", imdsLinkNode + "/30", "dev", link},
		{"ip", "-6", "addr", "add", imdsLinkNodeV6 + "/64", "dev", link, "nodad"},
		{"ip", "link", "set", link, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", IMDSv4 + "/32", "dev", "lo"},
		{"ip", "-n", ns, "-6", "addr", "add", IMDSv6 + "/128", "dev", "lo"},
		{"ip", "-n", ns, "addr", "add", imdsLinkIMDS + "/30", "dev", "eth0"},
		{"ip", "-n", ns, "-6", "addr", "add", imdsLinkIMDSV6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", imdsLinkNode},
		{"ip", "-n", ns, "-6", "route", "add", "default", "via", imdsLinkNodeV6},
		{"ip", "route", "add", IMDSv4 + "/32", "via", imdsLinkIMDS},
		{"ip", "-6", "route", "add", IMDSv6 + "/128", "via", imdsLinkIMDSV6},
		{"ip", "addr", "add", NodeIP + "/32", "dev", "lo"},
		{"ip", "-6", "addr", "add", NodeIPv6 + "/128", "dev", "lo"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
	}
	if s.kind == realNode {
		// The node has no uplink: Service addresses need a route for kube-proxy's DNAT to rewrite them to the node's.
		cmds = append(cmds, []string{"ip", "route", "add", "10.96.0.0/16", "dev", "lo"})
	}
	return runAll(cmds)
}

func (s *Stack) startEtcd() error {
	p, err := s.Start("etcd", nil, "etcd", "--data-dir", filepath.Join(s.Dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380", "--name", "default")
	if err != nil {
		return err
	}
	return p.WaitHTTP("http://127.0.0.1:2379/health", 30*time.Second)
}

func (s *Stack) startAPIServer() error {
	d := s.Dir
	if err := os.WriteFile(filepath.Join(d, "tokens.csv"), []byte(adminToken+",admin,admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	args := []string{"--bind-address=127.0.0.1"}
	if s.kind == realNode {
		// Pod Security enforcing baseline by default, as many clusters do: the agent's pod (hostNetwork, NET_ADMIN)
		// is admitted only in a namespace labelled privileged.
		cfg := filepath.Join(d, "admission.yaml")
		if err := os.WriteFile(cfg, []byte(podSecurityBaseline), 0o600); err != nil {
			return err
		}
		// The agent's in-cluster config reaches it through the kubernetes Service (kube-proxy), at the node's
		// address; exec and logs reach the kubelet with a client certificate.
		args = []string{"--bind-address=0.0.0.0", "--admission-control-config-file=" + cfg,
			"--kubelet-client-certificate=" + filepath.Join(d, "apiserver-kubelet-client.crt"),
			"--kubelet-client-key=" + filepath.Join(d, "apiserver-kubelet-client.key"),
			"--kubelet-preferred-address-types=InternalIP"}
	}
	p, err := s.Start("kube-apiserver", nil, filepath.Join(BinDir(), "kube-apiserver"), append(args,
		"--etcd-servers=http://127.0.0.1:2379", "--secure-port=6443",
		"--advertise-address="+NodeIP,
		"--tls-cert-file="+filepath.Join(d, "apiserver.crt"), "--tls-private-key-file="+filepath.Join(d, "apiserver.key"),
		"--client-ca-file="+filepath.Join(d, "ca.crt"), "--token-auth-file="+filepath.Join(d, "tokens.csv"),
		"--service-account-issuer="+APIServerURL, "--service-account-jwks-uri="+APIServerURL+"/openid/v1/jwks",
		"--service-account-key-file="+filepath.Join(d, "sa.pub"), "--service-account-signing-key-file="+filepath.Join(d, "sa.key"),
		"--api-audiences="+APIServerURL, "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		// As EKS and kops run it: CNI agents, kube-proxy and iamlet's host-rules container are privileged.
		"--allow-privileged=true",
		"--anonymous-auth=true",
		"--service-cluster-ip-range=10.96.0.0/16", "--cert-dir="+filepath.Join(d, "apiserver-certs"),
		"--enable-priority-and-fairness=false")...)
	if err != nil {
		return err
	}
	kc := kubeconfigFor(filepath.Join(d, "ca.crt"), adminToken)
	s.Kubeconfig = filepath.Join(d, "kubeconfig")
	if err := os.WriteFile(s.Kubeconfig, kc, 0o600); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 200, 400
	if s.Kube, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	return p.Wait(60*time.Second, func() bool {
		res := s.Kube.Discovery().RESTClient().Get().AbsPath("/readyz").Do(context.Background())
		return res.Error() == nil
	})
}

const podSecurityBaseline = `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults: {enforce: baseline, enforce-version: latest}
    exemptions: {usernames: [], runtimeClasses: [], namespaces: []}
`

func kubeconfigFor(caFile, token string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, certificate-authority: %q}
users:
- name: admin
  user: {token: %q}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, APIServerURL, caFile, token))
}

func (s *Stack) clusterObjects() error {
	ctx := context.Background()
	// MinIO reads the issuer's discovery document and keys anonymously, as AWS STS does.
	_, err := s.Kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "oidc-anon"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:unauthenticated"}},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	// The Node objects let bound tokens carry the node claim. A real node's kubelet registers NodeName itself, with
	// its start-up taint.
	nodes := []string{NodeName, NodeName2}
	if s.kind == realNode {
		nodes = nodes[1:]
	}
	for _, n := range nodes {
		if _, err := s.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	insecure := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return poll(30*time.Second, func() bool {
		resp, err := insecure.Get(APIServerURL + "/openid/v1/jwks")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (s *Stack) startMinIO() error {
	certs := filepath.Join(s.Dir, "minio-certs")
	if err := os.MkdirAll(filepath.Join(certs, "CAs"), 0o700); err != nil {
		return err
	}
	ca, err := os.ReadFile(filepath.Join(s.Dir, "ca.crt"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(certs, "CAs", "ca.crt"), ca, 0o600); err != nil {
		return err
	}
	discovery := APIServerURL + "/.well-known/openid-configuration"
	env := []string{
		"MINIO_ROOT_USER=" + MinIOUser, "MINIO_ROOT_PASSWORD=" + MinIOPassword, "MINIO_BROWSER=off",
		"MINIO_IDENTITY_OPENID_CONFIG_URL=" + discovery, "MINIO_IDENTITY_OPENID_CLIENT_ID=" + AudienceA,
		"MINIO_IDENTITY_OPENID_ROLE_POLICY=" + PolicyA,
		"MINIO_IDENTITY_OPENID_CONFIG_URL_B=" + discovery, "MINIO_IDENTITY_OPENID_CLIENT_ID_B=" + AudienceB,
		"MINIO_IDENTITY_OPENID_ROLE_POLICY_B=" + PolicyB,
		"MINIO_IDENTITY_OPENID_CONFIG_URL_C=" + discovery, "MINIO_IDENTITY_OPENID_CLIENT_ID_C=" + AudienceC,
		"MINIO_IDENTITY_OPENID_ROLE_POLICY_C=" + PolicyC,
	}
	audit, err := startAuditReceiver()
	if err != nil {
		return err
	}
	s.audit = audit
	env = append(env, "MINIO_AUDIT_WEBHOOK_ENABLE_iamlet=on", "MINIO_AUDIT_WEBHOOK_ENDPOINT_iamlet="+audit.url)
	p, err := s.Start("minio", env, filepath.Join(BinDir(), "minio"), "server", "--quiet", "--address", ":9000",
		"--console-address", "127.0.0.1:9001", "--certs-dir", certs, filepath.Join(s.Dir, "minio-data"))
	if err != nil {
		return err
	}
	return p.WaitHTTP(STSEndpoint+"/minio/health/ready", 60*time.Second)
}

// MockConfig is the metadata mock's configuration: the node's role credentials, instance profile and
// user-data carry markers that must never reach a pod.
func mockConfig() string {
	ud := base64.StdEncoding.EncodeToString([]byte("#!/bin/sh\n" + NodeUserData + "\n"))
	return fmt.Sprintf(`{
  "metadata": {
    "paths": {"iam-security-credentials": "/latest/meta-data/iam/security-credentials/%[1]s"},
    "values": {
      "iam-security-credentials-role": %[1]q,
      "iam-security-credentials": {"Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z", "Type": "AWS-HMAC",
        "AccessKeyId": %[2]q, "SecretAccessKey": %[3]q, "Token": %[4]q, "Expiration": "2099-01-01T00:00:00Z"},
      "iam-info": {"Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z",
        "InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/%[5]s", "InstanceProfileId": "%[5]s"}
    }
  },
  "userdata": {"values": {"userdata": %[6]q}}
}`, NodeRoleName, NodeAccessKey, NodeSecretKey, NodeSessionToken, NodeProfileMarker, ud)
}

func (s *Stack) startMock() error {
	cfg := filepath.Join(s.Dir, "aemm.json")
	if err := os.WriteFile(cfg, []byte(mockConfig()), 0o600); err != nil {
		return err
	}
	// In the IMDS's own namespace (nodeNetwork); only the network is entered, and the process is the mock itself.
	inIMDS := []string{"--net=/run/netns/" + imdsNetNS(s.Run), "--", filepath.Join(BinDir(), "ec2-metadata-mock"), "-c", cfg}
	p, err := s.Start("ec2-metadata-mock", nil, "nsenter", append(inIMDS, "-n", IMDSv4, "-p", "80")...)
	if err != nil {
		return err
	}
	if err := p.WaitHTTP("http://"+IMDSv4+"/latest/meta-data/instance-id", 30*time.Second); err != nil {
		return err
	}
	// The same node, answering on its IPv6 metadata address (the mock serves one address per process).
	p6, err := s.Start("ec2-metadata-mock-v6", nil, "nsenter", append(inIMDS, "-n", "["+IMDSv6+"]", "-p", "80")...)
	if err != nil {
		return err
	}
	return p6.WaitHTTP("http://["+IMDSv6+"]/latest/meta-data/instance-id", 30*time.Second)
}

// Proc is a process of the stack, its output in a log file under Dir.
type Proc struct {
	Name string
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error

	dir, argv0 string
	env, args  []string
}

// Restart starts the process again, the same way, after it has been stopped or killed.
func (p *Proc) Restart() (*Proc, error) {
	if !p.Exited() {
		return nil, fmt.Errorf("%s is still running", p.Name)
	}
	return StartProc(p.dir, p.Name, p.env, p.argv0, p.args...)
}

// Start starts a process of the stack; it is stopped by Stop.
func (s *Stack) Start(name string, env []string, argv0 string, args ...string) (*Proc, error) {
	p, err := StartProc(s.Dir, name, env, argv0, args...)
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	return p, nil
}

// StartProc starts argv0 with its output in DIR/NAME.log. The process dies with the test binary.
func StartProc(dir, name string, env []string, argv0 string, args ...string) (*Proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv0, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{}), dir: dir, argv0: argv0, env: env, args: args}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// ExitCode is the process's exit code once it has ended (-1 before, or when a signal ended it).
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits (SIGKILL after 10 s).
func (p *Proc) Stop() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Wait polls cond until it holds, the process exits, or timeout passes.
func (p *Proc) Wait(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if p.Exited() {
			return fmt.Errorf("%s exited (%v); log %s:\n%s", p.Name, p.err, p.Log, tail(p.Log, 30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s; log %s:\n%s", p.Name, timeout, p.Log, tail(p.Log, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// WaitHTTP waits for url to answer 200.
func (p *Proc) WaitHTTP(url string, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	return p.Wait(timeout, func() bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	return lastLines(string(b), n)
}

func poll(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met after %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func runAll(cmds [][]string) error {
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return nil
}
