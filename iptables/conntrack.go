package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
)

// FlushConntrack deletes the conntrack entries whose original destination is dst. NAT is decided on a connection's
// first packet, so flows opened before a DNAT rule appeared or changed (a new listener port after a restart) keep
// their old fate until their entries go. Finding nothing to delete is success.
func FlushConntrack(ctx context.Context, dst netip.Addr) error {
	if !dst.IsValid() {
		return errors.New("flush conntrack: invalid destination address")
	}
	dst = dst.Unmap().WithZone("")
	args := []string{"-D", "-d", dst.String()}
	if dst.Is6() {
		args = append(args, "-f", "ipv6")
	}
	out, err := exec.CommandContext(ctx, "conntrack", args...).CombinedOutput()
	var exit *exec.ExitError
	// conntrack exits 1 when no entry matched, telling it apart from real failures only by its message.
	if errors.As(err, &exit) && exit.ExitCode() == 1 && bytes.Contains(out, []byte(" 0 flow entries have been deleted")) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("flush conntrack entries to %s (%s): %w", dst, bytes.TrimSpace(out), err)
	}
	return nil
}
