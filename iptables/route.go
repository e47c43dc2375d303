package iptables

import (
	"fmt"
	"net/netip"
	"slices"
)

// The routing guard is a third guard, outside netfilter: policy routing rules that refuse, at the routing decision, a
// packet for the IMDS that came from anywhere but the node itself. DNAT in PREROUTING has already rewritten every
// packet the redirect took, so only what nothing redirected meets them. No iptables or nft command reaches them: a
// wholesale flush of both (`nft flush ruleset`) leaves pods refused, not answered by the node's IMDS.
//
// Three rules per family, before any CNI's (the AWS VPC CNI's start at 512, Cilium's per-endpoint ones at 20):
//
//	16: from the node itself (iif lo) to the IMDS: goto 18, so its traffic is routed as if the guard were not there
//	17: to the IMDS: prohibit
//	18: to the IMDS: nop, the target of 16
//
// Installed in the order 18, 16, 17, so the node's own traffic is never refused on the way; removed the other way.
const routeGuardPref = 16

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

// remove deletes the guard's rules that are there, the refusal first.
func (g *routeGuard) remove() error {
	have, err := g.table.List()
	if err != nil {
		return fmt.Errorf("list routing rules: %w", err)
	}
	for _, r := range slices.Backward(g.want) {
		if !slices.Contains(have, r) {
			continue
		}
		if err := g.table.Del(r); err != nil {
			return fmt.Errorf("delete routing rule %s: %w", r, err)
		}
	}
	return nil
}
