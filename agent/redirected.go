package agent

import (
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iamlet/iamlet/iptables"
)

// redirectedOnly is a listener that admits only connections the interception rules redirected to it: their
// original destination (before DNAT) is one of the metadata faces' addresses on port 80. The listener's own
// address is reachable from any pod in the cluster and from the node itself; a connection made to it directly
// identifies nobody, so it is closed before any work is done for it.
type redirectedOnly struct {
	net.Listener
	faces   map[netip.Addr]bool
	refused prometheus.Counter
}

func onlyRedirected(l net.Listener, faces []netip.Addr, refused prometheus.Counter) net.Listener {
	set := make(map[netip.Addr]bool, len(faces))
	for _, a := range faces {
		set[a] = true
	}
	return &redirectedOnly{Listener: l, faces: set, refused: refused}
}

func (l *redirectedOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc, ok := c.(*net.TCPConn); ok {
			if dst, err := iptables.OriginalDestination(tc); err == nil && dst.Port() == 80 && l.faces[dst.Addr()] {
				return &redirectedConn{Conn: c, dst: dst}, nil
			}
		}
		l.refused.Inc()
		_ = c.Close()
	}
}

// redirectedConn is a connection the rules redirected, with the destination its client asked for.
type redirectedConn struct {
	net.Conn
	dst netip.AddrPort
}
