package iptables

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// The routing guard is a third guard, outside netfilter: policy routing rules that refuse, at the routing decision, a
// packet for the IMDS that came from anywhere but the node itself. DNAT in PREROUTING has already rewritten every
// packet the redirect took, so only what nothing redirected meets them. No iptables or nft command reaches them: a
// wholesale flush of both (`nft flush ruleset`) leaves pods refused, not answered by the node's IMDS.
//
// Three rules per family, tagged with protocol routeProtocol (`ip rule` prints "proto 105") so that only they are
// ever read or deleted as the guard's, and placed before the CNIs' rules that route pod traffic (the AWS VPC CNI's
// from 10 for security groups for pods and 512 otherwise, Cilium's from 20):
//
//	5: from the node itself (iif lo) to the IMDS: goto 7, so its traffic is routed as if the guard were not there
//	6: to the IMDS: prohibit
//	7: to the IMDS: nop, the target of 5
//
// Installed in the order 7, 5, 6, so the node's own traffic is never refused on the way; removed the other way.
// Deleting 5 or 7 alone (7 leaves 5 unresolved, which the kernel skips) sends the node's own traffic to 6 until the
// next pass. Rules at prefs before 5 come first: the AWS VPC CNI's pref 1 rules for pods with interfaces on
// several network cards route those pods' packets before the guard sees them.
const routeGuardPref = 5

// routeProtocol marks the guard's rules as iamlet's (FRA_PROTOCOL; no routing daemon registers 105).
const routeProtocol = 105

// The rule actions the guard uses, as linux/fib_rules.h numbers them.
const (
	actGoto     = 2
	actNop      = 3
	actProhibit = 8
)

// routeRule is one policy routing rule in the few shapes the guard uses.
type routeRule struct {
	pref   uint32
	dst    netip.Prefix
	iif    string // "" matches every input interface
	action uint8  // act*
	target uint32 // the goto's target pref
}

func (r routeRule) String() string {
	s := fmt.Sprintf("pref %d to %s", r.pref, r.dst)
	if r.iif != "" {
		s += " iif " + r.iif
	}
	switch r.action {
	case actGoto:
		return fmt.Sprintf("%s goto %d", s, r.target)
	case actNop:
		return s + " nop"
	case actProhibit:
		return s + " prohibit"
	}
	return fmt.Sprintf("%s action %d", s, r.action)
}

// routeGuardRules are the guard's rules for the IMDS address imds, in the order they are installed.
func routeGuardRules(imds netip.Addr) []routeRule {
	dst := netip.PrefixFrom(imds, imds.BitLen())
	return []routeRule{
		{pref: routeGuardPref + 2, dst: dst, action: actNop},
		{pref: routeGuardPref, dst: dst, iif: "lo", action: actGoto, target: routeGuardPref + 2},
		{pref: routeGuardPref + 1, dst: dst, action: actProhibit},
	}
}

// routeTable reads and writes one family's policy routing rules: netlink on Linux, a fake in tests.
type routeTable interface {
	// List returns the family's rules that have one of the guard's shapes (others are left out).
	List() ([]routeRule, error)
	Add(routeRule) error
	Del(routeRule) error
}

// routeGuard is one family's routing guard.
type routeGuard struct {
	table routeTable
	want  []routeRule
}

// missing returns the guard's rules absent from the table, in the order they are to be added.
func (g *routeGuard) missing() ([]routeRule, error) {
	have, err := g.table.List()
	if err != nil {
		return nil, fmt.Errorf("list routing rules: %w", err)
	}
	var out []routeRule
	for _, r := range g.want {
		if !slices.Contains(have, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// repair puts r in place: deleted first, in case a rule of the guard's that List does not count as such is there
// (a goto whose target went missing, which the kernel keeps but skips), then added.
func (g *routeGuard) repair(r routeRule) error {
	if err := g.table.Del(r); err != nil {
		return fmt.Errorf("delete routing rule %s: %w", r, err)
	}
	return g.table.Add(r)
}

// remove deletes every rule of the guard's, the refusal first; one already gone is no error.
func (g *routeGuard) remove() error {
	for _, r := range slices.Backward(g.want) {
		if err := g.table.Del(r); err != nil {
			return fmt.Errorf("delete routing rule %s: %w", r, err)
		}
	}
	return nil
}

// newRouteGuard is a family's routing guard; nil where there is none: no rtnetlink, or (with an error saying so) a
// kernel without policy routing for the family.
func newRouteGuard(v6 bool) (*routeGuard, error) {
	t := newRouteTable(v6)
	if t == nil {
		return nil, nil
	}
	if _, err := t.List(); routingUnsupported(err) {
		return nil, err
	}
	return &routeGuard{table: t, want: routeGuardRules(imdsOf(v6))}, nil
}

// RemoveRoutingGuard removes the routing guard's rules of both families without iptables: uninstall calls it where
// iptables cannot be opened, since the rules would otherwise stay and refuse pods the node's IMDS for good.
func RemoveRoutingGuard() error {
	var errs []error
	for _, v6 := range []bool{false, true} {
		if v6 && !kernelHasIPv6() {
			continue
		}
		if g, _ := newRouteGuard(v6); g != nil {
			errs = append(errs, g.remove())
		}
	}
	return errors.Join(errs...)
}
