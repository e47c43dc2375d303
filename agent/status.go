package agent

import (
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/agent/roles"
)

// Status is what `iamlet status` shows: the node's pods, their roles and credential state, and the
// interception state. It carries no secret.
type Status struct {
	Ready        bool   `json:"ready"`
	Reason       string `json:"reason"`
	Interception string `json:"interception"`
	Minting      string `json:"minting"` // node-confined minting, or cluster-wide minting
	// HostNetwork says whether hostNetwork pods are intercepted: covered, off, or not covered and why.
	HostNetwork string      `json:"hostNetwork"`
	NodeTrusted []string    `json:"nodeTrusted,omitempty"` // namespace/serviceaccount pairs left on the node's IMDS
	Pods        []PodStatus `json:"pods"`
}

// PodStatus is one pod's line in Status.
type PodStatus struct {
	Namespace      string   `json:"namespace"`
	Pod            string   `json:"pod"`
	ServiceAccount string   `json:"serviceAccount"`
	IPs            []string `json:"ips"`
	HostNetwork    bool     `json:"hostNetwork,omitempty"`
	RoleARN        string   `json:"roleARN,omitempty"`
	// ChainedRoleARN is the role actually served when RoleARN is chained to another (cross-account).
	ChainedRoleARN string `json:"chainedRoleARN,omitempty"`
	// SessionPolicySHA256 identifies the session policy the pod's session is narrowed by (see iamlet policy).
	SessionPolicySHA256 string   `json:"sessionPolicySHA256,omitempty"`
	SessionPolicyARNs   []string `json:"sessionPolicyARNs,omitempty"`
	// AccessKeyID is the access key ID of the credentials the pod is served: what CloudTrail names it by.
	AccessKeyID string `json:"accessKeyID,omitempty"`
	// State: no_role, not_allowed, bad_session_policy, pending, valid, expired, error, node_trusted.
	State       string     `json:"state"`
	Expiration  *time.Time `json:"expiration,omitempty"`
	LastRefresh *time.Time `json:"lastRefresh,omitempty"`
	Detail      string     `json:"detail,omitempty"`
}

func statusHandler(index *pods.Index, mapper *roles.Mapper, cache *creds.Cache, st *state, trusted trustList, own types.UID) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		live := index.Live()
		if st.hostNetwork() == hostCovered {
			for _, p := range index.LiveHost() {
				if p.UID != own { // the agent's own pod
					live = append(live, p)
				}
			}
		}
		_ = json.NewEncoder(w).Encode(buildStatus(live, mapper, cache.Snapshot(), st, trusted, time.Now()))
	})
	return mux
}

func buildStatus(live []pods.Pod, mapper *roles.Mapper, entries []creds.Entry, st *state, trusted trustList, now time.Time) Status {
	byKey := make(map[creds.Key]creds.Entry, len(entries))
	for _, e := range entries {
		byKey[e.Request.Key()] = e
	}
	s := Status{Interception: "in place", Minting: st.minting.Describe(), HostNetwork: st.hostNetwork(), NodeTrusted: trusted}
	s.Ready, s.Reason = st.ready()
	if !st.rulesOK.Load() {
		s.Interception = "missing"
	}
	for _, p := range live {
		ps := PodStatus{Namespace: p.Namespace, Pod: p.Name, ServiceAccount: p.ServiceAccount, HostNetwork: p.HostNetwork}
		for _, ip := range p.IPs {
			ps.IPs = append(ps.IPs, ip.String())
		}
		role, err := mapper.RoleFor(p.Namespace, p.ServiceAccount)
		switch {
		case p.HostNetwork && trusted.trusts(p):
			ps.State, ps.Detail = "node_trusted", "not intercepted: reaches the node's IMDS"
		case errors.Is(err, roles.ErrNoRole):
			ps.State = "no_role"
		case errors.Is(err, roles.ErrInvalidPolicy):
			ps.State, ps.Detail = "bad_session_policy", err.Error()
		case err != nil:
			ps.State, ps.Detail = "not_allowed", err.Error()
		default:
			ps.RoleARN, ps.ChainedRoleARN = role.ARN, role.Narrowing.ChainRoleARN
			ps.SessionPolicySHA256, ps.SessionPolicyARNs = role.Narrowing.PolicyHash, role.Narrowing.PolicyARNs
			e, ok := byKey[requestFor(p, role).Key()]
			switch {
			case !ok || (!e.Has && e.LastError == ""):
				ps.State = "pending"
			case !e.Has:
				ps.State, ps.Detail = "error", e.LastError
			default:
				exp, iss := e.Expiration, e.Issued
				ps.Expiration, ps.LastRefresh = &exp, &iss
				ps.AccessKeyID = e.AccessKeyID
				ps.State = "valid"
				if !now.Before(exp) {
					ps.State = "expired"
				}
				ps.Detail = e.LastError
			}
		}
		s.Pods = append(s.Pods, ps)
	}
	sort.Slice(s.Pods, func(i, j int) bool {
		if s.Pods[i].Namespace != s.Pods[j].Namespace {
			return s.Pods[i].Namespace < s.Pods[j].Namespace
		}
		return s.Pods[i].Pod < s.Pods[j].Pod
	})
	return s
}
