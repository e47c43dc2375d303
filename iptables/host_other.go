//go:build !linux

package iptables

import (
	"context"
	"errors"
	"log/slog"
)

// errHostRulesLinux is every answer of HostRules off Linux: the rules are nftables rules on socket cgroups.
var errHostRulesLinux = errors.New("hostNetwork interception: only on Linux (nftables)")

// HostRules are the nftables rules for hostNetwork pods; off Linux there are none to write.
type HostRules struct{}

// NewHostRules fails off Linux.
func NewHostRules(HostConfig, *slog.Logger) (*HostRules, error) { return nil, errHostRulesLinux }

// Ensure fails off Linux.
func (*HostRules) Ensure(context.Context, []CgroupRef) (int, error) { return 0, errHostRulesLinux }

// Exempted fails off Linux.
func (*HostRules) Exempted() ([]CgroupRef, error) { return nil, errHostRulesLinux }

// Remove fails off Linux.
func (*HostRules) Remove() error { return errHostRulesLinux }

// Watch fails off Linux.
func (*HostRules) Watch(context.Context) (<-chan struct{}, error) { return nil, errHostRulesLinux }
