package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
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
		{[]string{"uninstall", "-h"}, 0, "", "-iptables-backend"},
		{[]string{"run", "--metadata-addr=10.0.0.1", "--metadata-port=0"}, 1, "", "--metadata-port 0"},
	} {
		var out, errOut bytes.Buffer
		code := cli(context.Background(), c.args, &out, &errOut)
		if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errOut.String(), c.errOut) {
			t.Errorf("iamlet %q: exit %d, stdout %q, stderr %q; want exit %d, %q in stdout, %q in stderr",
				c.args, code, out.String(), errOut.String(), c.code, c.out, c.errOut)
		}
	}
}
