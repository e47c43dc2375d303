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
	var err error
	for range flushAttempts {
		var vanished bool
		if vanished, err = runFlush(ctx, args); !vanished || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("flush conntrack entries to %s: %w", dst, err)
	}
	return nil
}

// flushAttempts bounds the runs of conntrack -D. It stops at the first entry that is gone by the time it deletes it
// (expired since it was listed: on a busy node, any of the many closing flows), leaving the entries after it in
// place, so it is run again; each run deletes what it reached.
const flushAttempts = 10

// runFlush runs conntrack -D once; vanished says it stopped at an entry already gone. What it deleted, which it lists
// on stdout, is discarded: on a busy node the list runs to megabytes, and it names other pods' flows.
func runFlush(ctx context.Context, args []string) (vanished bool, err error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "conntrack", args...)
	cmd.Stderr = &stderr
	err = cmd.Run()
	msg := bytes.TrimSpace(stderr.Bytes())
	var exit *exec.ExitError
	switch {
	case err == nil:
		return false, nil
	// conntrack exits 1 both when no entry matched and when one vanished, telling them apart only by its message.
	case errors.As(err, &exit) && exit.ExitCode() == 1 && bytes.Contains(msg, []byte(" 0 flow entries have been deleted")):
		return false, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1 && bytes.Contains(msg, []byte("such conntrack doesn't exist")):
		return true, fmt.Errorf("entries kept vanishing as they were deleted (%s): %w", truncateMsg(msg), err)
	}
	return false, fmt.Errorf("%s: %w", truncateMsg(msg), err)
}

// truncateMsg bounds a tool's message quoted in an error, which ends up in a log line.
func truncateMsg(b []byte) string {
	const max = 512
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}
