package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/agent/hostnet"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/iptables"
)

// hostNetwork pods share the node's network namespace and address, so their address says nothing. Their sockets
// belong to the pod's cgroup, though: rules in OUTPUT send those of the kubelet's pods cgroup to listeners of their
// own (--host-network-port), and the agent traces each connection there to its socket, the socket to its cgroup and
// the cgroup to the pod's UID. A connection on those listeners is never identified by its address.

// hostCaller is who a connection from the node's own network namespace is: the pod its socket's cgroup names,
// or why it names none.
type hostCaller struct {
	uid types.UID
	err error
}

type hostCallerKey struct{}

// socketTracer finds the pod behind a socket of the node's network namespace.
type socketTracer interface {
	// PodOf returns the UID of the pod whose cgroup holds the local socket connected from client to server.
	PodOf(client, server netip.AddrPort) (types.UID, error)
}

// cgroupTracer is socketTracer over sock_diag and the cgroup v2 hierarchy.
type cgroupTracer struct{ cgroups *hostnet.Cgroups }

func (t cgroupTracer) PodOf(client, server netip.AddrPort) (types.UID, error) {
	id, err := hostnet.SocketCgroup(client, server)
	if err != nil {
		return "", err
	}
	uid, ok, err := t.cgroups.PodUID(id)
	switch {
	case err != nil:
		return "", err
	case !ok:
		return "", fmt.Errorf("socket cgroup %d is not a pod's", id)
	}
	return types.UID(uid), nil
}

// identifyHostCallers is the hostNetwork listeners' ConnContext: every connection carries its hostCaller, the pod
// traced from its socket or why none was. A failure is the caller's error: refused, never guessed from its address.
// The tracing happens on the connection's first request, in its own goroutine, not in the server's accept loop.
func identifyHostCallers(tr socketTracer) func(context.Context, net.Conn) context.Context {
	return func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, hostCallerKey{}, &lazyHostCaller{tr: tr, conn: c})
	}
}

// lazyHostCaller traces its connection once, when first asked.
type lazyHostCaller struct {
	tr   socketTracer
	conn net.Conn
	once sync.Once
	hc   hostCaller
}

func (l *lazyHostCaller) get() hostCaller {
	l.once.Do(func() {
		l.hc = hostCaller{err: errors.New("not redirected from the metadata address")}
		if rc := redirectedOf(l.conn); rc != nil {
			if client, err := netip.ParseAddrPort(l.conn.RemoteAddr().String()); err != nil {
				l.hc.err = fmt.Errorf("client address %q: %w", l.conn.RemoteAddr(), err)
			} else {
				l.hc.uid, l.hc.err = l.tr.PodOf(netip.AddrPortFrom(client.Addr().Unmap(), client.Port()), rc.dst)
			}
		}
	})
	return l.hc
}

// tokenScope binds a hostNetwork caller's IMDSv2 tokens to its pod (metadata.Config.TokenScope): hostNetwork pods
// share the node's address, which alone would let one pod's token serve another. A pod's tokens are bound to its
// own address alone; a host caller not traced to a pod (refused anyway) gets a scope no pod has.
func tokenScope(r *http.Request) string {
	hc, host := hostCallerOf(r.Context())
	switch {
	case !host:
		return ""
	case hc.err != nil:
		return "host/untraced"
	}
	return "pod/" + string(hc.uid)
}

// hostCallerOf is the traced caller of a hostNetwork listener's connection, if ctx is one's.
func hostCallerOf(ctx context.Context) (hostCaller, bool) {
	l, ok := ctx.Value(hostCallerKey{}).(*lazyHostCaller)
	if !ok {
		return hostCaller{}, false
	}
	return l.get(), true
}

// redirectedOf finds the redirectedConn under the listeners' wrappers.
func redirectedOf(c net.Conn) *redirectedConn {
	for {
		switch x := c.(type) {
		case *redirectedConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
}

// trustList is the operator's node-trusted hostNetwork pods, by namespace/ServiceAccount: not intercepted, they
// keep the node's IMDS (the VPC CNI's aws-node manages the node's network interfaces with the node role).
type trustList []string

// ParseNodeTrusted reads --node-trusted: comma-separated namespace/serviceaccount pairs.
func ParseNodeTrusted(s string) ([]string, error) { return parseTrustList(s) }

func parseTrustList(s string) (trustList, error) {
	var out trustList
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		ns, sa, ok := strings.Cut(f, "/")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			return nil, fmt.Errorf("%q: want namespace/serviceaccount", f)
		}
		out = append(out, f)
	}
	return out, nil
}

func (l trustList) trusts(p pods.Pod) bool {
	return slices.Contains(l, p.Namespace+"/"+p.ServiceAccount)
}

// hostInterception is the agent's side of the hostNetwork rules (host-rules writes them, see hostrules.go): it tells
// host-rules which pods are node-trusted and reads back whether the rules are in place.
type hostInterception struct {
	cgroups *hostnet.Cgroups
	dir     string
	trusted trustList
	within  time.Duration // how fresh host-rules' last report must be
	log     *slog.Logger

	mu     sync.Mutex
	exempt map[types.UID]iptables.CgroupRef // by pod, as last written
	wrote  bool
	state  string    // "" = covered, else why not
	first  time.Time // the first reconcile
}

// The host-rules container starts beside the agent's: until it has had the time a report may take, its missing report
// is a wait, not an error to log at every start.
const (
	hostWaiting  = "waiting for the host-rules container's first report"
	hostNoReport = "no report from the host-rules container (is it running?)"
)

// cgroupHierarchy finds the cgroup v2 hierarchy under root: root itself on unified hosts, root/unified on hybrid
// ones (cgroup v1 controllers with the v2 hierarchy beside them).
func cgroupHierarchy(root string) string {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
		if _, err := os.Stat(filepath.Join(root, "unified", "cgroup.controllers")); err == nil {
			return filepath.Join(root, "unified")
		}
	}
	return root
}

// startHostInterception checks that hostNetwork callers can be traced to their pods; it reports why not, if not.
func startHostInterception(cfg Config, log *slog.Logger) (*hostInterception, error) {
	cg, err := hostnet.NewCgroups(cgroupHierarchy(cfg.CgroupRoot), cfg.PodsCgroup)
	if err != nil {
		return nil, fmt.Errorf("no cgroup v2 pods hierarchy: %w", err)
	}
	if _, err := traceSelf(); err != nil {
		return nil, err
	}
	return &hostInterception{cgroups: cg, dir: cfg.HostRulesDir, trusted: cfg.NodeTrusted, log: log,
		within: 3*cfg.ReconcileInterval + 10*time.Second, exempt: map[types.UID]iptables.CgroupRef{},
		state: hostWaiting}, nil
}

// hostListeners are the hostNetwork faces: the metadata addresses on --host-network-port.
func hostListeners(cfg Config) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range cfg.MetadataAddrs {
		out = append(out, netip.AddrPortFrom(a.Addr(), cfg.HostNetworkPort))
	}
	return out
}

// traceSelf traces a loopback connection of its own: the kernel answers "no such socket" alike for a socket that is
// not there and for a missing tcp_diag module, so a node that cannot trace says so now, not at the first caller.
// It returns the caller's own cgroup id.
func traceSelf() (uint64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("tracing a loopback connection: %w", err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, fmt.Errorf("tracing a loopback connection: %w", err)
	}
	defer c.Close()
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	remote, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	id, err := hostnet.SocketCgroup(local, remote)
	if err != nil {
		return 0, fmt.Errorf("sockets cannot be traced to their cgroup (sock_diag, tcp_diag, Linux 5.7+): %w", err)
	}
	return id, nil
}

// sameCgroupNamespace checks that the caller sees the cgroup hierarchy from its root: the kernel places a rule's
// cgroup level relative to the cgroup namespace of whoever writes it (since Linux 6.10, and 6.1/6.6 updates), and
// from a private one (containerd gives unprivileged containers one on cgroup v2 nodes) the pods cgroup, above the
// caller's own, cannot be named: the rules would match nothing. The caller's cgroup as its namespace names it must
// be the cgroup its sockets are in.
func sameCgroupNamespace(hierarchy string, self uint64) error {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(hierarchy, rest), &st); err == nil && st.Ino == self {
				return nil
			}
			return fmt.Errorf("running in a cgroup namespace of its own (it sees its cgroup as %q), from which the kernel cannot place rules on the pods cgroup: the host-rules container must be privileged (which gives it the node's cgroup namespace)", rest)
		}
	}
	return errors.New("no cgroup v2 membership in /proc/self/cgroup")
}

// reconcile writes the cgroups of the live node-trusted hostNetwork pods for host-rules, when they change, and reads
// back how its last pass went. Before the informers have synced (synced false) it only reads: an empty list then
// would take the exemptions of the trusted pods away until they had. A trusted pod whose cgroup the kubelet has not created yet is retried on the next pass.
func (h *hostInterception) reconcile(hostPods []pods.Pod, synced bool, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	want := map[types.UID]iptables.CgroupRef{}
	for _, p := range hostPods {
		if !h.trusted.trusts(p) {
			continue
		}
		ref, ok := h.exempt[p.UID]
		if !ok {
			level, id, err := h.cgroups.PodCgroup(string(p.UID))
			if err != nil {
				h.log.Debug("node-trusted pod has no cgroup yet", "namespace", p.Namespace, "pod", p.Name, "error", err.Error())
				continue
			}
			ref = iptables.CgroupRef{Level: level, ID: id}
		}
		want[p.UID] = ref
	}
	if synced && (!h.wrote || !maps.Equal(want, h.exempt)) {
		if err := writeExemptions(h.dir, want); err != nil {
			h.log.Error("telling host-rules the node-trusted pods", "error", err.Error())
		} else {
			h.exempt, h.wrote = want, true
		}
	}
	if h.first.IsZero() {
		h.first = now
	}
	state := readHostStatus(h.dir, h.within, now)
	if state == hostNoReport && h.state == hostWaiting && now.Sub(h.first) < h.within {
		state = hostWaiting
	}
	if state != h.state {
		if state == "" {
			h.log.Info("hostNetwork pods intercepted by cgroup")
		} else {
			h.log.Error("hostNetwork pods are NOT covered: they may reach the node's IMDS", "reason", state)
		}
		h.state = state
	}
}

// hostCovered is the hostNetwork state when their rules are in place.
const hostCovered = "covered"

// status is hostCovered, or why not.
func (h *hostInterception) status() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == "" {
		return hostCovered
	}
	return "not covered: " + h.state
}

// run reconciles every interval and whenever hostNetwork pods change; call it once the informers have synced.
func (h *hostInterception) run(ctx context.Context, every time.Duration, index *pods.Index, changed <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		h.reconcile(index.LiveHost(), true, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
		}
	}
}
