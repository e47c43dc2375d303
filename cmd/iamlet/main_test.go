package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iamlet/iamlet/agent"
)

// TestParseAddrs: --metadata-addr takes what the downward API's status.hostIPs gives (bare addresses, IPv6
// unbracketed, one or both families) with --metadata-port, or explicit address:port pairs.
func TestParseAddrs(t *testing.T) {
	for _, c := range []struct {
		in   string
		port uint16
		want []string
		err  bool
	}{
		{"10.0.0.5", 8181, []string{"10.0.0.5:8181"}, false},
		{"2600:1f18::5", 8181, []string{"[2600:1f18::5]:8181"}, false},
		{"10.0.0.5,2600:1f18::5", 8181, []string{"10.0.0.5:8181", "[2600:1f18::5]:8181"}, false},
		{"10.0.0.5:9000,[2600:1f18::5]:9000", 8181, []string{"10.0.0.5:9000", "[2600:1f18::5]:9000"}, false},
		{"[2600:1f18::5]", 8181, []string{"[2600:1f18::5]:8181"}, false},
		{"10.0.0.5", 0, nil, true},             // the container face needs a port
		{"10.0.0.5,10.0.0.6", 8181, nil, true}, // one listener per family
		{"node-1", 8181, nil, true},
	} {
		got, err := parseAddrs(c.in, c.port)
		if (err != nil) != c.err {
			t.Errorf("parseAddrs(%q, %d) error = %v, want error %v", c.in, c.port, err, c.err)
			continue
		}
		var s []string
		for _, a := range got {
			s = append(s, a.String())
		}
		if !slices.Equal(s, c.want) {
			t.Errorf("parseAddrs(%q, %d) = %v, want %v", c.in, c.port, s, c.want)
		}
	}
}

// TestCLI: help lists every command, version says what was built, and a command line that cannot be used exits 2
// with the reason, apart from failures (1).
func TestCLI(t *testing.T) {
	for _, c := range []struct {
		args        []string
		code        int
		out, errOut string
	}{
		{[]string{"--help"}, 0, "iamlet host-rules [flags]", ""},
		{[]string{"help"}, 0, "iamlet version", ""},
		{[]string{"version"}, 0, "iamlet dev (commit ", ""},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"run", "--no-such-flag"}, 2, "", "flag provided but not defined: -no-such-flag"},
		{[]string{"status", "extra"}, 2, "", "unexpected arguments"},
		{[]string{"status", "-o", "xml"}, 2, "", `-o "xml": want table, wide, json or yaml`},
		{[]string{"uninstall", "-h"}, 0, "", "-iptables-backend"},
		{[]string{"run", "--metadata-addr=10.0.0.1", "--metadata-port=0"}, 2, "", "--metadata-port 0"},
		{[]string{"run", "--metadata-addr=10.0.0.1", "--pod-uid=u", "--token-minting=maybe"}, 2, "", "--token-minting"},
		{[]string{"run", "--metadata-addr=10.0.0.1"}, 2, "", "--pod-uid"},
	} {
		var out, errOut bytes.Buffer
		code := cli(context.Background(), c.args, &out, &errOut)
		if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errOut.String(), c.errOut) {
			t.Errorf("iamlet %q: exit %d, stdout %q, stderr %q; want exit %d, %q in stdout, %q in stderr",
				c.args, code, out.String(), errOut.String(), c.code, c.out, c.errOut)
		}
	}
}

// TestFromEnv: every flag can come from IAMLET_<NAME>; the command line wins; a bad value names the variable.
func TestFromEnv(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	port := fs.Uint("metadata-port", 8181, "")
	dry := fs.Bool("dry-run", false, "")
	env := map[string]string{"IAMLET_METADATA_PORT": "9000", "IAMLET_DRY_RUN": "true"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := fromEnv(fs, lookup); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"--metadata-port=9100"}); err != nil {
		t.Fatal(err)
	}
	if *port != 9100 || !*dry {
		t.Errorf("metadata-port %d (want the command line's 9100), dry-run %v (want true from the env)", *port, *dry)
	}
	env["IAMLET_DRY_RUN"] = "maybe"
	if err := fromEnv(fs, lookup); err == nil || !strings.Contains(err.Error(), "IAMLET_DRY_RUN") {
		t.Errorf("a bad value: %v, want an error naming IAMLET_DRY_RUN", err)
	}
}

// TestPrintStatusWide: -o wide adds each pod's addresses and when its credentials were last refreshed.
func TestPrintStatusWide(t *testing.T) {
	now := time.Date(2026, 11, 30, 7, 0, 0, 0, time.UTC)
	issued, exp := now.Add(-90*time.Second), now.Add(time.Hour)
	st := agent.Status{Ready: true, Reason: "ok", Interception: "in place", Minting: "node-confined minting", HostNetwork: "covered",
		Pods: []agent.PodStatus{{Namespace: "default", Pod: "web", ServiceAccount: "app", IPs: []string{"10.0.0.5", "fd00::5"},
			RoleARN: "arn:aws:iam::123456789012:role/web", State: "valid", Expiration: &exp, LastRefresh: &issued}}}
	var table, wide bytes.Buffer
	if err := printStatus(&table, st, false, now); err != nil {
		t.Fatal(err)
	}
	if err := printStatus(&wide, st, true, now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(table.String(), "10.0.0.5") {
		t.Errorf("the table shows addresses:\n%s", table.String())
	}
	for _, want := range []string{"IPS", "LAST REFRESH", "10.0.0.5,fd00::5", "1m30s ago", "hostNetwork pods: covered"} {
		if !strings.Contains(wide.String(), want) {
			t.Errorf("-o wide lacks %q:\n%s", want, wide.String())
		}
	}
}

// TestUninstallWaitsForHostRules: uninstall removes nothing while a host-rules container still holds its socket (it
// is terminating with the agent's pod): it would write its table, and that table's guard for pods, back.
func TestUninstallWaitsForHostRules(t *testing.T) {
	alive := "@iamlet-test-" + rand.Text()
	ln, err := net.Listen("unix", alive)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitAgentGone(t.Context(), nil, alive, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "host-rules") {
		t.Errorf("waitAgentGone() with host-rules running = %v, want it to wait, then say host-rules still runs", err)
	}
	ln.Close()
	if err := waitAgentGone(t.Context(), nil, alive, time.Minute); err != nil {
		t.Errorf("waitAgentGone() once host-rules is gone = %v, want nil", err)
	}
}
