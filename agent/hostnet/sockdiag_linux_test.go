package hostnet

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dialEnv makes the test binary a client instead: it connects to each of the comma-separated addresses, then
// holds the connections until its stdin closes.
const dialEnv = "IAMLET_HOSTNET_TEST_DIAL"

func TestMain(m *testing.M) {
	if addrs := os.Getenv(dialEnv); addrs != "" {
		var conns []net.Conn
		for _, a := range strings.Split(addrs, ",") {
			c, err := net.Dial("tcp", a)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			conns = append(conns, c)
		}
		_, _ = io.Copy(io.Discard, os.Stdin)
		for _, c := range conns {
			c.Close()
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSocketCgroupPod is the whole path on the real kernel: a process in a pod's container cgroup connects over
// IPv4 and IPv6, and its connections lead to the pod's UID.
func TestSocketCgroupPod(t *testing.T) {
	p := newPodTree(t)
	lns := []*net.TCPListener{listen(t, "tcp4", "127.0.0.1:0"), listen(t, "tcp6", "[::1]:0")}
	startIn(t, p.scope, lns...)

	for _, ln := range lns {
		conn := accept(t, ln)
		client, server := addrPort(conn.RemoteAddr()), addrPort(ln.Addr())
		id, err := SocketCgroup(client, server)
		if err != nil || id != p.scopeID {
			t.Fatalf("SocketCgroup(%s, %s) = %d, %v, want %d (the container's scope)", client, server, id, err, p.scopeID)
		}
		got, ok, err := p.cgroups.PodUID(id)
		if err != nil || !ok || got != p.uid {
			t.Errorf("PodUID(%d) = %q, %v, %v, want %q", id, got, ok, err, p.uid)
		}
		t.Logf("%s -> %s: cgroup %d, pod %s", client, server, id, got)
	}
	level, id, err := p.cgroups.PodCgroup(p.uid)
	if _, pl, _ := p.cgroups.Pods(); err != nil || level != pl+2 || id != p.podID {
		t.Errorf("PodCgroup(%s) = %d, %d, %v, want %d, %d", p.uid, level, id, err, pl+2, p.podID)
	}
}

// TestSocketCgroupOutside: a process outside the pods cgroup (this test) is found, and is no pod.
func TestSocketCgroupOutside(t *testing.T) {
	p := newPodTree(t)
	self := ownCgroup(t, p.mount)
	ln := listen(t, "tcp4", "127.0.0.1:0")

	// IPv4 from an IPv6 socket: the kernel reports the socket as AF_INET6 with mapped addresses.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv6unspecified}}
	mapped, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer mapped.Close()
	plain, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	for _, c := range []net.Conn{mapped, plain} {
		client, server := addrPort(c.LocalAddr()), addrPort(c.RemoteAddr())
		id, err := SocketCgroup(client, server)
		if err != nil || id != self {
			t.Fatalf("SocketCgroup(%s, %s) = %d, %v, want %d (this process's cgroup)", client, server, id, err, self)
		}
		if got, ok, err := p.cgroups.PodUID(id); err != nil || ok {
			t.Errorf("PodUID(%d) = %q, %v, %v, want no pod", id, got, ok, err)
		}
		t.Logf("%s -> %s: cgroup %d", client, server, id)
	}
}

// TestSocketCgroupPeerClosed: a client socket whose peer has closed (CLOSE_WAIT) is no live caller, though it holds
// its addresses and its cgroup: NAT may since have given its port to another connection, whose caller it is not.
func TestSocketCgroupPeerClosed(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	client, server := dialLoopback(t, ln)
	if _, err := SocketCgroup(client, server); err != nil {
		t.Fatalf("SocketCgroup(%s, %s) of a live connection: %v", client, server, err)
	}
	accept(t, ln).Close()
	deadline := time.Now().Add(time.Minute) // the kernel takes the FIN at once; the deadline only bounds a failure
	for {
		_, err := SocketCgroup(client, server)
		if errors.Is(err, ErrNoSocket) && strings.Contains(err.Error(), "no live caller") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SocketCgroup(%s, %s) after the server closed = %v, want ErrNoSocket: no live caller", client, server, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSocketCgroupNoMatch(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	server := addrPort(ln.Addr())
	nowhere := netip.MustParseAddrPort("127.0.0.1:1")

	if _, err := SocketCgroup(nowhere, server); !errors.Is(err, ErrNoSocket) {
		t.Errorf("SocketCgroup(%s, %s) error = %v, want ErrNoSocket", nowhere, server, err)
	}
	// No socket goes from the listener's address to nowhere, but the kernel falls back to the listener: a pod's
	// connection whose source port a node listener happens to use must still count as from no socket here.
	if id, err := SocketCgroup(server, nowhere); !errors.Is(err, ErrNoSocket) || !strings.Contains(err.Error(), "another socket") {
		t.Errorf("SocketCgroup(%s, %s) = %d, %v, want the listener refused as ErrNoSocket", server, nowhere, id, err)
	}
	if _, err := SocketCgroup(server, netip.MustParseAddrPort("[::1]:80")); err == nil {
		t.Errorf("SocketCgroup across families: no error")
	}
}

func TestParseDiagReply(t *testing.T) {
	local, remote := netip.MustParseAddrPort("10.0.0.5:40000"), netip.MustParseAddrPort("169.254.169.254:80")
	attr := func(typ uint16, val []byte) []byte {
		b := make([]byte, nlmAlign(4+len(val)))
		binary.NativeEndian.PutUint16(b, uint16(4+len(val)))
		binary.NativeEndian.PutUint16(b[2:], typ)
		copy(b[4:], val)
		return b
	}
	cgroup := binary.NativeEndian.AppendUint64(nil, 4242)
	msg := func(family, state uint8, l, r netip.AddrPort, attrs ...[]byte) []byte {
		b := make([]byte, sizeofInetDiagMsg)
		b[0], b[1] = family, state
		binary.BigEndian.PutUint16(b[4:], l.Port())
		binary.BigEndian.PutUint16(b[6:], r.Port())
		copy(b[8:24], l.Addr().AsSlice())
		copy(b[24:40], r.Addr().AsSlice())
		for _, a := range attrs {
			b = append(b, a...)
		}
		return b
	}
	nlmsg := func(typ uint16, body []byte) []byte {
		b := make([]byte, nlmAlign(unix.SizeofNlMsghdr+len(body)))
		binary.NativeEndian.PutUint32(b, uint32(unix.SizeofNlMsghdr+len(body)))
		binary.NativeEndian.PutUint16(b[4:], typ)
		copy(b[unix.SizeofNlMsghdr:], body)
		return b
	}
	mapped := func(a netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr().As16()), a.Port())
	}
	errno := func(e unix.Errno) []byte {
		return binary.NativeEndian.AppendUint32(nil, uint32(-int32(e)))
	}
	full := msg(unix.AF_INET, 1, local, remote, attr(8, []byte{0}), attr(inetDiagCgroupID, cgroup))

	for _, tc := range []struct {
		name  string
		reply []byte
		want  uint64
		err   string // part of the error, "" for none
	}{
		{"established", nlmsg(unix.SOCK_DIAG_BY_FAMILY, full), 4242, ""},
		{"mapped IPv6 socket", nlmsg(unix.SOCK_DIAG_BY_FAMILY,
			msg(unix.AF_INET6, 1, mapped(local), mapped(remote), attr(inetDiagCgroupID|0x8000, cgroup))), 4242, ""},
		{"listener", nlmsg(unix.SOCK_DIAG_BY_FAMILY,
			msg(unix.AF_INET, tcpListen, netip.AddrPortFrom(netip.IPv4Unspecified(), 40000), netip.AddrPortFrom(netip.IPv4Unspecified(), 0),
				attr(inetDiagCgroupID, cgroup))), 0, "another socket"},
		{"listener on the exact addresses", nlmsg(unix.SOCK_DIAG_BY_FAMILY,
			msg(unix.AF_INET, tcpListen, local, remote, attr(inetDiagCgroupID, cgroup))), 0, "another socket"},
		{"other port", nlmsg(unix.SOCK_DIAG_BY_FAMILY,
			msg(unix.AF_INET, 1, local, netip.AddrPortFrom(remote.Addr(), 81), attr(inetDiagCgroupID, cgroup))), 0, "another socket"},
		{"time wait", nlmsg(unix.SOCK_DIAG_BY_FAMILY, msg(unix.AF_INET, tcpTimeWait, local, remote)), 0, "closed"},
		{"half-closed by the client", nlmsg(unix.SOCK_DIAG_BY_FAMILY, msg(unix.AF_INET, tcpFinWait2, local, remote, attr(inetDiagCgroupID, cgroup))), 4242, ""},
		{"closed by the agent", nlmsg(unix.SOCK_DIAG_BY_FAMILY, msg(unix.AF_INET, tcpCloseWait, local, remote, attr(inetDiagCgroupID, cgroup))), 0, "no live caller"},
		{"old kernel", nlmsg(unix.SOCK_DIAG_BY_FAMILY, msg(unix.AF_INET, 1, local, remote, attr(8, []byte{0}))), 0, "5.7"},
		{"no socket", nlmsg(unix.NLMSG_ERROR, errno(unix.ENOENT)), 0, "no such TCP socket"},
		{"other error", nlmsg(unix.NLMSG_ERROR, errno(unix.EPERM)), 0, "not permitted"},
		{"two sockets", append(nlmsg(unix.SOCK_DIAG_BY_FAMILY, full), nlmsg(unix.SOCK_DIAG_BY_FAMILY, full)...), 0, "more than one"},
		{"empty", nil, 0, "no socket"},
		{"short socket", nlmsg(unix.SOCK_DIAG_BY_FAMILY, full[:sizeofInetDiagMsg-1]), 0, "socket of"},
		{"bad attribute", nlmsg(unix.SOCK_DIAG_BY_FAMILY, append(full[:sizeofInetDiagMsg:sizeofInetDiagMsg], 200, 0, 21, 0)), 0, "attribute"},
		{"short cgroup", nlmsg(unix.SOCK_DIAG_BY_FAMILY, msg(unix.AF_INET, 1, local, remote, attr(inetDiagCgroupID, cgroup[:4]))), 0, "cgroup id of"},
		{"bad length", nlmsg(unix.SOCK_DIAG_BY_FAMILY, full)[:40], 0, "message of"},
		{"unknown family", nlmsg(unix.SOCK_DIAG_BY_FAMILY, msg(unix.AF_UNIX, 1, local, remote)), 0, "family"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sk, err := parseDiagReply(tc.reply)
			var id uint64
			if err == nil {
				id, err = sk.cgroupOf(local, remote)
			}
			if tc.err == "" && (err != nil || id != tc.want) {
				t.Errorf("cgroup of %s -> %s = %d, %v, want %d", local, remote, id, err, tc.want)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("cgroup of %s -> %s = %d, %v, want an error that says %q", local, remote, id, err, tc.err)
			}
			// The kernel offers a listener when no socket matches: that too is no such socket, as is a leftover.
			noSocket := tc.err == "another socket" || tc.err == "no live caller" || strings.HasPrefix(tc.name, "no socket")
			if errors.Is(err, ErrNoSocket) != noSocket {
				t.Errorf("cgroup of %s -> %s: errors.Is(%v, ErrNoSocket) = %v, want %v", local, remote, err, !noSocket, noSocket)
			}
		})
	}

}

func TestDiagRequest(t *testing.T) {
	local, remote := netip.MustParseAddrPort("[fd00::5]:40000"), netip.MustParseAddrPort("[fd00:ec2::254]:80")
	b := diagRequest(local, remote)
	r := b[unix.SizeofNlMsghdr:]
	ne := binary.NativeEndian
	if got := ne.Uint32(b); got != uint32(len(b)) || len(r) != sizeofInetDiagReqV2 {
		t.Fatalf("request of %d bytes says %d", len(b), got)
	}
	if typ, flags := ne.Uint16(b[4:]), ne.Uint16(b[6:]); typ != unix.SOCK_DIAG_BY_FAMILY || flags != unix.NLM_F_REQUEST {
		t.Errorf("type %d flags %#x, want %d %#x", typ, flags, unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_REQUEST)
	}
	if r[0] != unix.AF_INET6 || r[1] != unix.IPPROTO_TCP {
		t.Errorf("family %d protocol %d", r[0], r[1])
	}
	if sport, dport := r[8:10], r[10:12]; sport[0] != 40000>>8 || sport[1] != 40000&0xff || dport[0] != 0 || dport[1] != 80 {
		t.Errorf("ports % x % x, want network byte order", sport, dport)
	}
	if src, dst := netip.AddrFrom16([16]byte(r[12:28])), netip.AddrFrom16([16]byte(r[28:44])); src != local.Addr() || dst != remote.Addr() {
		t.Errorf("addresses %s %s, want %s %s", src, dst, local.Addr(), remote.Addr())
	}
	if ne.Uint32(r[48:]) != ^uint32(0) || ne.Uint32(r[52:]) != ^uint32(0) {
		t.Errorf("cookie % x, want INET_DIAG_NOCOOKIE", r[48:56])
	}
}

// BenchmarkIdentify is what the agent pays per connection from a hostNetwork pod once the pod is known: the
// socket's cgroup, then its pod from the cache.
func BenchmarkIdentify(b *testing.B) {
	p := newPodTree(b)
	ln := listen(b, "tcp4", "127.0.0.1:0")
	startIn(b, p.scope, ln)
	conn := accept(b, ln)
	client, server := addrPort(conn.RemoteAddr()), addrPort(ln.Addr())
	if _, ok, err := p.cgroups.PodUID(p.scopeID); !ok || err != nil {
		b.Fatalf("PodUID(%d) = %v, %v", p.scopeID, ok, err)
	}
	b.ResetTimer()
	for b.Loop() {
		id, err := SocketCgroup(client, server)
		if err != nil {
			b.Fatal(err)
		}
		if uid, ok, err := p.cgroups.PodUID(id); !ok || err != nil || uid != p.uid {
			b.Fatalf("PodUID(%d) = %q, %v, %v", id, uid, ok, err)
		}
	}
}

// BenchmarkSocketCgroup is the sock_diag lookup alone.
func BenchmarkSocketCgroup(b *testing.B) {
	client, server := dialLoopback(b, listen(b, "tcp4", "127.0.0.1:0"))
	for b.Loop() {
		if _, err := SocketCgroup(client, server); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPodUIDMiss is what an id that names no pod costs: a scan of a node's worth of pods (110, each with a
// sandbox and two containers) in the real cgroup v2 hierarchy.
func BenchmarkPodUIDMiss(b *testing.B) {
	p := newPodTree(b)
	qos := filepath.Join(p.mount, p.pods, "kubepods-burstable.slice")
	mkCgroup(b, qos)
	for range 110 {
		pod := filepath.Join(qos, "kubepods-burstable-pod"+strings.ReplaceAll(randomUID(b), "-", "_")+".slice")
		mkCgroup(b, pod)
		for _, ctr := range []string{"sandbox", "app", "sidecar"} {
			mkCgroup(b, filepath.Join(pod, "cri-containerd-"+ctr+".scope"))
		}
	}
	_, _, pods := p.cgroups.Pods()
	b.ResetTimer()
	for b.Loop() {
		if _, ok, err := p.cgroups.PodUID(pods); ok || err != nil {
			b.Fatalf("PodUID(%d) = %v, %v", pods, ok, err)
		}
	}
}

// podTree is a pod's cgroups made for a test in the real cgroup v2 hierarchy, below a pods cgroup of its own.
type podTree struct {
	mount   string // where the cgroup v2 hierarchy is mounted
	pods    string // the test's pods cgroup, relative to mount
	cgroups *Cgroups
	uid     string
	podID   uint64
	scope   string // a container's cgroup in the pod
	scopeID uint64
}

func newPodTree(tb testing.TB) podTree {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("this test needs root: it makes cgroups and moves a process into one")
	}
	p := podTree{mount: cgroup2Mount(tb), uid: randomUID(tb)}
	top, err := os.MkdirTemp(p.mount, "iamlet-hostnet-")
	if err != nil {
		tb.Fatal(err)
	}
	removeCgroupLater(tb, top)
	p.pods = filepath.Join(filepath.Base(top), "kubepods.slice")
	pod := filepath.Join(top, "kubepods.slice", "kubepods-besteffort.slice",
		"kubepods-besteffort-pod"+strings.ReplaceAll(p.uid, "-", "_")+".slice")
	p.scope = filepath.Join(pod, "cri-containerd-abc.scope")
	for _, d := range []string{filepath.Dir(filepath.Dir(pod)), filepath.Dir(pod), pod, p.scope} {
		mkCgroup(tb, d)
	}
	p.podID, p.scopeID = statID(tb, pod), statID(tb, p.scope)
	if p.cgroups, err = NewCgroups(p.mount, p.pods); err != nil {
		tb.Fatal(err)
	}
	return p
}

// mkCgroup makes a cgroup and removes it when the test ends; cleanups run last first, so children go first.
func mkCgroup(tb testing.TB, dir string) {
	tb.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	removeCgroupLater(tb, dir)
}

func removeCgroupLater(tb testing.TB, dir string) {
	tb.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			tb.Errorf("removing the test's cgroup: %v", err)
		}
	})
}

// startIn runs a client in the cgroup dir (placed there by clone3, before it runs) that connects to each
// listener and holds its connections until the test ends.
func startIn(tb testing.TB, dir string, lns ...*net.TCPListener) {
	tb.Helper()
	var addrs []string
	for _, ln := range lns {
		addrs = append(addrs, ln.Addr().String())
	}
	cg, err := os.Open(dir)
	if err != nil {
		tb.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// Without atexit_sleep_ms a client built with -race lingers a second after its work.
	cmd.Env = append(os.Environ(), dialEnv+"="+strings.Join(addrs, ","), "GORACE=atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	hold, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting a client in cgroup %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		hold.Close()
		if err := cmd.Wait(); err != nil {
			tb.Errorf("client in cgroup %s: %v", dir, err)
		}
	})
}

func listen(tb testing.TB, network, addr string) *net.TCPListener {
	tb.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// accept bounds the wait, so that a client that failed to connect fails the test instead of hanging it.
// dialLoopback connects to ln, closing the connection when the test ends, and returns the client's and server's
// addresses as the client's socket has them.
func dialLoopback(tb testing.TB, ln *net.TCPListener) (client, server netip.AddrPort) {
	tb.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return addrPort(c.LocalAddr()), addrPort(c.RemoteAddr())
}

func accept(tb testing.TB, ln *net.TCPListener) net.Conn {
	tb.Helper()
	if err := ln.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		tb.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func addrPort(a net.Addr) netip.AddrPort {
	return a.(*net.TCPAddr).AddrPort()
}

func statID(tb testing.TB, path string) uint64 {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := inode(fi)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// cgroup2Mount finds where the whole cgroup v2 hierarchy is mounted: /sys/fs/cgroup on most machines,
// /sys/fs/cgroup/unified beside cgroup v1 ones.
func cgroup2Mount(tb testing.TB) string {
	tb.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	unescape := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	s := bufio.NewScanner(f)
	for s.Scan() {
		mount, fsys, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		mf, ff := strings.Fields(mount), strings.Fields(fsys)
		if len(mf) >= 5 && len(ff) >= 1 && ff[0] == "cgroup2" && mf[3] == "/" {
			return unescape.Replace(mf[4])
		}
	}
	if err := s.Err(); err != nil {
		tb.Fatal(err)
	}
	tb.Fatal("no cgroup v2 hierarchy is mounted")
	return ""
}

// ownCgroup is the id of this process's cgroup v2.
func ownCgroup(tb testing.TB, mount string) uint64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			return statID(tb, filepath.Join(mount, rel))
		}
	}
	tb.Fatalf("no cgroup v2 in /proc/self/cgroup:\n%s", b)
	return 0
}

func randomUID(tb testing.TB) string {
	tb.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
