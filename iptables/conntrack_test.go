package iptables

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeConntrack puts a conntrack on PATH that answers its runs in turn from script (a shell snippet per run, the last
// repeated), each after printing a long listing of "deleted" entries on stdout as the real one does; it returns how
// many times it ran.
func fakeConntrack(t *testing.T, runs ...string) func() int {
	t.Helper()
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	var cases strings.Builder
	for i, r := range runs {
		pattern := strconv.Itoa(i + 1)
		if i == len(runs)-1 {
			pattern = "*"
		}
		fmt.Fprintf(&cases, "%s) %s ;;\n", pattern, r)
	}
	script := fmt.Sprintf(`#!/bin/sh
n=$(( $(cat %[1]q 2>/dev/null || echo 0) + 1 )); echo $n > %[1]q
i=0; while [ $i -lt 20000 ]; do echo "tcp 6 0 CLOSE src=10.0.0.$((i %% 250)) dst=169.254.169.254 sport=40000 dport=80"; i=$((i+1)); done
case $n in
%[2]s
esac
`, count, cases.String())
	if err := os.WriteFile(filepath.Join(dir, "conntrack"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return func() int {
		b, _ := os.ReadFile(count)
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
}

const (
	vanished = `echo "conntrack v1.4.7 (conntrack-tools): Operation failed: such conntrack doesn't exist" >&2; exit 1`
	deleted  = `echo "conntrack v1.4.7 (conntrack-tools): 12 flow entries have been deleted." >&2; exit 0`
	none     = `echo "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted." >&2; exit 1`
)

// TestFlushConntrackRunsAgainWhenEntriesVanish: conntrack -D stops at the first entry that expired between its listing
// and its deletion, leaving the rest (seen on a loaded CI run: the agent's start-up cut stopped part-way). The flush
// runs it again until a run completes.
func TestFlushConntrackRunsAgainWhenEntriesVanish(t *testing.T) {
	runs := fakeConntrack(t, vanished, vanished, deleted)
	if err := FlushConntrack(t.Context(), netip.MustParseAddr("169.254.169.254")); err != nil {
		t.Errorf("FlushConntrack() = %v, want nil once a run completes", err)
	}
	if n := runs(); n != 3 {
		t.Errorf("conntrack ran %d times, want 3", n)
	}
}

func TestFlushConntrackNothingToDelete(t *testing.T) {
	runs := fakeConntrack(t, none)
	if err := FlushUnredirected(t.Context(), netip.MustParseAddr("fd00:ec2::254")); err != nil {
		t.Errorf("FlushUnredirected() with nothing to delete = %v, want nil", err)
	}
	if n := runs(); n != 1 {
		t.Errorf("conntrack ran %d times, want 1", n)
	}
}

// TestFlushConntrackErrorsStayShort: what conntrack deleted (its stdout, megabytes on a busy node, naming other pods'
// flows) never reaches the error, which is logged; its message does, bounded.
func TestFlushConntrackErrorsStayShort(t *testing.T) {
	for name, tc := range map[string]struct {
		run  string
		want string
		runs int
	}{
		"keeps vanishing": {vanished, "such conntrack doesn't exist", flushAttempts},
		"other failure":   {`echo "conntrack v1.4.7 (conntrack-tools): Operation failed: ` + strings.Repeat("x", 4096) + `" >&2; exit 1`, "Operation failed: xxx", 1},
	} {
		t.Run(name, func(t *testing.T) {
			runs := fakeConntrack(t, tc.run)
			err := FlushConntrack(t.Context(), netip.MustParseAddr("169.254.169.254"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("FlushConntrack() = %v, want an error saying %q", err, tc.want)
			}
			if len(err.Error()) > 1024 || strings.Contains(err.Error(), "CLOSE src=") {
				t.Errorf("FlushConntrack() error is %d bytes or quotes the deleted entries:\n%.300s", len(err.Error()), err)
			}
			if n := runs(); n != tc.runs {
				t.Errorf("conntrack ran %d times, want %d", n, tc.runs)
			}
		})
	}
}
