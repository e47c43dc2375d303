package iptables

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// CgroupRef names a cgroup v2 directory as the kernel compares it: its depth below the hierarchy's root
// (kubepods.slice is level 1) and its id (the directory's inode number).
//
// The kernel reads the level when a rule is written, counting from the root of the writer's cgroup namespace (Linux
// 6.1.y and later; older kernels count from the real root). Both agree only in the node's own cgroup namespace, so
// HostRules must be driven from a thread in it; from a container's private one, a level names another ancestor and
// nothing matches, while the rules list unchanged.
type CgroupRef struct {
	Level uint32
	ID    uint64
}

func (r CgroupRef) String() string { return fmt.Sprintf("level %d id %d", r.Level, r.ID) }

// HostConfig says what to intercept for processes of the node's own network namespace.
type HostConfig struct {
	Pods                   CgroupRef      // the kubelet's pods cgroup: sockets below it are intercepted
	MetadataV4, MetadataV6 netip.AddrPort // DNAT targets; a zero one leaves that family guarded only (refused)
}

func (c HostConfig) validate() error {
	// Level 0 is the root, the ancestor of every socket: the node itself would be intercepted.
	if c.Pods.Level == 0 || c.Pods.ID == 0 {
		return fmt.Errorf("pods cgroup %v: want a cgroup below the root", c.Pods)
	}
	for _, t := range []struct {
		name string
		ap   netip.AddrPort
		v6   bool
	}{{"metadata ipv4", c.MetadataV4, false}, {"metadata ipv6", c.MetadataV6, true}} {
		switch a := t.ap.Addr(); {
		case !t.ap.IsValid():
		case t.ap.Port() == 0:
			return fmt.Errorf("%s target %s: port 0", t.name, t.ap)
		case a.Zone() != "":
			return fmt.Errorf("%s target %s: zoned addresses cannot be DNAT targets", t.name, t.ap)
		case t.v6 && (!a.Is6() || a.Is4In6()), !t.v6 && !a.Is4():
			return fmt.Errorf("%s target %s: wrong address family", t.name, t.ap)
		}
	}
	return nil
}

// exemptions validates exempt and returns it sorted and without duplicates, so that the order a caller happens to
// list them in never counts as a change to the rules.
func (c HostConfig) exemptions(exempt []CgroupRef) ([]CgroupRef, error) {
	var errs []error
	for _, e := range exempt {
		// An exemption at or above the pods cgroup would take every pod, or the whole node, out of interception.
		if e.Level <= c.Pods.Level || e.ID == 0 {
			errs = append(errs, fmt.Errorf("exemption %v: not below the pods cgroup (%v)", e, c.Pods))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := slices.Clone(exempt)
	slices.SortFunc(out, func(a, b CgroupRef) int {
		return cmp.Or(cmp.Compare(a.Level, b.Level), cmp.Compare(a.ID, b.ID))
	})
	return slices.Compact(out), nil
}
