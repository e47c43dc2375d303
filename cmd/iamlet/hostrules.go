package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/iamlet/iamlet/agent"
)

// hostRules is `iamlet host-rules`: the pod's privileged container that writes the hostNetwork pods' rules from the
// node's cgroup namespace (agent/hostrules.go says why), and nothing else.
func hostRules(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet host-rules", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg agent.HostRulesConfig
	var metadataAddrs, logFormat, logLevel string
	fs.StringVar(&metadataAddrs, "metadata-addr", envOr("METADATA_ADDR", ""), "the agent's --metadata-addr: its hostNetwork listeners are these addresses on --host-network-port")
	port := fs.Uint("host-network-port", 8182, "the agent's --host-network-port")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "where the node's cgroup hierarchy is mounted (a hostPath mount of the host's /sys/fs/cgroup)")
	fs.StringVar(&cfg.PodsCgroup, "pods-cgroup", "", "the kubelet's pods cgroup below --cgroup-root; empty = detect kubepods.slice or kubepods")
	fs.StringVar(&cfg.PodUID, "pod-uid", os.Getenv("POD_UID"), "this pod's UID (default $POD_UID, from metadata.uid): its cgroup keeps the node's IMDS")
	fs.StringVar(&cfg.Dir, "dir", "/run/iamlet", "directory shared with the agent")
	fs.DurationVar(&cfg.Interval, "interval", 5*time.Second, "how often the rules are checked and restored")
	fs.StringVar(&logFormat, "log-format", "json", "json or text")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, logFormat, logLevel)
	if err != nil {
		return err
	}
	if *port == 0 || *port > 65535 {
		return fmt.Errorf("--host-network-port %d: want 1..65535", *port)
	}
	cfg.HostNetworkPort = uint16(*port)
	if cfg.MetadataAddrs, err = parseAddrs(metadataAddrs, 8181); err != nil || len(cfg.MetadataAddrs) == 0 {
		return fmt.Errorf("--metadata-addr %q: %v", metadataAddrs, err)
	}
	if cfg.PodUID == "" {
		return errors.New("--pod-uid (or POD_UID from metadata.uid) is required: the pod's own requests keep the node's IMDS")
	}
	if cfg.Interval <= 0 {
		return errors.New("--interval must be positive")
	}
	return agent.RunHostRules(ctx, cfg, log)
}
