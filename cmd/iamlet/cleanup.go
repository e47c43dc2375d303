package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"

	"github.com/iamlet/iamlet/agent/kube"
)

// The chart's uninstall clean-up (templates/cleanup.yaml): after `helm uninstall` has deleted the agent's DaemonSet,
// a hook DaemonSet runs `iamlet uninstall --wait-for-agent` on every node, and a hook Job runs `iamlet cleanup-hook`,
// which waits until that DaemonSet has run everywhere and deletes it. Helm waits for the Job.

// waitAgentGone waits until nothing listens on the agent's ports on this node (binding them on every address fails
// while the terminating agent still holds one), and its host-rules container no longer holds alive (an abstract
// unix socket), so neither can restore what uninstall removes.
func waitAgentGone(ctx context.Context, ports []uint, alive string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type held struct{ network, addr string }
	addrs := []held{{"unix", alive}}
	for _, p := range ports {
		addrs = append(addrs, held{"tcp", ":" + strconv.Itoa(int(p))})
	}
	for {
		busy := 0
		for _, a := range addrs {
			ln, err := net.Listen(a.network, a.addr)
			if err == nil {
				ln.Close()
			} else if errors.Is(err, syscall.EADDRINUSE) {
				busy++
			} else {
				return fmt.Errorf("checking %s: %w", a.addr, err)
			}
		}
		if busy == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the agent or its host-rules container still runs on this node after %s; is its DaemonSet deleted?", timeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitDaemonSetGone waits until the agent's DaemonSet (NAMESPACE/NAME) no longer exists. The hook's pods check it
// before removing anything: rendered with `helm template` and applied as ordinary objects, beside a running agent,
// they must never take its rules away.
func waitDaemonSetGone(ctx context.Context, ref string, timeout time.Duration) error {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return badValue(fmt.Errorf("--after-daemonset-deleted %q: want NAMESPACE/NAME", ref))
	}
	api, err := inCluster()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		_, err := api.DaemonSet(ctx, ns, name)
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the agent's DaemonSet %s still exists after %s (%v): nothing removed", ref, timeout, err)
		case <-time.After(time.Second):
		}
	}
}

func inCluster() (*kube.Client, error) {
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return kube.New(rc)
}

// cleanupHook is `iamlet cleanup-hook`: wait until the clean-up DaemonSet is ready on every node it is scheduled to
// (each pod's init container has removed the rules), then delete it.
func cleanupHook(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet cleanup-hook", flag.ContinueOnError)
	fs.SetOutput(stderr)
	namespace := fs.String("namespace", "", "the clean-up DaemonSet's namespace")
	name := fs.String("daemonset", "", "the clean-up DaemonSet")
	timeout := fs.Duration("timeout", 4*time.Minute, "how long to wait for it")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *namespace == "" || *name == "" {
		return badValue(errors.New("--namespace and --daemonset are required"))
	}
	api, err := inCluster()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	for {
		ds, err := api.DaemonSet(ctx, *namespace, *name)
		switch {
		case apierrors.IsNotFound(err):
			return nil
		case err == nil && ds.Status.ObservedGeneration >= ds.Generation && ds.Status.NumberReady == ds.Status.DesiredNumberScheduled:
			fmt.Fprintf(stderr, "iamlet: interception rules removed on %d nodes\n", ds.Status.NumberReady)
			if err := api.DeleteDaemonSet(ctx, *namespace, *name); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting the clean-up DaemonSet: %w", err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the clean-up DaemonSet %s/%s is not ready on every node after %s (last error: %v): see its pods' logs", *namespace, *name, *timeout, err)
		case <-time.After(time.Second):
		}
	}
}

// namespaceLabel is `iamlet namespace-label`, the chart's pre-install hook: `helm install --create-namespace` cannot
// label the namespace it creates, and the agent's pod (hostNetwork, NET_ADMIN) needs the privileged Pod Security level.
func namespaceLabel(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet namespace-label", flag.ContinueOnError)
	fs.SetOutput(stderr)
	namespace := fs.String("namespace", "", "the namespace to label")
	label := fs.String("label", "pod-security.kubernetes.io/enforce=privileged", "KEY=VALUE")
	if err := parse(fs, args); err != nil {
		return err
	}
	key, value, ok := strings.Cut(*label, "=")
	if *namespace == "" || !ok || key == "" {
		return badValue(errors.New("--namespace and --label KEY=VALUE are required"))
	}
	api, err := inCluster()
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{key: value}}})
	if err != nil {
		return err
	}
	if err := api.MergePatchNamespace(ctx, *namespace, patch); err != nil {
		return fmt.Errorf("labelling namespace %s: %w", *namespace, err)
	}
	fmt.Fprintf(stderr, "iamlet: namespace %s labelled %s\n", *namespace, *label)
	return nil
}
