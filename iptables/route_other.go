//go:build !linux

package iptables

// newRouteTable is nil where there is no rtnetlink: no routing guard.
func newRouteTable(bool) routeTable { return nil }

// routingUnsupported is never asked where there is no routing table.
func routingUnsupported(error) bool { return false }
