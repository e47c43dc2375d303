// Command demo is `make demo`: it brings up the local real stack, starts iamlet, and runs the AWS CLI in
// two pods with two roles, showing that each pod gets its own role's credentials (pod A may read and
// not write the bucket, pod B the opposite) and that the node's secrets never appear. Then it tears down.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/iamlet/iamlet/e2e/stack"
)

func main() {
	os.Exit(stack.Main(run))
}

func run(s *stack.Stack) int {
	t := &stack.Program{}
	return t.Run("demo", func() int { return demo(s, t) })
}

func demo(s *stack.Stack, t *stack.Program) int {
	bin, err := stack.BuildAgent(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	heading("Starting iamlet on the node")
	agent := s.StartAgent(t, bin)
	fmt.Printf("iamlet pid %d, IMDS face on %s:%s, interception installed by the agent\n", agent.Pid(), stack.NodeIP, stack.AgentPort)

	a := s.NewPod(t, "demo-a", stack.PodOptions{ServiceAccount: stack.SAA})
	b := s.NewPod(t, "demo-b", stack.PodOptions{ServiceAccount: stack.SAB})
	ctx := context.Background()
	failures := 0
	expect := func(p *stack.Pod, what string, r stack.Result, allowed bool) {
		verdict := "allowed"
		if r.Err != nil {
			verdict = "denied"
		}
		ok := (r.Err == nil) == allowed
		if !allowed && !strings.Contains(r.Stderr, "AccessDenied") {
			ok = false
		}
		for _, m := range stack.Markers {
			if strings.Contains(r.Output(), m) {
				ok = false
				fmt.Printf("    NODE SECRET LEAKED: %s\n", m)
			}
		}
		mark := "ok"
		if !ok {
			mark, failures = "UNEXPECTED", failures+1
		}
		fmt.Printf("  %-8s %-46s %-8s [%s]\n", p.Name, what, verdict, mark)
		if !ok {
			fmt.Println(indent(r.Output()))
		}
	}
	for _, p := range []*stack.Pod{a, b} {
		heading(fmt.Sprintf("Pod %s (ServiceAccount %s, role %s)", p.Name, p.ServiceAccount, roleOf(p)))
		r := p.Exec(ctx, nil, "/usr/bin/aws", "configure", "list")
		fmt.Println(indent(r.Output()))
		r = p.Exec(ctx, []string{"AWS_DEFAULT_OUTPUT=text"}, "/usr/bin/aws", "configure", "export-credentials", "--format", "env-no-export")
		if r.Err == nil {
			for _, l := range strings.Split(r.Stdout, "\n") {
				if strings.HasPrefix(l, "AWS_ACCESS_KEY_ID=") {
					fmt.Println("  access key id:", strings.TrimPrefix(l, "AWS_ACCESS_KEY_ID="))
				}
			}
		}
	}
	heading("S3 on MinIO with each pod's own credentials")
	expect(a, "s3api get-object (role A may read)", s3(ctx, a, "get-object", "--key", "seed", "/dev/null"), true)
	expect(a, "s3api put-object (role A may not write)", s3(ctx, a, "put-object", "--key", "demo-a", "--body", "/etc/hostname"), false)
	expect(b, "s3api get-object (role B may not read)", s3(ctx, b, "get-object", "--key", "seed", "/dev/null"), false)
	expect(b, "s3api put-object (role B may write)", s3(ctx, b, "put-object", "--key", "demo-b", "--body", "/etc/hostname"), true)

	heading("The node's own secrets, asked for by pod A")
	probe, err := stack.BuildProgram(s.Dir, "probe", "./e2e/clients/probe")
	if err != nil {
		t.Fatal(err)
	}
	r := a.Exec(ctx, nil, probe, "-token", "/latest/meta-data/iam/security-credentials/"+stack.NodeRoleName, "/latest/user-data", "/latest/meta-data/iam/info")
	fmt.Println(indent(r.Output()))
	for _, m := range stack.Markers {
		if strings.Contains(r.Output(), m) {
			fmt.Println("  NODE SECRET LEAKED:", m)
			failures++
		}
	}
	heading("iamlet status")
	st := statusOutput(s, bin)
	fmt.Println(indent(st))
	if failures > 0 {
		fmt.Printf("\ndemo: %d unexpected results\n", failures)
		return 1
	}
	fmt.Println("\ndemo: each pod received only its own role's credentials; the node's credentials never appeared")
	return 0
}

func statusOutput(s *stack.Stack, bin string) string {
	out, err := exec.Command(bin, "status", "--debug-addr", stack.AgentDebugAddr).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("iamlet status: %v\n%s", err, out)
	}
	return string(out)
}

func s3(ctx context.Context, p *stack.Pod, op string, args ...string) stack.Result {
	argv := append([]string{"/usr/bin/aws", "--endpoint-url", stack.MinIOFromPods, "s3api", op, "--bucket", stack.Bucket}, args...)
	return p.Exec(ctx, nil, argv...)
}

func roleOf(p *stack.Pod) string {
	if p.ServiceAccount == stack.SAB {
		return stack.RoleARN(stack.AudienceB)
	}
	return stack.RoleARN(stack.AudienceA)
}

func heading(s string) { fmt.Printf("\n== %s\n", s) }

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
