package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// From linux/inet_diag.h and net/tcp_states.h; x/sys/unix has the netlink constants but not these.
const (
	sizeofInetDiagReqV2 = 56 // family, protocol, ext, pad, states, then the socket id
	sizeofInetDiagMsg   = 72 // family, state, timer, retrans, the socket id, then five u32s
	inetDiagCgroupID    = 21 // INET_DIAG_CGROUP_ID, Linux 5.7
	nlaTypeMask         = 0x3fff

	tcpEstablished = 1
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpTimeWait    = 6
	tcpCloseWait   = 8
	tcpListen      = 10
	tcpNewSynRecv  = 12
)

// SocketCgroup returns the cgroup v2 id of the TCP socket in the caller's network namespace whose local address is
// local and whose remote address is remote (for a DNATed connection: the client's address and the original
// destination, e.g. 169.254.169.254:80, as the client's socket sees it). Exactly one socket must match. The id is
// that of the cgroup the socket was created in. ErrNoSocket means no socket matches; a kernel without tcp_diag
// gives the same answer, so a caller that relies on it should trace one known connection at start.
func SocketCgroup(local, remote netip.AddrPort) (uint64, error) {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if !local.IsValid() || !remote.IsValid() || local.Addr().Is4() != remote.Addr().Is4() {
		return 0, fmt.Errorf("socket cgroup: no TCP socket can go from %s to %s", local, remote)
	}
	reply, err := askSockDiag(diagRequest(local, remote))
	if err != nil {
		return 0, fmt.Errorf("socket cgroup of %s -> %s: %w", local, remote, err)
	}
	sk, err := parseDiagReply(reply)
	if err != nil {
		return 0, fmt.Errorf("socket cgroup of %s -> %s: %w", local, remote, err)
	}
	id, err := sk.cgroupOf(local, remote)
	if err != nil {
		return 0, fmt.Errorf("socket cgroup of %s -> %s: %w", local, remote, err)
	}
	return id, nil
}

// cgroupOf returns the socket's cgroup id if it is the full socket from local to remote that was asked for.
func (sk diagSocket) cgroupOf(local, remote netip.AddrPort) (uint64, error) {
	// Failing an exact match, the kernel answers with a listener on the local port (inet_lookup's fallback), so
	// another socket means there is no such socket.
	if sk.local != local || sk.remote != remote || sk.state == tcpListen {
		return 0, fmt.Errorf("the kernel offered another socket, %s -> %s in state %d: %w", sk.local, sk.remote, sk.state, ErrNoSocket)
	}
	if !sk.hasCgroup {
		if sk.state == tcpTimeWait || sk.state == tcpNewSynRecv {
			return 0, fmt.Errorf("the socket is closed or not yet accepted (state %d), so it has no cgroup", sk.state)
		}
		return 0, errors.New("the kernel reports no cgroup id for the socket (needs Linux 5.7 or later)")
	}
	// The caller's socket is connected to the agent, which has not closed its side. One whose peer has closed
	// (CLOSE_WAIT and after) is a leftover that NAT may have lent its port to another connection: not the caller.
	switch sk.state {
	case tcpEstablished, tcpFinWait1, tcpFinWait2:
		return sk.cgroup, nil
	}
	return 0, fmt.Errorf("the socket %s -> %s is in state %d, which no live caller's is in: %w", sk.local, sk.remote, sk.state, ErrNoSocket)
}

// askSockDiag sends one request on a new NETLINK_SOCK_DIAG socket and returns the answer. The kernel answers
// while handling the send; the receive timeout only bounds one that does not.
func askSockDiag(req []byte) ([]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening a sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		return nil, fmt.Errorf("sock_diag receive timeout: %w", err)
	}
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for {
		err = unix.Sendto(fd, req, 0, kernel)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	buf := make([]byte, 4096) // one socket's base attributes: a few hundred bytes
	for {
		n, _, flags, from, err := unix.Recvmsg(fd, buf, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sock_diag answer: %w", err)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // only the kernel answers; anything else is not ours
		}
		if flags&unix.MSG_TRUNC != 0 {
			return nil, errors.New("sock_diag answer truncated")
		}
		return buf[:n], nil
	}
}

// diagRequest is an inet_diag_req_v2 for the one TCP socket from local to remote, in a netlink message.
func diagRequest(local, remote netip.AddrPort) []byte {
	ne := binary.NativeEndian
	b := make([]byte, unix.SizeofNlMsghdr+sizeofInetDiagReqV2)
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST) // no NLM_F_DUMP: the exact lookup of one socket
	ne.PutUint32(b[8:], 1)                  // sequence; the socket carries this request only

	r := b[unix.SizeofNlMsghdr:]
	r[0] = unix.AF_INET6
	if local.Addr().Is4() {
		r[0] = unix.AF_INET
	}
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // all states
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	copy(id[4:20], local.Addr().AsSlice())
	copy(id[20:36], remote.Addr().AsSlice())
	// id[36:40] is the interface, 0 for any; id[40:48] the cookie, INET_DIAG_NOCOOKIE.
	ne.PutUint32(id[40:], ^uint32(0))
	ne.PutUint32(id[44:], ^uint32(0))
	return b
}

// diagSocket is what an inet_diag_msg says of a socket.
type diagSocket struct {
	state         uint8
	local, remote netip.AddrPort // unmapped
	cgroup        uint64
	hasCgroup     bool
}

// parseDiagReply reads the answer to diagRequest: one socket, or the kernel's error.
func parseDiagReply(b []byte) (diagSocket, error) {
	ne := binary.NativeEndian
	var sk diagSocket
	found := false
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return sk, fmt.Errorf("sock_diag answer: %d bytes left over", len(b))
		}
		n := int(ne.Uint32(b[0:]))
		if n < unix.SizeofNlMsghdr || n > len(b) {
			return sk, fmt.Errorf("sock_diag answer: message of %d bytes in %d", n, len(b))
		}
		typ, body := ne.Uint16(b[4:]), b[unix.SizeofNlMsghdr:n]
		b = b[min(nlmAlign(n), len(b)):]
		switch typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return sk, errors.New("sock_diag answer: short error message")
			}
			if errno := -int32(ne.Uint32(body)); errno != 0 {
				if unix.Errno(errno) == unix.ENOENT {
					return sk, ErrNoSocket
				}
				return sk, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
			}
		case unix.SOCK_DIAG_BY_FAMILY:
			if found {
				return sk, errors.New("sock_diag answered with more than one socket")
			}
			var err error
			if sk, err = parseDiagMsg(body); err != nil {
				return sk, err
			}
			found = true
		default:
			return sk, fmt.Errorf("sock_diag answer: unexpected message type %d", typ)
		}
	}
	if !found {
		return sk, errors.New("sock_diag answered with no socket")
	}
	return sk, nil
}

func parseDiagMsg(b []byte) (diagSocket, error) {
	var sk diagSocket
	if len(b) < sizeofInetDiagMsg {
		return sk, fmt.Errorf("sock_diag answer: socket of %d bytes", len(b))
	}
	family, id := b[0], b[4:52]
	sk.state = b[1]
	lport, rport := binary.BigEndian.Uint16(id[0:]), binary.BigEndian.Uint16(id[2:])
	var la, ra netip.Addr
	switch family {
	case unix.AF_INET:
		la, ra = netip.AddrFrom4([4]byte(id[4:8])), netip.AddrFrom4([4]byte(id[20:24]))
	case unix.AF_INET6:
		la, ra = netip.AddrFrom16([16]byte(id[4:20])).Unmap(), netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	default:
		return sk, fmt.Errorf("sock_diag answer: socket of family %d", family)
	}
	sk.local, sk.remote = netip.AddrPortFrom(la, lport), netip.AddrPortFrom(ra, rport)

	for attrs := b[sizeofInetDiagMsg:]; len(attrs) > 0; {
		if len(attrs) < unix.SizeofRtAttr {
			return sk, fmt.Errorf("sock_diag answer: %d bytes of attributes left over", len(attrs))
		}
		n := int(binary.NativeEndian.Uint16(attrs[0:]))
		if n < unix.SizeofRtAttr || n > len(attrs) {
			return sk, fmt.Errorf("sock_diag answer: attribute of %d bytes in %d", n, len(attrs))
		}
		typ, val := binary.NativeEndian.Uint16(attrs[2:])&nlaTypeMask, attrs[unix.SizeofRtAttr:n]
		attrs = attrs[min(nlmAlign(n), len(attrs)):]
		if typ == inetDiagCgroupID {
			if len(val) != 8 {
				return sk, fmt.Errorf("sock_diag answer: cgroup id of %d bytes", len(val))
			}
			sk.cgroup, sk.hasCgroup = binary.NativeEndian.Uint64(val), true
		}
	}
	return sk, nil
}

func nlmAlign(n int) int {
	return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
}
