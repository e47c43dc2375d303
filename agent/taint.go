package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// startupTaint keeps pods off a new node until the agent serves there: the node registers with the taint
// (kubelet --register-with-taints, Karpenter startupTaints), and the agent removes it from its own node once
// it is ready. The admission policy lets the agent remove only this taint, only from its own node.
type startupTaint struct {
	nodes   nodeAPI
	node    string
	key     string
	present func(bool) // reports whether the node still carries the taint
	log     *slog.Logger
}

// nodeAPI reads and writes Nodes (kube.Client).
type nodeAPI interface {
	Node(ctx context.Context, name string) (*corev1.Node, error)
	UpdateNode(ctx context.Context, n *corev1.Node, fieldManager string) error
}

// taintRecheck is how often a ready agent reads its node again: a kubelet restart can register the taint anew,
// and some node-group tooling adds it only after the node has joined.
const taintRecheck = time.Minute

// run removes the taint whenever the agent is ready and the node carries it, until ctx is done: at once when it
// becomes ready, then every taintRecheck, retrying a failure with backoff. A node without the taint costs one
// read a minute.
func (s startupTaint) run(ctx context.Context, ready func() bool) {
	backoff := time.Second
	for {
		if err := waitFor(ctx, ready); err != nil {
			return
		}
		next := taintRecheck
		removed, err := s.remove(ctx)
		switch {
		case err != nil:
			s.present(true)
			s.log.Error("could not remove the start-up taint; pods stay off this node until it is removed", "taint", s.key, "node", s.node, "error", err.Error())
			next, backoff = backoff, min(2*backoff, time.Minute)
		case removed:
			s.present(false)
			s.log.Info("start-up taint removed: pods may be scheduled on this node", "taint", s.key, "node", s.node)
			backoff = time.Second
		default:
			s.present(false)
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
	}
}

// remove deletes the taint from the node, if it carries it; it reports whether it did.
func (s startupTaint) remove(ctx context.Context) (bool, error) {
	for {
		n, err := s.nodes.Node(ctx, s.node)
		if err != nil {
			return false, fmt.Errorf("reading node %s: %w", s.node, err)
		}
		kept := make([]corev1.Taint, 0, len(n.Spec.Taints))
		for _, t := range n.Spec.Taints {
			if t.Key != s.key {
				kept = append(kept, t)
			}
		}
		if len(kept) == len(n.Spec.Taints) {
			return false, nil
		}
		s.present(true)
		n.Spec.Taints = kept
		// The read's resourceVersion makes this a compare-and-swap: a concurrent change to the node is read again.
		err = s.nodes.UpdateNode(ctx, n, "iamlet")
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("updating node %s: %w", s.node, err)
		}
		return true, nil
	}
}
