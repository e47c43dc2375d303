package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"

	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/agent/satoken"
)

// nodeNameExtra is the user extra the apiserver derives from a pod-bound token's node claim; constrained
// impersonation lets the token's holder act as that node, and no other.
const nodeNameExtra = "authentication.kubernetes.io/node-name"

// mintingClient is the client pod tokens are requested and the node's pods read with. As the node it impersonates
// only the user name (system:node:NAME): constrained impersonation refuses groups or extras, and gives the node's
// fixed groups.
func mintingClient(rc *rest.Config, mode satoken.Mode, nodeName string) (*kube.Client, error) {
	if mode == satoken.AsNode {
		rc = rest.CopyConfig(rc)
		rc.Impersonate = rest.ImpersonationConfig{UserName: "system:node:" + nodeName}
	}
	c, err := kube.New(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for token minting: %w", err)
	}
	return c, nil
}

// whoAmI asks the apiserver who the client is (kube.Client).
type whoAmI interface {
	WhoAmI(ctx context.Context) (authv1.UserInfo, error)
}

// serviceAccountRef is the agent's own ServiceAccount.
type serviceAccountRef struct{ namespace, name string }

// ownServiceAccount asks the apiserver who the agent is. The confinement check needs its ServiceAccount, and
// minting as the node needs a token bound to a pod on this node (a DaemonSet pod's projected token), which the
// apiserver shows as the node-name extra. An apiserver that could not answer is asked again for up to whoAmIWait:
// exiting would have every agent that restarts list the cluster's ServiceAccounts again, into a struggling apiserver.
func ownServiceAccount(ctx context.Context, api whoAmI, mode satoken.Mode, nodeName string) (serviceAccountRef, error) {
	var u authv1.UserInfo
	err := askAgain(ctx, whoAmIWait, isUnreachable, func(ctx context.Context) (err error) {
		u, err = api.WhoAmI(ctx)
		return err
	})
	if err != nil {
		return serviceAccountRef{}, fmt.Errorf("asking the apiserver who the agent is (selfsubjectreviews): %w", err)
	}
	qualified, ok := strings.CutPrefix(u.Username, "system:serviceaccount:")
	ns, name, ok2 := strings.Cut(qualified, ":")
	if !ok || !ok2 {
		return serviceAccountRef{}, fmt.Errorf("the agent runs as %q, not a ServiceAccount: it must run with its DaemonSet pod's ServiceAccount token", u.Username)
	}
	if mode == satoken.AsNode {
		nodes := u.Extra[nodeNameExtra]
		switch {
		case len(nodes) == 0:
			return serviceAccountRef{}, errors.New("--token-minting=node needs a ServiceAccount token bound to the agent's pod (a projected token, as the kubelet gives a DaemonSet pod); this token names no node")
		case len(nodes) != 1 || nodes[0] != nodeName:
			return serviceAccountRef{}, fmt.Errorf("the agent's token is bound to a pod on node %v, but NODE_NAME is %q", nodes, nodeName)
		}
	}
	return serviceAccountRef{namespace: ns, name: name}, nil
}

const whoAmIWait = 30 * time.Second

// checkConfinement runs the confinement check and records its verdict. A check that could not reach a verdict
// (the apiserver unreachable) keeps the previous one, so a blip neither opens nor closes minting; a refusal for
// another reason (minting not permitted at all) is a verdict, since nothing could be minted either.
//
// Minting as the node, direct is the agent's ServiceAccount's own client: it must hold no grant to mint at all.
func checkConfinement(ctx context.Context, tokens, direct *satoken.Source, self serviceAccountRef, st *state, log *slog.Logger) {
	err := tokens.CheckConfined(ctx, self.namespace, self.name)
	if err == nil && direct != nil {
		err = direct.CheckNoGrant(ctx, self.namespace, self.name)
	}
	switch {
	case err == nil:
		if st.confinedErr() != nil {
			log.Info("token minting confinement holds: the apiserver refused an unbound token", "minting", st.minting.Describe())
		}
		st.confinement.Store(&err)
	case errors.Is(err, satoken.ErrNotConfined):
		log.Error("token minting is not confined; minting no new tokens and reporting not ready", "minting", st.minting.Describe(),
			"error", err.Error(), "remedy", confinementRemedy(st.minting))
		st.confinement.Store(&err)
	case ctx.Err() != nil:
	case isUnreachable(err) && st.confinement.Load() != nil:
		log.Warn("confinement check could not reach the apiserver; keeping the last verdict", "error", err.Error())
	default:
		log.Error("confinement check failed; minting no new tokens", "minting", st.minting.Describe(), "error", err.Error(),
			"remedy", confinementRemedy(st.minting))
		st.confinement.Store(&err)
	}
}

func confinementRemedy(m satoken.Mode) string {
	if m == satoken.ClusterWide {
		return "install the iamlet-token-requests ValidatingAdmissionPolicy and its binding from the same release as the RBAC"
	}
	return "enable the NodeRestriction admission plugin and constrained impersonation (Kubernetes 1.35+), grant the agent's ServiceAccount the impersonate:associated-node RBAC from the same release, and bind it no cluster-wide minting RBAC"
}

// isUnreachable tells an apiserver that could not answer from one that answered no.
func isUnreachable(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return true
	}
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err)
}
