package iptables

import (
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func TestRouteRuleRoundTrip(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		table := newRouteTable(v6).(netlinkRoutes)
		for _, r := range routeGuardRules(imdsOf(v6)) {
			b, err := table.encode(r)
			if err != nil {
				t.Fatal(err)
			}
			// What the kernel adds to every rule it dumps: the table, the defaults.
			ae := netlink.NewAttributeEncoder()
			ae.Uint32(unix.FRA_TABLE, 0)
			ae.Uint32(unix.FRA_SUPPRESS_PREFIXLEN, 0xffffffff)
			more, _ := ae.Encode()
			if got, ok := parseRouteRule(append(b, more...)); !ok || got != r {
				t.Errorf("parse(encode(%s)) = %s, %v", r, got, ok)
			}
		}
	}
	r := routeGuardRules(IMDSv4)[2]
	b, _ := newRouteTable(false).(netlinkRoutes).encode(r)
	for name, mutate := range map[string]func([]byte) []byte{
		"a source":        func(b []byte) []byte { b[2] = 8; return b },
		"a table":         func(b []byte) []byte { b[4] = 254; return b },
		"inverted":        func(b []byte) []byte { binary.NativeEndian.PutUint32(b[8:12], unix.FIB_RULE_INVERT); return b },
		"another action":  func(b []byte) []byte { b[7] = 1; return b },
		"a firewall mark": func(b []byte) []byte { return append(b, 8, 0, unix.FRA_FWMARK, 0, 1, 0, 0, 0) },
		"truncated":       func(b []byte) []byte { return b[:5] },
		// The protocol attribute comes first (encode): its value is the byte after its 4-byte header.
		"another program's": func(b []byte) []byte { b[fibRuleHdrLen+4] = 4; return b },
	} {
		if got, ok := parseRouteRule(mutate(append([]byte(nil), b...))); ok {
			t.Errorf("%s: parsed as the guard's %s", name, got)
		}
	}
	// A goto whose target is gone is kept by the kernel but skipped: not in force, so not counted.
	g, _ := newRouteTable(false).(netlinkRoutes).encode(routeGuardRules(IMDSv4)[1])
	binary.NativeEndian.PutUint32(g[8:12], unix.FIB_RULE_UNRESOLVED)
	if got, ok := parseRouteRule(g); ok {
		t.Errorf("an unresolved goto parsed as the guard's %s", got)
	}
	if _, err := newRouteTable(true).(netlinkRoutes).encode(r); err == nil {
		t.Error("an IPv4 rule encoded for the IPv6 table")
	}
}
