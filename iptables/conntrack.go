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
	return flushConntrack(ctx, dst, false)
}

// FlushUnredirected deletes only the entries of flows to dst that were not redirected: those answered by dst itself
// (reply source dst), which a gap in the rules let through to the node's own service. Redirected flows, whose reply
// comes from the agent, keep their entries: deleting one mid-request would send the agent's answer out un-NATed, and
// the pod would wait for it until its timeout.
func FlushUnredirected(ctx context.Context, dst netip.Addr) error {
	return flushConntrack(ctx, dst, true)
}

func flushConntrack(ctx context.Context, dst netip.Addr, unredirected bool) error {
	if !dst.IsValid() {
		return errors.New("flush conntrack: invalid destination address")
	}
	dst = dst.Unmap().WithZone("")
	args := []string{"-D", "-d", dst.String()}
	if unredirected {
		args = append(args, "-r", dst.String())
	}
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
