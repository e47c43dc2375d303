package iptables

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6): conntrack's original destination of
// an accepted connection, before DNAT rewrote it.
const soOriginalDst = 80

// OriginalDestination is where a connection accepted on c was addressed before NAT: the metadata address for a
// redirected pod, the listener's own address for a client that connected to it directly. It asks conntrack
// through the socket, one getsockopt, no lookup of our own.
func OriginalDestination(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: not a TCP connection")
	}
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if local.IP.To4() != nil {
			var sa unix.RawSockaddrInet4
			size := uint32(unsafe.Sizeof(sa))
			serr = getsockopt(int(fd), unix.IPPROTO_IP, soOriginalDst, unsafe.Pointer(&sa), &size)
			dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(&sa.Port))
			return
		}
		var sa unix.RawSockaddrInet6
		size := uint32(unsafe.Sizeof(sa))
		serr = getsockopt(int(fd), unix.IPPROTO_IPV6, soOriginalDst, unsafe.Pointer(&sa), &size)
		dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), netPort(&sa.Port))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of a connection from %s: %w", c.RemoteAddr(), err)
	}
	return netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), nil
}

func getsockopt(fd, level, name int, val unsafe.Pointer, size *uint32) error {
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// netPort reads a sockaddr's port, which is in network byte order whatever the machine's.
func netPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}
