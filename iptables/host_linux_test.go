package iptables

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	nft "github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TestHostRules runs in three roles of the same test binary, told apart by environment variables:
//   - outside: creates cgroups below a directory of its own in the cgroup v2 hierarchy, laid out as the kubelet lays
//     out pods, and a network namespace standing in for the node's; then re-runs itself inside that namespace with
//     the cgroup directory as file descriptor 3 (ip netns exec remounts /sys, hiding the hierarchy by path). Nothing
//     here touches the machine's own network namespace.
//   - inside: serves the node's IMDS and iamlet's listeners, drives HostRules, and starts dialers in the cgroups.
//   - dialer: started straight into a cgroup (clone3 with CLONE_INTO_CGROUP, so every socket it opens belongs to that
//     cgroup), it dials each target and prints who answered.
const (
	hostNetnsTestEnv = "IAMLET_TEST_HOSTRULES_NETNS"
	hostLevelTestEnv = "IAMLET_TEST_HOSTRULES_LEVEL" // level of the cgroup directory passed as fd 3
	hostDialTestEnv  = "IAMLET_TEST_HOSTRULES_DIAL"
	hostCgroupFD     = 3
)

// The cgroups below the test's directory, as a kubelet with the systemd driver names them: a guaranteed pod right
// under kubepods.slice, the other QoS classes one level further down. system.slice stands for the node's own services.
const (
	podsSlice      = "kubepods.slice"
	guaranteedPod  = podsSlice + "/kubepods-pod0e4b7a1c.slice"
	besteffortPod  = podsSlice + "/kubepods-besteffort.slice/kubepods-besteffort-pod5f2d9c3e.slice"
	burstablePod   = podsSlice + "/kubepods-burstable.slice/kubepods-burstable-pod77a1b2c4.slice"
	nodeSlice      = "system.slice"
	ownCgroup      = "" // the inside process's own cgroup: the hierarchy's root, outside the test's directory
	hostListenPort = 18181
)

var (
	// iamlet's listeners, on an address of the test namespace's own, as on a node's.
	hostListenV4 = netip.AddrPortFrom(netip.MustParseAddr("10.98.0.1"), hostListenPort)
	hostListenV6 = netip.AddrPortFrom(netip.MustParseAddr("fd00:98::1"), hostListenPort)

	// What each dialer tries: the metadata addresses on the port SDKs use, on another port, and over UDP.
	hostTargets = []string{
		"tcp 169.254.169.254:80", "tcp [fd00:ec2::254]:80",
		"tcp 169.254.169.254:8080", "tcp [fd00:ec2::254]:8080",
		"udp 169.254.169.254:5353", "udp [fd00:ec2::254]:5353",
	}
)

func TestHostRules(t *testing.T) {
	switch {
	case os.Getenv(hostDialTestEnv) != "":
		for _, target := range strings.Split(os.Getenv(hostDialTestEnv), ",") {
			fmt.Println(dialMarker + target + " " + dialTarget(target))
		}
	case os.Getenv(hostNetnsTestEnv) != "":
		testHostInNetns(t, os.Getenv(hostNetnsTestEnv))
	default:
		testHostFromOutside(t)
	}
}

func testHostFromOutside(t *testing.T) {
	// Root, network namespaces and cgroup v2 are prerequisites of this package's tests: fail, never skip.
	if os.Geteuid() != 0 {
		t.Fatalf("TestHostRules must run as root (it creates cgroups and network namespaces); euid = %d", os.Geteuid())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("TestHostRules needs ip (iproute2): %v", err)
	}
	mount, mountLevel, err := cgroup2Mount()
	if err != nil {
		t.Fatalf("TestHostRules needs a cgroup v2 hierarchy: %v", err)
	}
	dir := filepath.Join(mount, "iamlet-hosttest-"+rand.Text()[:10])
	for _, rel := range []string{"", podsSlice, guaranteedPod, filepath.Dir(besteffortPod), besteffortPod,
		filepath.Dir(burstablePod), burstablePod, nodeSlice} {
		mkdirCgroup(t, filepath.Join(dir, rel))
	}
	root, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open the test's cgroup: %v", err)
	}
	defer root.Close()

	ns := addNetns(t, fmt.Sprintf("iamlet-host-%d", os.Getpid()))
	for _, args := range [][]string{
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", IMDSv4.String() + "/32", "dev", "lo"},
		{"-n", ns, "addr", "add", IMDSv6.String() + "/128", "dev", "lo", "nodad"},
		{"-n", ns, "addr", "add", hostListenV4.Addr().String() + "/32", "dev", "lo"},
		{"-n", ns, "addr", "add", hostListenV6.Addr().String() + "/128", "dev", "lo", "nodad"},
	} {
		runCmd(t, "ip", args...)
	}
	runInNetns(t, ns, "TestHostRules", []string{hostNetnsTestEnv + "=" + ns,
		hostLevelTestEnv + "=" + strconv.FormatUint(uint64(mountLevel+1), 10)}, []*os.File{root}) // root becomes hostCgroupFD
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted, and the level of the mount's root. Levels count from
// the root of this process's cgroup namespace, which is how the kernel reads the rules' levels when this process
// writes them (Linux 6.1.y and later): mountinfo shows a mount's root relative to it, with ".." for each level a
// mount reaches above it, and nothing above it can be named by a level.
func cgroup2Mount() (string, uint32, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", 0, err
	}
	for line := range strings.Lines(string(b)) {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(line)
		if sep := slices.Index(f, "-"); sep < 5 || sep+1 >= len(f) || f[sep+1] != "cgroup2" {
			continue
		}
		level := 0
		for _, c := range strings.Split(unescapeMountinfo(f[3]), "/") {
			switch c {
			case "", ".":
			case "..":
				level--
			default:
				level++
			}
		}
		if level < 0 {
			return "", 0, fmt.Errorf("the cgroup2 mount at %s shows %s, above this cgroup namespace's root", f[4], f[3])
		}
		return unescapeMountinfo(f[4]), uint32(level), nil
	}
	return "", 0, errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) mountinfo uses in paths.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupDepth counts the components of a path relative to a cgroup: its level below it.
func cgroupDepth(rel string) uint32 {
	var n uint32
	for _, c := range strings.Split(rel, "/") {
		if c != "" && c != "." {
			n++
		}
	}
	return n
}

// mkdirCgroup creates a cgroup that is removed when the test ends; by then no process is left in it. Cleanups run
// last-in first-out, so children go before their parents.
func mkdirCgroup(t *testing.T, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
}

// hostEnv is the inside role's view of the test's cgroups.
type hostEnv struct {
	root  int    // descriptor of the test's cgroup directory
	level uint32 // its level
}

// ref names the cgroup at rel below the test's directory as the rules name it.
func (e hostEnv) ref(t *testing.T, rel string) CgroupRef {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstatat(e.root, rel, &st, 0); err != nil {
		t.Fatalf("stat cgroup %s: %v", rel, err)
	}
	return CgroupRef{Level: e.level + cgroupDepth(rel), ID: st.Ino}
}

func testHostInNetns(t *testing.T, ns string) {
	requireNetns(t, ns)
	level, err := strconv.ParseUint(os.Getenv(hostLevelTestEnv), 10, 32)
	if err != nil {
		t.Fatalf("%s: %v", hostLevelTestEnv, err)
	}
	env := hostEnv{root: hostCgroupFD, level: uint32(level)}
	unix.CloseOnExec(env.root) // the dialers get their cgroup from clone3, not this descriptor

	for _, target := range hostTargets {
		serveTarget(t, target, "node")
	}
	for _, ap := range []netip.AddrPort{hostListenV4, hostListenV6} {
		serveIamlet(t, ap)
	}
	pods := env.ref(t, podsSlice)
	cfg := HostConfig{Pods: pods, MetadataV4: hostListenV4, MetadataV6: hostListenV6}
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	intercepted := map[string]string{
		"tcp 169.254.169.254:80": "iamlet", "tcp [fd00:ec2::254]:80": "iamlet",
		"tcp 169.254.169.254:8080": "refused", "tcp [fd00:ec2::254]:8080": "refused",
		// A datagram rejected in OUTPUT is dropped before it leaves: the sender's write fails at once.
		"udp 169.254.169.254:5353": "not permitted", "udp [fd00:ec2::254]:5353": "not permitted",
	}
	allNode := map[string]string{}
	for _, target := range hostTargets {
		allNode[target] = "node"
	}
	expect := func(t *testing.T, when, cgroup string, want map[string]string) {
		t.Helper()
		expectHostDial(t, env, when, cgroup, want)
	}
	expect(t, "before Ensure", besteffortPod, allNode) // the harness can see a leak

	h := newHostRules(t, cfg, log)
	if got, err := h.Exempted(); got != nil || err != nil {
		t.Errorf("Exempted() with no table = %v, %v, want nothing", got, err)
	}
	burstable := env.ref(t, burstablePod)
	t.Run("intercepts pod cgroups only", func(t *testing.T) {
		// The table, its 4 chains, nat's 2 skips and 2 DNATs, the guard's 2 skips and 4 rejects, and the pods' guard's
		// 4 rejects in each of its 2 chains.
		if got := mustEnsureHost(t, h, nil); got != 23 {
			t.Errorf("first Ensure() changed %d, want 23", got)
		}
		if got := mustEnsureHost(t, h, nil); got != 0 {
			t.Errorf("second Ensure() changed %d, want 0", got)
		}
		for _, pod := range []string{guaranteedPod, besteffortPod, burstablePod} {
			expect(t, "after Ensure", pod, intercepted)
		}
		expect(t, "after Ensure", nodeSlice, allNode)
		expect(t, "after Ensure", ownCgroup, allNode)
	})

	t.Run("exemptions", func(t *testing.T) {
		if got := mustEnsureHost(t, h, []CgroupRef{burstable}); got != 2 {
			t.Errorf("Ensure(%v) changed %d, want 2 (one rule per chain)", burstable, got)
		}
		expect(t, "exempted", burstablePod, allNode)
		expect(t, "beside an exemption", besteffortPod, intercepted)
		if got, err := h.Exempted(); !slices.Equal(got, []CgroupRef{burstable}) || err != nil {
			t.Errorf("Exempted() = %v, %v, want [%v]", got, err, burstable)
		}
		// Order and repetition are not changes.
		guaranteed := env.ref(t, guaranteedPod)
		both := []CgroupRef{guaranteed, burstable}
		mustEnsureHost(t, h, both)
		if got := mustEnsureHost(t, h, []CgroupRef{burstable, guaranteed, burstable}); got != 0 {
			t.Errorf("Ensure() with the same exemptions reordered changed %d, want 0", got)
		}
		if got, err := h.Exempted(); !slices.Equal(got, both) || err != nil { // both is in level order already
			t.Errorf("Exempted() = %v, %v, want %v", got, err, both)
		}
		// A restarted agent reads the exemptions back and, ensuring them, changes nothing.
		again, err := NewHostRules(cfg, log)
		if err != nil {
			t.Fatalf("NewHostRules() = %v", err)
		}
		previous, err := again.Exempted()
		if err != nil {
			t.Fatalf("Exempted() = %v", err)
		}
		if got := mustEnsureHost(t, again, previous); got != 0 {
			t.Errorf("Ensure(Exempted()) from a new HostRules changed %d, want 0", got)
		}
		if got := mustEnsureHost(t, h, []CgroupRef{burstable}); got != 2 {
			t.Errorf("Ensure() dropping an exemption changed %d, want 2", got)
		}
		expect(t, "exemption dropped", guaranteedPod, intercepted)

		for _, bad := range []CgroupRef{pods, {Level: pods.Level - 1, ID: 1}, {Level: pods.Level + 1}} {
			if _, err := h.Ensure(t.Context(), []CgroupRef{bad}); err == nil {
				t.Errorf("Ensure([%v]) = nil error, want an exemption not below the pods cgroup refused", bad)
			}
		}
	})

	t.Run("nft lists the table", func(t *testing.T) {
		bin, err := exec.LookPath("nft")
		if err != nil {
			t.Fatalf("nft is needed to read the table as an operator would (hack/install-stack.sh installs it): %v", err)
		}
		out := runCmd(t, bin, "list", "table", "inet", hostTableName)
		t.Logf("nft list table inet %s:\n%s", hostTableName, out)
		for _, want := range []string{
			fmt.Sprintf("socket cgroupv2 level %d %d", pods.Level, pods.ID),
			fmt.Sprintf("socket cgroupv2 level %d %d", burstable.Level, burstable.ID),
			"dnat ip to " + hostListenV4.String(), "dnat ip6 to " + hostListenV6.String(),
			"reject with tcp reset", `comment "iamlet: exempt"`,
			"chain " + podGuardForwardChain, "hook forward priority filter - 1", "hook input priority filter - 1",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("nft list table inet %s: no %q", hostTableName, want)
			}
		}
	})

	t.Run("drift", func(t *testing.T) {
		exempt := []CgroupRef{burstable}
		nat, guard, podGuard := 5, 7, 4 // rules per chain with one exemption
		cases := []struct {
			name    string
			drift   func(t *testing.T)
			during  map[string]string // what a pod gets while the drift stands
			changed int
		}{
			{"table deleted", func(t *testing.T) {
				nftDo(t, func(c *nft.Conn) { c.DelTable(hostTable()) })
			}, allNode, 1 + 4 + nat + guard + 2*podGuard},
			// The guard refuses what the missing redirect lets through: never the node's IMDS.
			{"nat chain flushed", func(t *testing.T) {
				nftDo(t, func(c *nft.Conn) { c.FlushChain(&nft.Chain{Name: hostNATChain, Table: hostTable()}) })
			}, mapWith(intercepted, "refused", "tcp 169.254.169.254:80", "tcp [fd00:ec2::254]:80"), nat},
			{"guard chain flushed", func(t *testing.T) {
				nftDo(t, func(c *nft.Conn) { c.FlushChain(&nft.Chain{Name: hostGuardChain, Table: hostTable()}) })
			}, mapWith(intercepted, "node", "tcp 169.254.169.254:8080", "tcp [fd00:ec2::254]:8080",
				"udp 169.254.169.254:5353", "udp [fd00:ec2::254]:5353"), guard},
			{"DNAT rule changed", func(t *testing.T) {
				moved := cfg
				moved.MetadataV4 = netip.AddrPortFrom(hostListenV4.Addr(), hostListenPort+1) // nothing listens
				replaceHostRule(t, hostNATChain, "iamlet: imds dnat ipv4", (&HostRules{cfg: moved}).build(exempt))
			}, mapWith(intercepted, "refused", "tcp 169.254.169.254:80"), 2},
			// Only the socket expression differs: the comparison reads it back, level included.
			{"exemption level changed", func(t *testing.T) {
				other := (&HostRules{cfg: cfg}).build([]CgroupRef{{Level: burstable.Level + 1, ID: burstable.ID}})
				replaceHostRule(t, hostGuardChain, "iamlet: exempt", other)
			}, intercepted, 2},
			{"foreign chain added", func(t *testing.T) {
				nftDo(t, func(c *nft.Conn) { c.AddChain(&nft.Chain{Name: "foreign", Table: hostTable()}) })
			}, intercepted, 1},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				mustEnsureHost(t, h, exempt)
				tc.drift(t)
				expect(t, tc.name, besteffortPod, tc.during)
				if got := mustEnsureHost(t, h, exempt); got != tc.changed {
					t.Errorf("Ensure() after %s changed %d, want %d", tc.name, got, tc.changed)
				}
				if got := mustEnsureHost(t, h, exempt); got != 0 {
					t.Errorf("Ensure() after the repair changed %d, want 0", got)
				}
				expect(t, "repaired "+tc.name, besteffortPod, intercepted)
				expect(t, "repaired "+tc.name, burstablePod, allNode)
			})
		}
	})

	t.Run("concurrent Ensure changes once", func(t *testing.T) {
		mustEnsureHost(t, h, nil)
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			total int
		)
		for range 8 {
			wg.Go(func() {
				n, err := h.Ensure(context.Background(), []CgroupRef{burstable})
				if err != nil {
					t.Errorf("Ensure() = %v", err)
				}
				mu.Lock()
				total += n
				mu.Unlock()
			})
		}
		wg.Wait()
		if total != 2 {
			t.Errorf("8 concurrent Ensure() changed %d in all, want 2", total)
		}
	})

	t.Run("a family without a listener is refused", func(t *testing.T) {
		v4only := cfg
		v4only.MetadataV6 = netip.AddrPort{}
		h4 := newHostRules(t, v4only, log)
		if got := mustEnsureHost(t, h4, nil); got != 3 {
			t.Errorf("Ensure() without an IPv6 target changed %d, want 3 (2 exemptions and the IPv6 DNAT gone)", got)
		}
		expect(t, "no IPv6 target", besteffortPod, mapWith(intercepted, "refused", "tcp [fd00:ec2::254]:80"))
		expect(t, "no IPv6 target", nodeSlice, allNode)
	})

	t.Run("Remove", func(t *testing.T) {
		for range 2 {
			if err := h.Remove(); err != nil {
				t.Fatalf("Remove() = %v", err)
			}
			if got := listTables(t); slices.Contains(got, hostTableName) {
				t.Errorf("after Remove, tables = %q", got)
			}
		}
		expect(t, "after Remove", besteffortPod, allNode)
		if got, err := h.Exempted(); got != nil || err != nil {
			t.Errorf("Exempted() after Remove = %v, %v, want nothing", got, err)
		}
	})
}

func TestHostConfigValidation(t *testing.T) {
	pods := CgroupRef{Level: 1, ID: 1234}
	v4, v6 := netip.MustParseAddrPort("10.0.0.1:8181"), netip.MustParseAddrPort("[fd00::1]:8181")
	for _, tc := range []struct {
		name string
		cfg  HostConfig
		ok   bool
	}{
		{"both targets", HostConfig{Pods: pods, MetadataV4: v4, MetadataV6: v6}, true},
		{"guard only", HostConfig{Pods: pods}, true},
		{"root as pods cgroup", HostConfig{Pods: CgroupRef{Level: 0, ID: 1}, MetadataV4: v4}, false},
		{"no pods id", HostConfig{Pods: CgroupRef{Level: 1}, MetadataV4: v4}, false},
		{"v6 target for v4", HostConfig{Pods: pods, MetadataV4: v6}, false},
		{"v4 target for v6", HostConfig{Pods: pods, MetadataV6: v4}, false},
		{"mapped v4 for v6", HostConfig{Pods: pods, MetadataV6: netip.MustParseAddrPort("[::ffff:10.0.0.1]:8181")}, false},
		{"port 0", HostConfig{Pods: pods, MetadataV4: netip.MustParseAddrPort("10.0.0.1:0")}, false},
		{"zone", HostConfig{Pods: pods, MetadataV6: netip.MustParseAddrPort("[fe80::1%eth0]:8181")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.validate(); (err == nil) != tc.ok {
				t.Errorf("HostConfig%+v.validate() = %v, want ok %v", tc.cfg, err, tc.ok)
			}
		})
	}

	cfg := HostConfig{Pods: pods}
	a, b := CgroupRef{Level: 2, ID: 9}, CgroupRef{Level: 3, ID: 5}
	got, err := cfg.exemptions([]CgroupRef{b, a, b})
	if !slices.Equal(got, []CgroupRef{a, b}) || err != nil {
		t.Errorf("exemptions([b a b]) = %v, %v, want [a b]", got, err)
	}
	for _, bad := range []CgroupRef{pods, {Level: 0, ID: 1}, {Level: 2}} {
		if _, err := cfg.exemptions([]CgroupRef{a, bad}); err == nil {
			t.Errorf("exemptions([%v]) = nil error, want refused", bad)
		}
	}
}

func newHostRules(t *testing.T, cfg HostConfig, log *slog.Logger) *HostRules {
	t.Helper()
	h, err := NewHostRules(cfg, log)
	if err != nil {
		t.Fatalf("NewHostRules(%+v) = %v", cfg, err)
	}
	t.Cleanup(func() {
		if err := h.Remove(); err != nil {
			t.Errorf("Remove() in cleanup = %v", err)
		}
	})
	return h
}

func mustEnsureHost(t *testing.T, h *HostRules, exempt []CgroupRef) int {
	t.Helper()
	n, err := h.Ensure(t.Context(), exempt)
	if err != nil {
		t.Fatalf("Ensure(%v) = %v", exempt, err)
	}
	return n
}

// nftDo sends one batch, as another program changing the table would.
func nftDo(t *testing.T, batch func(*nft.Conn)) {
	t.Helper()
	c, err := nft.New()
	if err != nil {
		t.Fatal(err)
	}
	batch(c)
	if err := c.Flush(); err != nil {
		t.Fatalf("nftables batch: %v", err)
	}
}

// replaceHostRule replaces, in place, the first rule of chain with the given comment by the rule of that comment in
// chains, as written for another configuration.
func replaceHostRule(t *testing.T, chain, comment string, chains []hostChain) {
	t.Helper()
	c, err := nft.New()
	if err != nil {
		t.Fatal(err)
	}
	ch := &nft.Chain{Name: chain, Table: hostTable()}
	// The nftables package reads handles and comments back faithfully, whatever it makes of the expressions.
	rules, err := c.GetRules(hostTable(), ch)
	if err != nil {
		t.Fatalf("list chain %s: %v", chain, err)
	}
	var handle uint64
	for _, r := range rules {
		if got, _ := userdata.GetString(r.UserData, userdata.TypeComment); got == comment {
			handle = r.Handle
			break
		}
	}
	for _, hc := range chains {
		for _, r := range hc.rules {
			if hc.chain.Name == chain && r.comment == comment && handle != 0 {
				nr := r.nftRule(hostTable(), ch)
				nr.Handle = handle
				c.ReplaceRule(nr)
				if err := c.Flush(); err != nil {
					t.Fatalf("replace rule %q: %v", comment, err)
				}
				return
			}
		}
	}
	t.Fatalf("no rule %q in chain %s to replace", comment, chain)
}

func listTables(t *testing.T) []string {
	t.Helper()
	c, err := nft.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nft.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	return names
}

// mapWith returns m with the given keys set to v.
func mapWith(m map[string]string, v string, keys ...string) map[string]string {
	out := make(map[string]string, len(m))
	for k, x := range m {
		out[k] = x
	}
	for _, k := range keys {
		out[k] = v
	}
	return out
}

// expectHostDial starts a dialer in the cgroup at rel below the test's directory (ownCgroup: this process's) and
// checks who answered on each target: "iamlet", "node" or "refused".
func expectHostDial(t *testing.T, env hostEnv, when, rel string, want map[string]string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("os.Executable() = %v", err)
	}
	cmd := exec.Command(exe, "-test.run=^TestHostRules$", "-test.count=1")
	// Under -race, a process exits only after a one-second pause for reports; a dialer has none to wait for.
	cmd.Env = append(os.Environ(), hostDialTestEnv+"="+strings.Join(hostTargets, ","),
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	if rel != ownCgroup {
		fd, err := unix.Openat(env.root, rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("open cgroup %s: %v", rel, err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dial from cgroup %q: %v\n%s", rel, err, out)
	}
	got := map[string]string{}
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), dialMarker); ok {
			proto, rest, _ := strings.Cut(rest, " ")
			addr, result, _ := strings.Cut(rest, " ")
			got[proto+" "+addr] = result
		}
	}
	where := rel
	if where == ownCgroup {
		where = "the test's own cgroup"
	}
	for _, target := range hostTargets {
		if got[target] != want[target] {
			t.Errorf("%s: %s from %s = %q, want %q", when, target, where, got[target], want[target])
		}
	}
}

// dialTarget dials "tcp addr" or "udp addr" and says who answered. Over UDP it sends one datagram and waits for the
// answer; an ICMP port unreachable comes back to a connected socket as ECONNREFUSED.
func dialTarget(target string) string {
	proto, addr, _ := strings.Cut(target, " ")
	if proto == "tcp" {
		return dial(addr)
	}
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return "error: " + err.Error()
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte("?")); err != nil {
		return udpResult(err)
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		return udpResult(err)
	}
	return string(buf[:n])
}

func udpResult(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EPERM):
		return "not permitted"
	}
	return "error: " + err.Error()
}

// serveIamlet answers "iamlet" on ap to connections redirected from a metadata address's port 80, as the agent's
// listener tells them (by conntrack's original destination), and says what it saw to any other.
func serveIamlet(t *testing.T, ap netip.AddrPort) {
	t.Helper()
	serveAnswers(t, ap.String(), func(conn net.Conn) string {
		dst, err := OriginalDestination(conn.(*net.TCPConn))
		if err != nil || dst.Port() != 80 || dst.Addr() != IMDSv4 && dst.Addr() != IMDSv6 {
			return fmt.Sprintf("iamlet, not redirected (original destination %v, %v)", dst, err)
		}
		return "iamlet"
	})
}

// serveTarget answers on "tcp addr" or "udp addr" with banner.
func serveTarget(t *testing.T, target, banner string) {
	t.Helper()
	proto, addr, _ := strings.Cut(target, " ")
	if proto == "tcp" {
		serveBanner(t, addr, banner)
		return
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listen on udp %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(banner), from)
		}
	}()
}
