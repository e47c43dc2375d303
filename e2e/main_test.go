// Package e2e holds the end-to-end tests: the iamlet binary on a real apiserver, MinIO as STS and S3,
// the EC2 metadata mock as the node's IMDS, real iptables, and real SDKs running in pod namespaces.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/iamlet/iamlet/e2e/stack"
)

// suite is the stack shared by the tests of this package, and the binaries built for it.
var suite struct {
	*stack.Stack
	agentBin string
	gov2Bin  string
	agent    *stack.Proc       // the shared agent most tests use
	clients  map[string]string // client programs built so far, by name
}

// The fixtures' ServiceAccounts, under short names.
const (
	saA      = stack.SAA
	saB      = stack.SAB
	saNoRole = stack.SANoRole
)

func TestMain(m *testing.M) {
	os.Exit(stack.Main(func(s *stack.Stack) int {
		if err := setup(s); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: setup:", err)
			return 1
		}
		return m.Run()
	}))
}

func setup(s *stack.Stack) error {
	suite.Stack = s
	var err error
	if suite.agentBin, err = stack.BuildAgent(s.Dir); err != nil {
		return err
	}
	suite.gov2Bin, err = stack.BuildProgram(s.Dir, "gov2", "./e2e/clients/gov2")
	return err
}

// sharedAgent starts the suite's agent on first use.
func sharedAgent(t *testing.T) *stack.Proc {
	t.Helper()
	if suite.agent == nil || suite.agent.Exited() {
		suite.EnsureHostRules(t, suite.agentBin)
		argv0, pre := suite.AgentCommand(suite.agentBin)
		p, err := stack.StartProc(suite.Dir, "iamlet-shared", nil, argv0, append(pre, suite.AgentArgs()...)...)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.WaitHTTP("http://"+stack.AgentMetricsAddr+"/readyz", machineDeadline); err != nil {
			t.Fatalf("shared agent not ready: %v", err)
		}
		suite.agent = p
	}
	return suite.agent
}

// clientBin builds the client program e2e/clients/NAME on first use and returns its path.
func clientBin(t *testing.T, name string) string {
	t.Helper()
	if p, ok := suite.clients[name]; ok {
		return p
	}
	p, err := stack.BuildProgram(suite.Dir, name, "./e2e/clients/"+name)
	if err != nil {
		t.Fatal(err)
	}
	if suite.clients == nil {
		suite.clients = map[string]string{}
	}
	suite.clients[name] = p
	return p
}

// dedicatedAgent stops the shared agent and runs one with the stack's flags plus extra for this test
// only (stopped when the test ends; the next sharedAgent call starts the shared one again). Tests in
// this package do not run in parallel: there is one node, so one agent at a time.
func dedicatedAgent(t *testing.T, extra ...string) *stack.Proc {
	t.Helper()
	stopSharedAgent()
	return suite.StartAgent(t, suite.agentBin, extra...)
}

// stopSharedAgent stops the shared agent, if it runs, so a test can run its own.
func stopSharedAgent() {
	if suite.agent != nil {
		suite.agent.Stop()
		suite.agent = nil
	}
}
