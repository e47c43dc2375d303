//go:build !linux

package iptables

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDestination needs Linux conntrack; elsewhere every connection counts as not redirected.
func OriginalDestination(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("original destination: only on Linux")
}
