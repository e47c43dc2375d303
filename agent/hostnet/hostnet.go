// Package hostnet identifies the pod behind a connection from a hostNetwork pod, which shares the node's address:
// the client socket's cgroup (SocketCgroup) names a directory of the cgroup v2 hierarchy, and the kubelet names
// pod cgroups after the pod's UID (Cgroups).
package hostnet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// ErrNoSocket is SocketCgroup's answer when the caller's network namespace has no TCP socket with those addresses,
// as for a client in a network namespace of its own.
var ErrNoSocket = errors.New("no such TCP socket in this network namespace")

// Cgroups resolves cgroup ids to pod UIDs below the kubelet's pods cgroup. It is safe for concurrent use.
type Cgroups struct {
	root   string // where the cgroup v2 hierarchy is mounted
	pods   string // the pods cgroup, slash-separated and relative to root
	level  uint32
	id     uint64
	layout layout

	scanMu sync.Mutex // one scan at a time, so that callers who missed together share one

	mu      sync.RWMutex
	known   map[uint64]string // every cgroup id at or below a pod cgroup, as of the last scan, to the pod's UID
	started uint64            // scans started
	built   uint64            // which of them built known: one started after a miss answers that miss
}

// NewCgroups: root is where the cgroup v2 hierarchy is mounted as the agent sees it (e.g. /sys/fs/cgroup, or a
// hostPath mount of it); pods is the pods cgroup relative to root ("" = detect: "kubepods.slice", else "kubepods").
// It fails clearly when root is not a cgroup v2 hierarchy (no cgroup.controllers file) or pods is missing.
func NewCgroups(root, pods string) (*Cgroups, error) {
	if err := checkHierarchyRoot(root); err != nil {
		return nil, err
	}
	return newCgroups(root, pods)
}

// checkHierarchyRoot makes sure levels counted from root are the kernel's: root must be the top of a cgroup v2
// hierarchy, not a cgroup below it (which is what a cgroup namespace shows at /sys/fs/cgroup).
func checkHierarchyRoot(root string) error {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
		return fmt.Errorf("%s is not a cgroup v2 hierarchy (cgroup v1 only, or the wrong path?): %w", root, err)
	}
	// The kernel leaves cgroup.events off the root cgroup only.
	switch _, err := os.Stat(filepath.Join(root, "cgroup.events")); {
	case err == nil:
		return fmt.Errorf("%s is a cgroup below the root of its hierarchy (a cgroup namespace's view?): mount the host's cgroup v2 root", root)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("checking that %s is the root of its cgroup hierarchy: %w", root, err)
	}
	return nil
}

// newCgroups is NewCgroups without the check that root is a cgroup v2 hierarchy, for trees that only look like one.
func newCgroups(root, pods string) (*Cgroups, error) {
	if pods == "" {
		for _, p := range []string{"kubepods.slice", "kubepods"} {
			if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.IsDir() {
				pods = p
				break
			}
		}
		if pods == "" {
			return nil, fmt.Errorf("no pods cgroup (kubepods.slice or kubepods) in %s: is the kubelet running, with another --cgroup-root?", root)
		}
	}
	pods = path.Clean(filepath.ToSlash(pods))
	if !filepath.IsLocal(pods) || pods == "." {
		return nil, fmt.Errorf("pods cgroup %q must be a path below the hierarchy's root", pods)
	}
	fi, err := os.Stat(filepath.Join(root, pods))
	if err != nil {
		return nil, fmt.Errorf("pods cgroup: %w", err)
	}
	id, err := inode(fi)
	if err != nil {
		return nil, err
	}
	return &Cgroups{
		root:   root,
		pods:   pods,
		level:  uint32(strings.Count(pods, "/") + 1),
		id:     id,
		layout: layoutOf(path.Base(pods)),
	}, nil
}

// Pods returns the pods cgroup: its path relative to root, its depth (kubepods.slice = 1) and its id.
func (c *Cgroups) Pods() (rel string, level uint32, id uint64) {
	return c.pods, c.level, c.id
}

// PodUID returns the UID of the pod whose cgroup contains the cgroup with this id (the id may be the pod's own
// cgroup or any descendant such as a container's scope); ok is false when the id is not below the pods cgroup or
// names no pod. Answers come from the last scan of the pods cgroup when it knew the id (cgroup ids are never
// reused), and from a new scan otherwise, since a new pod's cgroup may appear at any time.
func (c *Cgroups) PodUID(id uint64) (uid string, ok bool, err error) {
	c.mu.RLock()
	uid, ok = c.known[id]
	missed := c.started
	c.mu.RUnlock()
	if ok {
		return uid, true, nil
	}

	c.scanMu.Lock()
	defer c.scanMu.Unlock()
	c.mu.Lock()
	uid, ok = c.known[id]
	answered := c.built > missed // a scan that began after the miss finished while we waited
	if !ok && !answered {
		c.started++
	}
	gen := c.started
	c.mu.Unlock()
	if ok || answered {
		return uid, ok, nil
	}

	known, err := c.scan()
	if err != nil {
		return "", false, err
	}
	// Replacing rather than merging drops the cgroups of pods that have gone, so the map follows the node's pods.
	c.mu.Lock()
	c.known, c.built = known, gen
	c.mu.Unlock()
	uid, ok = known[id]
	return uid, ok, nil
}

// PodCgroup finds the pod-level cgroup of the pod with this UID: its level and id, for exempting it from
// interception. An error that wraps fs.ErrNotExist means the pod has no cgroup on this node (yet, or any more).
func (c *Cgroups) PodCgroup(uid string) (level uint32, id uint64, err error) {
	if _, ok := parseUID(uid, '-'); !ok {
		return 0, 0, fmt.Errorf("pod cgroup: %q is not a pod UID", uid)
	}
	var found []string
	err = c.eachPod(func(dir string, lvl uint32, podUID string) error {
		if podUID == uid {
			found = append(found, dir)
			level = lvl
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	switch len(found) {
	case 0:
		return 0, 0, fmt.Errorf("no cgroup for pod %s below %s: %w", uid, c.pods, fs.ErrNotExist)
	case 1:
	default:
		return 0, 0, fmt.Errorf("pod %s has more than one cgroup below %s: %s", uid, c.pods, strings.Join(found, ", "))
	}
	fi, err := os.Stat(found[0])
	if err != nil {
		return 0, 0, fmt.Errorf("cgroup of pod %s: %w", uid, err)
	}
	id, err = inode(fi)
	if err != nil {
		return 0, 0, err
	}
	return level, id, nil
}

// scan maps the id of every cgroup at or below a pod cgroup to the pod's UID.
func (c *Cgroups) scan() (map[uint64]string, error) {
	known := make(map[uint64]string)
	err := c.eachPod(func(dir string, _ uint32, uid string) error {
		return walkTree(dir, func(id uint64) { known[id] = uid })
	})
	if err != nil {
		return nil, err
	}
	return known, nil
}

// eachPod calls fn with each pod cgroup where the kubelet puts them, and only there: directly below the pods
// cgroup (guaranteed pods) or directly below one of its QoS children. A pod-like name anywhere else, say one a
// container made below its own cgroup, is no pod.
func (c *Cgroups) eachPod(fn func(dir string, level uint32, uid string) error) error {
	return c.eachPodDir(c.layout.pod, fn)
}

// APIPods returns the pod-level cgroups of API pods (UUID-named), id to level: what an exemption may name.
func (c *Cgroups) APIPods() (map[uint64]uint32, error) {
	out := map[uint64]uint32{}
	err := c.eachPodID(c.layout.pod, func(level uint32, id uint64) { out[id] = level })
	return out, err
}

// StaticPods returns the pod cgroups of static pods (level and id each), which the kubelet runs from files on the
// node: whoever can write those is the node, so their pods are trusted as the node is.
func (c *Cgroups) StaticPods() (levels []uint32, ids []uint64, err error) {
	static := func(name, qos string) (string, bool) { return "", c.layout.staticPod(name, qos) }
	err = c.eachPodID(static, func(level uint32, id uint64) { levels, ids = append(levels, level), append(ids, id) })
	return levels, ids, err
}

// eachPodID calls fn with the level and id of each pod cgroup match names; one that vanishes meanwhile is skipped.
func (c *Cgroups) eachPodID(match func(name, qos string) (string, bool), fn func(level uint32, id uint64)) error {
	return c.eachPodDir(match, func(dir string, level uint32, _ string) error {
		fi, err := os.Stat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("pod cgroup: %w", err)
		}
		id, err := inode(fi)
		if err != nil {
			return err
		}
		fn(level, id)
		return nil
	})
}

// eachPodDir calls fn with each cgroup match names, at the kubelet's pod positions.
func (c *Cgroups) eachPodDir(match func(name, qos string) (string, bool), fn func(dir string, level uint32, uid string) error) error {
	top := filepath.Join(c.root, c.pods)
	children, err := os.ReadDir(top)
	if err != nil {
		return fmt.Errorf("reading the pods cgroup: %w", err)
	}
	for _, child := range children {
		if !child.IsDir() {
			continue
		}
		if uid, ok := match(child.Name(), ""); ok {
			if err := fn(filepath.Join(top, child.Name()), c.level+1, uid); err != nil {
				return err
			}
			continue
		}
		qos, ok := c.layout.qos(child.Name())
		if !ok {
			continue
		}
		dir := filepath.Join(top, child.Name())
		pods, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading QoS cgroup: %w", err)
		}
		for _, p := range pods {
			if !p.IsDir() {
				continue
			}
			if uid, ok := match(p.Name(), qos); ok {
				if err := fn(filepath.Join(dir, p.Name()), c.level+2, uid); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// walkTree calls fn with the id of dir and of every cgroup below it. Cgroups that vanish during the walk (a pod
// or container going away) are skipped, not errors.
func walkTree(dir string, fn func(id uint64)) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading cgroup: %w", err)
	}
	id, err := inode(fi)
	if err != nil {
		return err
	}
	fn(id)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading cgroup: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := walkTree(filepath.Join(dir, e.Name()), fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// inode is a cgroup's id: on cgroup v2 a directory's inode number is the kernel's 64-bit cgroup id (64-bit
// kernels since Linux 5.5).
func inode(fi fs.FileInfo) (uint64, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("no inode number for %s", fi.Name())
	}
	return uint64(st.Ino), nil
}

// layout is how the kubelet names the cgroups below the pods cgroup, which follows from its cgroup driver.
type layout struct {
	// slice is the pods slice's name without ".slice" ("kubepods") for the systemd driver, where each name
	// below repeats its parent's; empty for the cgroupfs driver.
	slice string
}

func layoutOf(podsName string) layout {
	if s, ok := strings.CutSuffix(podsName, ".slice"); ok {
		return layout{slice: s}
	}
	return layout{}
}

// qos returns the QoS class a child of the pods cgroup is for. Guaranteed pods have no QoS cgroup.
func (l layout) qos(name string) (string, bool) {
	for _, q := range []string{"besteffort", "burstable"} {
		want := q
		if l.slice != "" {
			want = l.slice + "-" + q + ".slice"
		}
		if name == want {
			return q, true
		}
	}
	return "", false
}

// pod returns the UID of the pod a cgroup named name is for, when it sits below the QoS cgroup for qos ("" for
// directly below the pods cgroup): pod<uid> (cgroupfs), or kubepods[-<qos>]-pod<uid with _ for ->.slice (systemd).
func (l layout) pod(name, qos string) (string, bool) {
	raw, sep, ok := l.podPart(name, qos)
	if !ok {
		return "", false
	}
	return parseUID(raw, sep)
}

// staticPod reports whether a cgroup named name, below the QoS cgroup for qos, is a static pod's: the kubelet
// names those after a hash of their manifest (32 hex digits), which no API pod's UID can be.
func (l layout) staticPod(name, qos string) bool {
	raw, _, ok := l.podPart(name, qos)
	if !ok || len(raw) != 32 {
		return false
	}
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// podPart is what stands for the pod in a pod cgroup's name, and the separator the driver puts in a UID.
func (l layout) podPart(name, qos string) (string, byte, bool) {
	if l.slice == "" {
		raw, ok := strings.CutPrefix(name, "pod")
		return raw, '-', ok
	}
	prefix := l.slice + "-"
	if qos != "" {
		prefix += qos + "-"
	}
	raw, ok := strings.CutPrefix(name, prefix+"pod")
	if !ok {
		return "", 0, false
	}
	raw, ok = strings.CutSuffix(raw, ".slice")
	return raw, '_', ok
}

// parseUID accepts a pod UID in the form the API server makes them, a lowercase canonical UUID, with sep between
// its groups, and returns it with dashes. Anything else, static pods' hash UIDs included, is not a pod's UID.
func parseUID(s string, sep byte) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	b := []byte(s)
	for i, ch := range b {
		switch i {
		case 8, 13, 18, 23:
			if ch != sep {
				return "", false
			}
			b[i] = '-'
		default:
			if (ch < '0' || ch > '9') && (ch < 'a' || ch > 'f') {
				return "", false
			}
		}
	}
	return string(b), true
}
