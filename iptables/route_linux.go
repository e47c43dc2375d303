package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// netlinkRoutes is routeTable for one address family, over rtnetlink.
type netlinkRoutes struct{ family uint8 }

func newRouteTable(v6 bool) routeTable {
	if v6 {
		return netlinkRoutes{family: unix.AF_INET6}
	}
	return netlinkRoutes{family: unix.AF_INET}
}

// fibRuleHdrLen is the size of struct fib_rule_hdr: family, dst_len, src_len, tos, table, two reserved bytes,
// action, then 32 bits of flags.
const fibRuleHdrLen = 12

func (n netlinkRoutes) do(typ netlink.HeaderType, flags netlink.HeaderFlags, data []byte) ([]netlink.Message, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink: %w", err)
	}
	defer c.Close()
	return c.Execute(netlink.Message{Header: netlink.Header{Type: typ, Flags: netlink.Request | flags}, Data: data})
}

func (n netlinkRoutes) List() ([]routeRule, error) {
	hdr := make([]byte, fibRuleHdrLen)
	hdr[0] = n.family
	msgs, err := n.do(unix.RTM_GETRULE, netlink.Dump, hdr)
	if err != nil {
		return nil, err
	}
	var out []routeRule
	for _, m := range msgs {
		if r, ok := parseRouteRule(m.Data); ok {
			out = append(out, r)
		}
	}
	return out, nil
}

func (n netlinkRoutes) Add(r routeRule) error {
	data, err := n.encode(r)
	if err == nil {
		_, err = n.do(unix.RTM_NEWRULE, netlink.Acknowledge|netlink.Create|netlink.Excl, data)
	}
	if errors.Is(err, unix.EEXIST) {
		// The kernel holds this rule, with the guard's protocol tag, though List did not read it as the guard's (a
		// kernel dumping an attribute parseRouteRule does not know): it is in place, and each pass says so again.
		return nil
	}
	return err
}

func (n netlinkRoutes) Del(r routeRule) error {
	data, err := n.encode(r)
	if err == nil {
		_, err = n.do(unix.RTM_DELRULE, netlink.Acknowledge, data)
	}
	if errors.Is(err, unix.ENOENT) {
		return nil // gone already
	}
	return err
}

func (n netlinkRoutes) encode(r routeRule) ([]byte, error) {
	if r.dst.Addr().Is4() != (n.family == unix.AF_INET) {
		return nil, fmt.Errorf("routing rule %s in the wrong family", r)
	}
	hdr := make([]byte, fibRuleHdrLen)
	hdr[0], hdr[1], hdr[7] = n.family, byte(r.dst.Bits()), r.action
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(unix.FRA_PROTOCOL, routeProtocol)
	ae.Uint32(unix.FRA_PRIORITY, r.pref)
	ae.Bytes(unix.FRA_DST, r.dst.Addr().AsSlice())
	if r.iif != "" {
		ae.String(unix.FRA_IIFNAME, r.iif)
	}
	if r.action == actGoto {
		ae.Uint32(unix.FRA_GOTO, r.target)
	}
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return append(hdr, attrs...), nil
}

// parseRouteRule reads one rule of a dump. It reports false for a rule that is not the guard's (no guard protocol
// tag) or not of a shape the guard writes (a source, a mark, an output interface, a table, an inverted match,
// another action), and for a goto whose target is missing, which the kernel skips: repair puts it back in force.
func parseRouteRule(b []byte) (routeRule, bool) {
	if len(b) < fibRuleHdrLen {
		return routeRule{}, false
	}
	family, dstLen, srcLen, tos, table, action := b[0], b[1], b[2], b[3], b[4], b[7]
	flags := binary.NativeEndian.Uint32(b[8:12])
	if srcLen != 0 || tos != 0 || table != 0 || flags&(unix.FIB_RULE_INVERT|unix.FIB_RULE_UNRESOLVED) != 0 ||
		(action != actGoto && action != actNop && action != actProhibit) {
		return routeRule{}, false
	}
	r := routeRule{action: action}
	var dst []byte
	proto := uint8(0)
	ad, err := netlink.NewAttributeDecoder(b[fibRuleHdrLen:])
	if err != nil {
		return routeRule{}, false
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.FRA_PRIORITY:
			r.pref = ad.Uint32()
		case unix.FRA_DST:
			dst = ad.Bytes()
		case unix.FRA_IIFNAME:
			r.iif = ad.String()
		case unix.FRA_GOTO:
			r.target = ad.Uint32()
		case unix.FRA_PROTOCOL:
			proto = ad.Uint8()
		case unix.FRA_TABLE, unix.FRA_SUPPRESS_PREFIXLEN, unix.FRA_SUPPRESS_IFGROUP:
			// Said of every rule (its table, defaults): not selectors.
			if ad.Type() == unix.FRA_TABLE && ad.Uint32() != 0 {
				return routeRule{}, false
			}
		default:
			return routeRule{}, false // a selector the guard never sets
		}
	}
	addr, ok := netip.AddrFromSlice(dst)
	if ad.Err() != nil || !ok || (family == unix.AF_INET) != addr.Is4() || proto != routeProtocol {
		return routeRule{}, false
	}
	r.dst = netip.PrefixFrom(addr, int(dstLen))
	return r, true
}

// routingUnsupported tells whether err says the kernel has no policy routing for a family (an IPv6 built without
// CONFIG_IPV6_MULTIPLE_TABLES).
func routingUnsupported(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP)
}
