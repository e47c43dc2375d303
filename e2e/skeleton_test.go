package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/iamlet/iamlet/e2e/stack"
)

// imdsMode selects how a pod's SDK talks to the metadata service.
type imdsMode struct {
	name string
	// forceV1 refuses the IMDSv2 token PUT inside the pod's namespace (a TCP reset on the request), the
	// way a proxy or an old middlebox would; every SDK then falls back to IMDSv1.
	forceV1 bool
}

var modes = []imdsMode{{name: "IMDSv2"}, {name: "IMDSv1", forceV1: true}}

// forceIMDSv1 installs the token-refusing rule in the pod's own namespace and returns a check that the
// SDK really tried the PUT (the rule's counter moved), so the v1 path was exercised, not assumed.
func forceIMDSv1(t *testing.T, p *stack.Pod) func() {
	t.Helper()
	rule := []string{"OUTPUT", "-p", "tcp", "-d", stack.IMDSv4, "-m", "string", "--string", "PUT /latest/api/token",
		"--algo", "bm", "-j", "REJECT", "--reject-with", "tcp-reset"}
	if out, err := exec.Command("ip", append([]string{"netns", "exec", p.NetNS, "iptables", "-A"}, rule...)...).CombinedOutput(); err != nil {
		t.Fatalf("forcing IMDSv1 in %s: %v: %s", p.Name, err, out)
	}
	return func() {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", p.NetNS, "iptables", "-L", "OUTPUT", "-v", "-n", "-x").CombinedOutput()
		if err != nil {
			t.Fatalf("reading counters: %v: %s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "REJECT") {
				if f := strings.Fields(l); len(f) > 0 && f[0] != "0" {
					return
				}
			}
		}
		t.Errorf("pod %s: the SDK never tried the token PUT, so IMDSv1 fallback was not exercised:\n%s", p.Name, out)
	}
}

// TestPodsGetTheirOwnRole is the walking skeleton: unmodified clients in two pods, with no credentials
// of their own, obtain their own role's credentials through 169.254.169.254 and use them on MinIO. Role A
// may read the bucket and not write it; role B the opposite. The node's secrets never appear.
func TestPodsGetTheirOwnRole(t *testing.T) {
	sharedAgent(t)
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			a := suite.NewPod(t, "skel-a-"+strings.ToLower(mode.name), stack.PodOptions{ServiceAccount: saA})
			b := suite.NewPod(t, "skel-b-"+strings.ToLower(mode.name), stack.PodOptions{ServiceAccount: saB})
			waitCached(t, a, b)
			var checks []func()
			if mode.forceV1 {
				checks = append(checks, forceIMDSv1(t, a), forceIMDSv1(t, b))
			}
			ctx := context.Background()
			want := map[*stack.Pod][2]bool{a: {true, false}, b: {false, true}} // get, put allowed
			for p, allowed := range want {
				t.Run("aws-sdk-go-v2/"+p.ServiceAccount, func(t *testing.T) {
					r := p.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
					stack.AssertNoNodeSecrets(t, "gov2", r.Output())
					if r.Err != nil {
						t.Fatalf("gov2 in %s: %v\n%s", p.Name, r.Err, r.Output())
					}
					if !strings.Contains(r.Stdout, "creds EC2RoleProvider ") {
						t.Errorf("gov2 in %s did not get credentials from the instance role provider:\n%s", p.Name, r.Stdout)
					}
					checkAccess(t, p.Name, r.Stdout, "get", allowed[0])
					checkAccess(t, p.Name, r.Stdout, "put", allowed[1])
				})
				t.Run("aws-cli/"+p.ServiceAccount, func(t *testing.T) {
					get := p.Exec(ctx, nil, "/usr/bin/aws", "--endpoint-url", stack.MinIOFromPods, "s3api", "get-object", "--bucket", stack.Bucket, "--key", "seed", "/dev/null")
					put := p.Exec(ctx, nil, "/usr/bin/aws", "--endpoint-url", stack.MinIOFromPods, "s3api", "put-object", "--bucket", stack.Bucket, "--key", "cli", "--body", "/etc/hostname")
					stack.AssertNoNodeSecrets(t, "aws cli", get.Output()+put.Output())
					cliAccess(t, p.Name, "get-object", get, allowed[0])
					cliAccess(t, p.Name, "put-object", put, allowed[1])
				})
			}
			for _, c := range checks {
				c()
			}
		})
	}
}

func checkAccess(t *testing.T, pod, out, op string, allowed bool) {
	t.Helper()
	want := op + " denied AccessDenied"
	if allowed {
		want = op + " ok"
	}
	if !strings.Contains(out, want+"\n") {
		t.Errorf("pod %s: %s: want %q in:\n%s", pod, op, want, out)
	}
}

func cliAccess(t *testing.T, pod, op string, r stack.Result, allowed bool) {
	t.Helper()
	switch {
	case allowed && r.Err != nil:
		t.Errorf("pod %s: aws s3api %s failed, want allowed: %v\n%s", pod, op, r.Err, r.Output())
	case !allowed && r.Err == nil:
		t.Errorf("pod %s: aws s3api %s succeeded, want AccessDenied\n%s", pod, op, r.Output())
	case !allowed && !strings.Contains(r.Stderr, "AccessDenied"):
		t.Errorf("pod %s: aws s3api %s failed for another reason than AccessDenied (did it get credentials?):\n%s", pod, op, r.Output())
	}
}

// TestCallersWithoutARoleGetNothing: a pod whose address the agent does not know, and a pod whose
// ServiceAccount has no role, both get a clear error from the agent and no credentials, from real clients.
func TestCallersWithoutARoleGetNothing(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	cases := []struct {
		name       string
		opts       stack.PodOptions
		wantStatus string
	}{
		{"unknown address", stack.PodOptions{ServiceAccount: saA, NoStatus: true}, "403"},
		{"no role annotation", stack.PodOptions{ServiceAccount: saNoRole}, "404"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := suite.NewPod(t, "norole-"+string(rune('a'+i)), c.opts)
			r := p.Exec(ctx, nil, suite.gov2Bin)
			stack.AssertNoNodeSecrets(t, "gov2", r.Output())
			if r.Err == nil || strings.Contains(r.Stdout, "creds ") {
				t.Errorf("gov2 got credentials, want none:\n%s", r.Output())
			}
			cli := p.Exec(ctx, nil, "/usr/bin/aws", "--endpoint-url", stack.MinIOFromPods, "s3api", "list-objects-v2", "--bucket", stack.Bucket)
			stack.AssertNoNodeSecrets(t, "aws cli", cli.Output())
			if cli.Err == nil || !strings.Contains(cli.Stderr, "Unable to locate credentials") {
				t.Errorf("aws cli: want 'Unable to locate credentials', got err=%v:\n%s", cli.Err, cli.Output())
			}
			for _, token := range []bool{false, true} {
				args := []string{"-addr", stack.IMDSv4 + ":80"}
				if token {
					args = append(args, "-token")
				}
				args = append(args, "/latest/meta-data/iam/security-credentials/")
				pr := p.Exec(ctx, nil, append([]string{clientBin(t, "probe")}, args...)...)
				stack.AssertNoNodeSecrets(t, "probe", pr.Output())
				if !strings.Contains(pr.Stdout, "\n"+c.wantStatus+"\niamlet: ") {
					t.Errorf("role listing (token=%v): want %s with an iamlet reason, got:\n%s", token, c.wantStatus, pr.Output())
				}
			}
		})
	}
}

// TestNodeSecretsNeverReachPods tries the node's credentials, instance profile and user-data under the
// spellings SDKs and attackers use, with and without an IMDSv2 token: the mock's markers never come back.
func TestNodeSecretsNeverReachPods(t *testing.T) {
	sharedAgent(t)
	p := suite.NewPod(t, "leak-probe", stack.PodOptions{ServiceAccount: saA})
	paths := []string{
		"/latest/user-data", "/latest/user-data/", "/latest//user-data", "/latest/meta-data/../user-data",
		"/latest/meta-data/iam/security-credentials/" + stack.NodeRoleName,
		"/latest/meta-data/iam/security-credentials/" + strings.ToUpper(stack.NodeRoleName),
		"/latest/meta-data/iam/security-credentials//" + stack.NodeRoleName,
		"/latest/meta-data/iam/security-credentials/%6eode-role",
		"/latest/meta-data/iam/info", "/latest/meta-data/iam/info/", "/latest/meta-data/./iam/info",
		"/latest/%75ser-data", "/LATEST/USER-DATA", "/2009-04-04/user-data", "/latest/user-data?x=1",
		"PUT /latest/user-data", "POST /latest/meta-data/iam/security-credentials/" + stack.NodeRoleName, "HEAD /latest/user-data",
	}
	for _, token := range []bool{false, true} {
		args := []string{"-addr", stack.IMDSv4 + ":80"}
		if token {
			args = append(args, "-token")
		}
		r := p.Exec(context.Background(), nil, append(append([]string{clientBin(t, "probe")}, args...), paths...)...)
		stack.AssertNoNodeSecrets(t, "probe", r.Output())
		if got := strings.Count(r.Stdout, "=== "); got != len(paths) {
			t.Fatalf("probe answered %d of %d requests (token=%v):\n%s", got, len(paths), token, r.Output())
		}
		for _, block := range strings.Split(r.Stdout, "=== ")[1:] {
			if lines := strings.SplitN(block, "\n", 3); len(lines) > 1 && lines[1] == "200" {
				t.Errorf("token=%v: %s answered 200:\n%s", token, lines[0], block)
			}
		}
	}
}
