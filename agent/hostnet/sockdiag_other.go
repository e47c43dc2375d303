//go:build !linux

package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
)

// SocketCgroup needs Linux's sock_diag; elsewhere no socket can be traced to a cgroup.
func SocketCgroup(local, remote netip.AddrPort) (uint64, error) {
	return 0, fmt.Errorf("socket cgroup: only on Linux: %w", errors.ErrUnsupported)
}
