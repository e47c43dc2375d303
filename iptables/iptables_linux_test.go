package iptables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The real-iptables test runs in three roles of the same test binary, told apart by environment variables:
//   - outside: checks prerequisites, creates a "host" and a "pod" network namespace joined by a veth pair, and re-runs
//     itself inside the host namespace. Nothing here touches the machine's own iptables.
//   - inside the host namespace: drives Rules against the real binaries of both backends and checks the result with
//     iptables-save and with real connections from the pod namespace.
//   - inside the pod namespace: dials one address and prints what answered.
const (
	hostNetnsEnv  = "IAMLET_TEST_HOST_NETNS"
	podNetnsEnv   = "IAMLET_TEST_POD_NETNS"
	outerNetnsEnv = "IAMLET_TEST_OUTER_NETNS"
	dialEnv       = "IAMLET_TEST_DIAL"
	dialMarker    = "dial-result: "
)

// Addresses inside the test namespaces: the host end of the veth carries the listeners iamlet would run, and lo
// carries the metadata addresses themselves, standing in for the node's real IMDS that must never answer a pod.
var (
	hostV4   = netip.MustParseAddr("10.99.0.1")
	hostV6   = netip.MustParseAddr("fd00:99::1")
	realIMDS = []string{"169.254.169.254:80", "[fd00:ec2::254]:80"}
)

func TestRealIptables(t *testing.T) {
	switch {
	case os.Getenv(dialEnv) != "":
		dialAndReport(os.Getenv(dialEnv))
	case os.Getenv(hostNetnsEnv) != "":
		testInHostNetns(t, os.Getenv(hostNetnsEnv), os.Getenv(podNetnsEnv))
	default:
		testFromOutside(t)
	}
}

func testFromOutside(t *testing.T) {
	// Root and network namespaces are prerequisites of this package's tests, not optional extras: fail, never skip.
	if os.Geteuid() != 0 {
		t.Fatalf("TestRealIptables must run as root (it creates network namespaces); euid = %d", os.Geteuid())
	}
	for _, bin := range []string{
		"ip", "conntrack", "nft",
		"iptables-nft", "ip6tables-nft", "iptables-nft-save", "ip6tables-nft-save",
		"iptables-legacy", "ip6tables-legacy", "iptables-legacy-save", "ip6tables-legacy-save",
	} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("TestRealIptables needs %s (iptables 1.8 with both backends, iproute2, conntrack-tools, nftables): %v", bin, err)
		}
	}
	host := addNetns(t, fmt.Sprintf("iamlet-ipt-%d", os.Getpid()))
	pod := addNetns(t, fmt.Sprintf("iamlet-pod-%d", os.Getpid()))
	for _, args := range [][]string{
		{"-n", host, "link", "add", "ipth0", "type", "veth", "peer", "name", "iptp0", "netns", pod},
		{"-n", host, "link", "set", "lo", "up"},
		{"-n", host, "link", "set", "ipth0", "up"},
		{"-n", host, "addr", "add", hostV4.String() + "/24", "dev", "ipth0"},
		{"-n", host, "addr", "add", hostV6.String() + "/64", "dev", "ipth0", "nodad"},
		{"-n", host, "addr", "add", "169.254.169.254/32", "dev", "lo"},
		{"-n", host, "addr", "add", "fd00:ec2::254/128", "dev", "lo"},
		{"-n", pod, "link", "set", "lo", "up"},
		{"-n", pod, "link", "set", "iptp0", "up"},
		{"-n", pod, "addr", "add", "10.99.0.2/24", "dev", "iptp0"},
		{"-n", pod, "addr", "add", "fd00:99::2/64", "dev", "iptp0", "nodad"},
		{"-n", pod, "route", "add", "default", "via", hostV4.String()},
		{"-n", pod, "-6", "route", "add", "default", "via", hostV6.String()},
	} {
		runCmd(t, "ip", args...)
	}

	runInNetns(t, host, "TestRealIptables", []string{hostNetnsEnv + "=" + host, podNetnsEnv + "=" + pod}, nil)
}

// runInNetns runs the test named test again, in a child process inside network namespace ns, with env added and
// files passed from fd 3 on, and fails if it fails. The child learns this namespace through outerNetnsEnv.
func runInNetns(t *testing.T, ns, test string, env []string, files []*os.File) {
	t.Helper()
	outer, err := netnsID("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("identify this network namespace: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("os.Executable() = %v", err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), env...), outerNetnsEnv+"="+outer)
	cmd.ExtraFiles = files
	out, err := cmd.CombinedOutput()
	t.Logf("inside network namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("test inside network namespace %s: %v", ns, err)
	}
}

// addNetns creates a network namespace that is deleted, with every rule and device in it, when the test ends.
func addNetns(t *testing.T, name string) string {
	t.Helper()
	runCmd(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
	return name
}

// requireNetns stops the test unless this process really is in the named namespace and not in the one the outer test
// ran in, so a stray environment variable can never point iptables at the machine's own rules.
func requireNetns(t *testing.T, name string) {
	t.Helper()
	self, err1 := netnsID("/proc/self/ns/net")
	want, err2 := netnsID("/run/netns/" + name)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("cannot tell which network namespace this is: %v", err)
	}
	if self != want || self == os.Getenv(outerNetnsEnv) {
		t.Fatalf("refusing to touch iptables: not inside network namespace %s", name)
	}
}

// netnsID names a namespace by the device and inode of its nsfs file.
func netnsID(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("stat %s: no inode", path)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

func testInHostNetns(t *testing.T, host, pod string) {
	requireNetns(t, host)
	for _, addr := range realIMDS {
		serveBanner(t, addr, "node-imds")
	}
	listen := map[string]netip.AddrPort{
		"v4": netip.AddrPortFrom(hostV4, 8181), "v6": netip.AddrPortFrom(hostV6, 8181),
		"c4": netip.AddrPortFrom(hostV4, 8182), "c6": netip.AddrPortFrom(hostV6, 8182),
	}
	for _, ap := range listen {
		serveBanner(t, ap.String(), "iamlet")
	}
	cfg := Config{
		MetadataV4: listen["v4"], MetadataV6: listen["v6"], ContainerV4: listen["c4"], ContainerV6: listen["c6"],
		LockWait: 5 * time.Second,
	}
	log := slog.New(slog.NewTextHandler(t.Output(), nil))

	for _, backend := range []string{BackendNFT, BackendLegacy} {
		t.Run(backend, func(t *testing.T) {
			cfg := cfg
			cfg.Backend = backend
			expectDial(t, pod, "before Ensure", "node-imds") // the harness can see a leak

			r := newReal(t, cfg, log)
			if r.Backend() != backend {
				t.Errorf("Backend() = %q, want %q", r.Backend(), backend)
			}
			if got := mustEnsure(t, r); len(got) != 16 {
				t.Errorf("first Ensure() repaired = %q, want 16 repairs (per family 5 iptables, 3 routing rules)", got)
			}
			if got := mustEnsure(t, r); got != nil {
				t.Errorf("second Ensure() repaired = %q, want nothing", got)
			}
			if got := mustCheck(t, r); got != nil {
				t.Errorf("Check() = %q, want nothing missing", got)
			}
			t.Run("a pass over rules in place only reads", func(t *testing.T) {
				ran := countProcesses(t)
				// A second Rules, as a restarted agent opens: its handles run the binaries through the shims.
				started, err := New(cfg, log)
				if err != nil {
					t.Fatalf("New() = %v", err)
				}
				// go-iptables asks each binary its version when it opens a handle.
				diffLines(t, "processes of New", slices.Sorted(slices.Values(ran())),
					[]string{"ip6tables-" + backend + " --version", "iptables-" + backend + " --version"})
				// Legacy saves each family's tables; nft lists each chain a pass looks at, and no other.
				var reads []string
				for _, fam := range []string{"iptables", "ip6tables"} {
					if backend == BackendLegacy {
						reads = append(reads, fam+"-legacy-save")
						continue
					}
					for _, c := range []string{"filter IAMLET-GUARD", "filter INPUT", "filter FORWARD", "nat IAMLET-IMDS", "nat PREROUTING"} {
						table, chain, _ := strings.Cut(c, " ")
						reads = append(reads, fam+"-nft -t "+table+" -S "+chain)
					}
				}
				if got := mustEnsure(t, started); got != nil {
					t.Errorf("Ensure() repaired = %q, want nothing", got)
				}
				// The families are read at once, so only the set of processes is fixed, not their order.
				slices.Sort(reads)
				diffLines(t, "processes of Ensure", slices.Sorted(slices.Values(ran())), reads)
				if got := mustCheck(t, started); got != nil {
					t.Errorf("Check() = %q, want nothing missing", got)
				}
				diffLines(t, "processes of Check", slices.Sorted(slices.Values(ran())), reads)
			})
			diffLines(t, "iptables-save", savedRules(t, backend, false), wantSaved(false, listen["v4"], listen["c4"]))
			diffLines(t, "ip6tables-save", savedRules(t, backend, true), wantSaved(true, listen["v6"], listen["c6"]))
			expectDial(t, pod, "after Ensure", "iamlet")
			diffLines(t, "ip rule", guardRules(t, false), wantGuardRules("169.254.169.254"))
			diffLines(t, "ip -6 rule", guardRules(t, true), wantGuardRules("fd00:ec2::254"))
			// Adding a rule the kernel already holds is no error, and adds nothing.
			if err := newRouteTable(false).Add(routeGuardRules(IMDSv4)[2]); err != nil {
				t.Errorf("adding the routing guard's refusal again: %v", err)
			}
			diffLines(t, "ip rule after adding again", guardRules(t, false), wantGuardRules("169.254.169.254"))

			// Another program deletes the routing guard's refusal: put back, alone.
			runCmd(t, "ip", "rule", "del", "pref", "6")
			gone := []string{"ipv4 routing rule pref 6 to 169.254.169.254/32 prohibit: missing"}
			diffLines(t, "Check() after ip rule del", mustCheck(t, r), gone)
			diffLines(t, "Ensure() repaired after ip rule del", mustEnsure(t, r), gone)
			diffLines(t, "ip rule after repair", guardRules(t, false), wantGuardRules("169.254.169.254"))
			// The goto's target deleted: the kernel keeps the goto but skips it, so the node's own traffic would meet
			// the refusal. Both are put back in force: the target, then the goto again.
			runCmd(t, "ip", "rule", "del", "pref", "7")
			unresolved := []string{
				"ipv4 routing rule pref 7 to 169.254.169.254/32 nop: missing",
				"ipv4 routing rule pref 5 to 169.254.169.254/32 iif lo goto 7: missing",
			}
			diffLines(t, "Check() after the goto's target went", mustCheck(t, r), unresolved)
			diffLines(t, "Ensure() repaired after the goto's target went", mustEnsure(t, r), unresolved)
			diffLines(t, "ip rule after that repair", guardRules(t, false), wantGuardRules("169.254.169.254"))

			// Another program flushes the nat table: pods are refused, never served by the node, until Ensure.
			runCmd(t, "iptables-"+backend, "-t", "nat", "-F")
			runCmd(t, "ip6tables-"+backend, "-t", "nat", "-F")
			flushed := []string{
				"ipv4 nat/IAMLET-IMDS: 0 rules, want 2", "ipv4 nat/PREROUTING: jump to IAMLET-IMDS missing",
				"ipv6 nat/IAMLET-IMDS: 0 rules, want 2", "ipv6 nat/PREROUTING: jump to IAMLET-IMDS missing",
			}
			diffLines(t, "Check() after nat flush", mustCheck(t, r), flushed)
			expectDial(t, pod, "after nat flush", "refused")
			diffLines(t, "Ensure() repaired after nat flush", mustEnsure(t, r), flushed)
			expectDial(t, pod, "after repair", "iamlet")

			// Another program puts its rule first.
			runCmd(t, "iptables-"+backend, "-t", "nat", "-I", "PREROUTING", "1", "-p", "udp", "-j", "RETURN")
			reordered := []string{"ipv4 nat/PREROUTING: jump to IAMLET-IMDS at position 2, want 1"}
			diffLines(t, "Check() after reorder", mustCheck(t, r), reordered)
			diffLines(t, "Ensure() repaired after reorder", mustEnsure(t, r), reordered)
			nat := savedRules(t, backend, false)
			if i := slices.Index(nat, "-A PREROUTING -p udp -j RETURN"); i < 0 || !strings.Contains(nat[i-1], "-j IAMLET-IMDS") {
				t.Errorf("after reorder repair, PREROUTING = %q, want our jump then the foreign rule", nat)
			}
			runCmd(t, "iptables-"+backend, "-t", "nat", "-D", "PREROUTING", "-p", "udp", "-j", "RETURN")

			// A new run with another listener port takes the chains over instead of adding beside them.
			moved := cfg
			moved.MetadataV4, moved.MetadataV6 = netip.AddrPortFrom(hostV4, 8183), netip.AddrPortFrom(hostV6, 8183)
			r2 := newReal(t, moved, log)
			diffLines(t, "Ensure() repaired on takeover", mustEnsure(t, r2), []string{
				`ipv4 nat/IAMLET-IMDS: rule "iamlet: imds dnat all" differs`,
				`ipv6 nat/IAMLET-IMDS: rule "iamlet: imds dnat all" differs`,
			})
			diffLines(t, "iptables-save after takeover", savedRules(t, backend, false), wantSaved(false, moved.MetadataV4, listen["c4"]))
			diffLines(t, "ip6tables-save after takeover", savedRules(t, backend, true), wantSaved(true, moved.MetadataV6, listen["c6"]))
			mustEnsure(t, r)

			if backend == BackendNFT {
				// The nft tool puts a rule iptables cannot express where a pass looks: a pass is an error, as
				// when it read with a save, until the rule goes.
				runCmd(t, "nft", "add", "rule", "ip", "nat", "PREROUTING", "meta", "l4proto", "tcp", "log", "prefix", "x")
				want := "inspect ipv4 chain nat/IAMLET-IMDS: table nat holds rules iptables cannot express"
				if _, err := r.Check(t.Context()); err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Check() with an nft-only rule in nat/PREROUTING = %v, want %q", err, want)
				}
				runCmd(t, "nft", "flush", "chain", "ip", "nat", "PREROUTING")
				diffLines(t, "Ensure() repaired after nft flush", mustEnsure(t, r),
					[]string{"ipv4 nat/PREROUTING: jump to IAMLET-IMDS missing"})
			}

			for range 2 {
				if err := r.Remove(t.Context()); err != nil {
					t.Fatalf("Remove() = %v", err)
				}
				for _, v6 := range []bool{false, true} {
					if out := save(t, backend, v6); strings.Contains(strings.ToLower(out), "iamlet") {
						t.Errorf("after Remove, %s-save still mentions iamlet:\n%s", backend, out)
					}
					if left := guardRules(t, v6); len(left) > 0 {
						t.Errorf("after Remove, the routing guard's rules remain: %q", left)
					}
				}
			}
			expectDial(t, pod, "after Remove", "node-imds")
		})
	}

	t.Run("DetectBackend", func(t *testing.T) {
		for _, backend := range []string{BackendLegacy, BackendNFT} {
			cfg := cfg
			cfg.Backend = backend
			r := newReal(t, cfg, log)
			mustEnsure(t, r)
			if got, err := DetectBackend(t.Context()); got != backend || err != nil {
				t.Errorf("DetectBackend() with rules in %s = %q, %v, want %q", backend, got, err, backend)
			}
			if err := r.Remove(t.Context()); err != nil {
				t.Fatalf("Remove() = %v", err)
			}
		}
		if got, err := DetectBackend(t.Context()); got != BackendNFT || err != nil {
			t.Errorf("DetectBackend() with no rules = %q, %v, want %q", got, err, BackendNFT)
		}
	})

	t.Run("FlushConntrack", func(t *testing.T) {
		imds4, imds6 := netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("fd00:ec2::254")
		for _, dst := range []netip.Addr{imds4, imds6} {
			if err := FlushConntrack(t.Context(), dst); err != nil {
				t.Errorf("FlushConntrack(%s) with nothing to delete = %v, want nil", dst, err)
			}
		}
		cfg := cfg
		cfg.Backend = BackendNFT
		r := newReal(t, cfg, log)
		mustEnsure(t, r)
		expectDial(t, pod, "for a conntrack entry", "iamlet")
		for _, dst := range []netip.Addr{imds4, imds6} {
			if n := conntrackEntries(t, dst); n == 0 {
				t.Fatalf("no conntrack entry to %s after a connection", dst)
			}
			// A redirected flow is answered by the agent: FlushUnredirected leaves it alone.
			if err := FlushUnredirected(t.Context(), dst); err != nil {
				t.Fatalf("FlushUnredirected(%s) = %v", dst, err)
			}
			if n := conntrackEntries(t, dst); n == 0 {
				t.Errorf("FlushUnredirected(%s) deleted a redirected flow's entry", dst)
			}
			if err := FlushConntrack(t.Context(), dst); err != nil {
				t.Fatalf("FlushConntrack(%s) = %v", dst, err)
			}
			if n := conntrackEntries(t, dst); n != 0 {
				t.Errorf("after FlushConntrack(%s), %d entries left, want 0", dst, n)
			}
		}
		// Without the rules a flow reaches the node's own service: that is the flow FlushUnredirected is for. The
		// kernel tracks it only while some rule uses conntrack, as kube-proxy's do on a node.
		if err := r.Remove(t.Context()); err != nil {
			t.Fatalf("Remove() = %v", err)
		}
		for _, ipt := range []string{"iptables-nft", "ip6tables-nft"} {
			rule := []string{"INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT"}
			runCmd(t, ipt, append([]string{"-A"}, rule...)...)
			t.Cleanup(func() { runCmd(t, ipt, append([]string{"-D"}, rule...)...) })
		}
		expectDial(t, pod, "without rules", "node-imds")
		for _, dst := range []netip.Addr{imds4, imds6} {
			if n := conntrackEntries(t, dst); n == 0 {
				t.Fatalf("no conntrack entry to %s after an un-redirected connection", dst)
			}
			if err := FlushUnredirected(t.Context(), dst); err != nil {
				t.Fatalf("FlushUnredirected(%s) = %v", dst, err)
			}
			if n := conntrackEntries(t, dst); n != 0 {
				t.Errorf("after FlushUnredirected(%s), %d un-redirected entries left, want 0", dst, n)
			}
		}
	})
}

// newReal opens Rules on the real binaries and removes them when the test ends, pass or fail, so one failed
// subtest leaves nothing behind to confuse the next.
func newReal(t *testing.T, cfg Config, log *slog.Logger) *Rules {
	t.Helper()
	r, err := New(cfg, log)
	if err != nil {
		t.Fatalf("New(%+v) = %v", cfg, err)
	}
	t.Cleanup(func() {
		// t.Context is already cancelled when cleanups run.
		if err := r.Remove(context.Background()); err != nil {
			t.Errorf("Remove() in cleanup = %v", err)
		}
	})
	return r
}

// countProcesses puts shims for both backends' iptables binaries first on PATH for the rest of the test. Each notes
// its command line and then runs the real binary. The returned function hands over the lines noted since its last
// call. Only handles opened afterwards use the shims: go-iptables looks its binary up when it opens one.
func countProcesses(t *testing.T) func() []string {
	t.Helper()
	dir := t.TempDir()
	notes := filepath.Join(dir, "ran")
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, backend := range []string{BackendNFT, BackendLegacy} {
			for _, bin := range []string{fam + "-" + backend, fam + "-" + backend + "-save"} {
				real, err := exec.LookPath(bin)
				if err != nil {
					t.Fatal(err)
				}
				shim := fmt.Sprintf("#!/bin/sh\necho %s \"$@\" >>%s\nexec %s \"$@\"\n", bin, notes, real)
				if err := os.WriteFile(filepath.Join(dir, bin), []byte(shim), 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return func() []string {
		t.Helper()
		out, err := os.ReadFile(notes)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if err := os.Remove(notes); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return slices.Collect(func(yield func(string) bool) {
			for line := range strings.Lines(string(out)) {
				if !yield(strings.TrimSpace(line)) {
					return
				}
			}
		})
	}
}

// wantSaved is what iptables-save must show for a config with one interface pattern and the container face, in the
// form iptables normalises rules to.
func wantSaved(v6 bool, metadata, container netip.AddrPort) []string {
	imds, cont, icmp := "169.254.169.254/32", "169.254.170.23/32", "icmp-port-unreachable"
	if v6 {
		imds, cont, icmp = "fd00:ec2::254/128", "fd00:ec2::23/128", "icmp6-port-unreachable"
	}
	guard := func(dst, name string) []string {
		return []string{
			fmt.Sprintf(`-A IAMLET-GUARD -d %s ! -i lo -p tcp -m comment --comment "iamlet: %s reject-tcp all" -j REJECT --reject-with tcp-reset`, dst, name),
			fmt.Sprintf(`-A IAMLET-GUARD -d %s ! -i lo -m comment --comment "iamlet: %s reject all" -j REJECT --reject-with %s`, dst, name, icmp),
		}
	}
	dnat := func(dst, name string, to netip.AddrPort) string {
		return fmt.Sprintf(`-A IAMLET-IMDS -d %s -p tcp -m tcp --dport 80 -m comment --comment "iamlet: %s dnat all" -j DNAT --to-destination %s`, dst, name, to)
	}
	return slices.Concat(
		[]string{
			`-A INPUT -m comment --comment "iamlet: jump to IAMLET-GUARD" -j IAMLET-GUARD`,
			`-A FORWARD -m comment --comment "iamlet: jump to IAMLET-GUARD" -j IAMLET-GUARD`,
		},
		guard(imds, "imds"), guard(cont, "container"),
		[]string{
			`-A PREROUTING -m comment --comment "iamlet: jump to IAMLET-IMDS" -j IAMLET-IMDS`,
			dnat(imds, "imds", metadata), dnat(cont, "container", container),
		},
	)
}

// save returns iptables-save output for the family, filter table then nat, in that order whichever backend it is
// (legacy lists tables in the order the kernel created them).
func save(t *testing.T, backend string, v6 bool) string {
	t.Helper()
	bin := "iptables-" + backend + "-save"
	if v6 {
		bin = "ip6tables-" + backend + "-save"
	}
	return runCmd(t, bin, "-t", "filter") + runCmd(t, bin, "-t", "nat")
}

// savedRules returns the -A lines of iptables-save for the family.
func savedRules(t *testing.T, backend string, v6 bool) []string {
	t.Helper()
	var out []string
	for line := range strings.Lines(save(t, backend, v6)) {
		if strings.HasPrefix(line, "-A ") {
			out = append(out, strings.TrimSuffix(line, "\n"))
		}
	}
	return out
}

func conntrackEntries(t *testing.T, dst netip.Addr) int {
	t.Helper()
	args := []string{"-L", "-d", dst.String()}
	if dst.Is6() {
		args = append(args, "-f", "ipv6")
	}
	out, err := exec.Command("conntrack", args...).Output() // entries on stdout, the summary on stderr
	if err != nil {
		t.Fatalf("conntrack %s: %v", strings.Join(args, " "), err)
	}
	return strings.Count(string(out), "\n")
}

// expectDial connects from the pod namespace to the metadata address of each family, as a pod's SDK would, and
// checks who answered: "iamlet", "node-imds" or "refused".
func expectDial(t *testing.T, pod, when, want string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("os.Executable() = %v", err)
	}
	cmd := exec.Command("ip", "netns", "exec", pod, exe, "-test.run=^TestRealIptables$", "-test.count=1")
	cmd.Env = append(os.Environ(), dialEnv+"="+strings.Join(realIMDS, ","))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dial from %s: %v\n%s", pod, err, out)
	}
	got := map[string]string{}
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), dialMarker); ok {
			addr, result, _ := strings.Cut(rest, " ")
			got[addr] = result
		}
	}
	for _, addr := range realIMDS {
		if got[addr] != want {
			t.Errorf("%s: dial %s from the pod = %q, want %q", when, addr, got[addr], want)
		}
	}
}

// dialAndReport runs in the pod namespace and prints who answered on each of the comma-separated addresses.
func dialAndReport(addrs string) {
	for _, addr := range strings.Split(addrs, ",") {
		fmt.Println(dialMarker + addr + " " + dial(addr))
	}
}

func dial(addr string) string {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "refused"
	}
	if err != nil {
		return "error: " + err.Error()
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		return "error: " + err.Error()
	}
	return string(b)
}

// serveBanner answers every connection on addr with banner, so a dial can tell which listener it reached.
func serveBanner(t *testing.T, addr, banner string) {
	t.Helper()
	serveAnswers(t, addr, func(net.Conn) string { return banner })
}

// serveAnswers writes answer(conn) to every connection on "tcp addr" and closes it, until the test ends.
func serveAnswers(t *testing.T, addr string, answer func(net.Conn) string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(conn, answer(conn))
			conn.Close()
		}
	}()
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// guardRules are the lines of `ip rule show` at the routing guard's prefs (5 to 7).
func guardRules(t *testing.T, v6 bool) []string {
	t.Helper()
	args := []string{"rule", "show"}
	if v6 {
		args = []string{"-6", "rule", "show"}
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if pref, _, _ := strings.Cut(l, ":"); pref == "5" || pref == "6" || pref == "7" {
			lines = append(lines, strings.Join(strings.Fields(l), " "))
		}
	}
	return lines
}

// wantGuardRules is the routing guard as `ip rule show` prints it.
func wantGuardRules(imds string) []string {
	return []string{
		"5: from all to " + imds + " iif lo goto 7 proto 105",
		"6: from all to " + imds + " prohibit proto 105",
		"7: from all to " + imds + " nop proto 105",
	}
}
