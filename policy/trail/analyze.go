package trail

import (
	"cmp"
	"maps"
	"slices"
	"strings"

	"github.com/iamlet/iamlet/policy/issuance"
)

// Workload is what a policy is for: a namespace's ServiceAccount.
type Workload struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"service_account"`
}

func (w Workload) String() string { return w.Namespace + "/" + w.ServiceAccount }

// Analysis is CloudTrail attributed to workloads.
type Analysis struct {
	Events int // records read
	// Issuance counts the STS calls that minted the workloads' credentials: the agent's, needing no policy.
	Issuance     int
	Workloads    []*Activity
	Unattributed Unattributed
}

// Unattributed counts the events no issuance record accounts for, by principal. They are never guessed at.
type Unattributed struct {
	Events     int              `json:"events"`
	Principals []PrincipalCount `json:"principals,omitempty"`
}

type PrincipalCount struct {
	Principal string `json:"principal"` // userIdentity.arn, or its type when it has none
	Events    int    `json:"events"`
}

// Activity is one workload's attributed calls.
type Activity struct {
	Workload Workload
	Roles    []string // roles its credentials were for
	Sessions []string
	Calls    int
	Uses     []Use // what the calls that IAM allowed needed
	Denied   []Use // what the calls IAM refused asked for
	// Assumed lists the events the mapping does not know ("s3.amazonaws.com:NewCall"); their actions are guessed.
	Assumed []string
	// Permissionless lists the events that needed no permission.
	Permissionless []string
}

// Use is one action on one resource and the calls that needed it.
type Use struct {
	Access
	Calls  int      `json:"calls"`
	Events []string `json:"events"` // eventSource:eventName
}

// attribution indexes issuance records: by access key (precise), and by session name (when the key is not in
// the record, e.g. credentials issued before the records were kept).
type attribution struct {
	byKey     map[string]issuance.Record
	bySession map[string][]issuance.Record
	learned   map[string]string // access key -> session name, from STS responses in the trail
}

func newAttribution(records []issuance.Record, events []Event) *attribution {
	a := &attribution{byKey: map[string]issuance.Record{}, bySession: map[string][]issuance.Record{}, learned: map[string]string{}}
	for _, r := range records {
		a.byKey[r.AccessKeyID] = r
		a.bySession[r.SessionName] = append(a.bySession[r.SessionName], r)
	}
	for i := range events {
		if key, _, session, ok := minted(&events[i]); ok {
			a.learned[key] = session
		}
	}
	return a
}

// minted reads an STS AssumeRole* event's response: the access key it issued and the session it is for.
func minted(e *Event) (key, role, session string, ok bool) {
	if e.EventSource != "sts.amazonaws.com" || !strings.HasPrefix(e.EventName, "AssumeRole") || e.ResponseElements == nil ||
		e.ResponseElements.Credentials == nil || e.ResponseElements.AssumedRoleUser == nil {
		return "", "", "", false
	}
	role, session, ok = assumedRole(e.ResponseElements.AssumedRoleUser.ARN)
	return e.ResponseElements.Credentials.AccessKeyID, role, session, ok && e.ResponseElements.Credentials.AccessKeyID != ""
}

// assumedRole splits arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION.
func assumedRole(arn string) (role, session string, ok bool) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "sts" {
		return "", "", false
	}
	rest, found := strings.CutPrefix(parts[5], "assumed-role/")
	if !found {
		return "", "", false
	}
	role, session, ok = strings.Cut(rest, "/")
	return role, session, ok && role != "" && session != ""
}

// roleName is the last path segment of an IAM role ARN: what an assumed-role ARN names.
func roleName(roleARN string) string {
	return roleARN[strings.LastIndexByte(roleARN, '/')+1:]
}

// record finds the issuance record behind an event, or nothing. A session name counts only when its records
// agree on the workload and one of them served the role the event names.
func (a *attribution) record(e *Event) (issuance.Record, bool) {
	if r, ok := a.byKey[e.UserIdentity.AccessKeyID]; ok && e.UserIdentity.AccessKeyID != "" {
		return r, true
	}
	role, session, ok := assumedRole(e.UserIdentity.ARN)
	if learned, found := a.learned[e.UserIdentity.AccessKeyID]; found && e.UserIdentity.AccessKeyID != "" {
		session = learned
	} else if !ok {
		return issuance.Record{}, false
	}
	recs := a.bySession[session]
	if len(recs) == 0 {
		return issuance.Record{}, false
	}
	w := Workload{recs[0].Namespace, recs[0].ServiceAccount}
	var match *issuance.Record
	for i, r := range recs {
		if (Workload{r.Namespace, r.ServiceAccount}) != w {
			return issuance.Record{}, false
		}
		if role == "" || roleName(r.ServedRole()) == role {
			match = &recs[i]
		}
	}
	if match == nil {
		return issuance.Record{}, false
	}
	return *match, true
}

// issuing says whether e is the STS call that minted credentials the records know: the agent's, not the workload's.
func (a *attribution) issuing(e *Event) bool {
	key, _, session, ok := minted(e)
	if !ok {
		return false
	}
	_, known := a.byKey[key]
	return known || len(a.bySession[session]) > 0
}

// Analyze attributes events to workloads through the issuance records and maps each attributed call to the
// actions and resources it needed.
func Analyze(m *Mapping, events []Event, records []issuance.Record) *Analysis {
	attr := newAttribution(records, events)
	out := &Analysis{Events: len(events)}
	acts := map[Workload]*activity{}
	unattributed := map[string]int{}
	for i := range events {
		e := &events[i]
		if attr.issuing(e) {
			out.Issuance++
			continue
		}
		r, ok := attr.record(e)
		if !ok {
			out.Unattributed.Events++
			p := e.UserIdentity.ARN
			if p == "" {
				p = e.UserIdentity.Type
			}
			unattributed[p]++
			continue
		}
		w := Workload{r.Namespace, r.ServiceAccount}
		act := acts[w]
		if act == nil {
			act = newActivity(w)
			acts[w] = act
		}
		act.add(m, e, r)
	}
	for _, act := range acts {
		out.Workloads = append(out.Workloads, act.done())
	}
	slices.SortFunc(out.Workloads, func(a, b *Activity) int { return strings.Compare(a.Workload.String(), b.Workload.String()) })
	for p, n := range unattributed {
		out.Unattributed.Principals = append(out.Unattributed.Principals, PrincipalCount{p, n})
	}
	slices.SortFunc(out.Unattributed.Principals, func(a, b PrincipalCount) int {
		return cmp.Or(cmp.Compare(b.Events, a.Events), strings.Compare(a.Principal, b.Principal))
	})
	return out
}

// Workload returns the activity of w, or nil.
func (a *Analysis) Workload(w Workload) *Activity {
	for _, act := range a.Workloads {
		if act.Workload == w {
			return act
		}
	}
	return nil
}

type activity struct {
	Activity
	roles, sessions, assumed, free map[string]bool
	uses, denied                   map[Access]*Use
}

func newActivity(w Workload) *activity {
	return &activity{Activity: Activity{Workload: w}, roles: map[string]bool{}, sessions: map[string]bool{},
		assumed: map[string]bool{}, free: map[string]bool{}, uses: map[Access]*Use{}, denied: map[Access]*Use{}}
}

func (a *activity) add(m *Mapping, e *Event, r issuance.Record) {
	a.Calls++
	a.roles[r.ServedRole()] = true
	a.sessions[r.SessionName] = true
	name := e.EventSource + ":" + e.EventName
	res := m.Map(e)
	if res.Permissionless {
		a.free[name] = true
		return
	}
	if res.Assumed {
		a.assumed[name] = true
	}
	into := a.uses
	if e.AccessDenied() {
		into = a.denied
	}
	for _, acc := range res.Accesses {
		u := into[acc]
		if u == nil {
			u = &Use{Access: acc}
			into[acc] = u
		}
		u.Calls++
		if !slices.Contains(u.Events, name) {
			u.Events = append(u.Events, name)
		}
	}
}

func (a *activity) done() *Activity {
	out := a.Activity
	out.Roles = slices.Sorted(maps.Keys(a.roles))
	out.Sessions = slices.Sorted(maps.Keys(a.sessions))
	out.Assumed = slices.Sorted(maps.Keys(a.assumed))
	out.Permissionless = slices.Sorted(maps.Keys(a.free))
	out.Uses = sortedUses(a.uses)
	out.Denied = sortedUses(a.denied)
	return &out
}

func sortedUses(m map[Access]*Use) []Use {
	var out []Use
	for _, u := range m {
		slices.Sort(u.Events)
		out = append(out, *u)
	}
	slices.SortFunc(out, func(a, b Use) int {
		return cmp.Or(strings.Compare(a.Action, b.Action), strings.Compare(a.Resource, b.Resource), strings.Compare(a.Why, b.Why))
	})
	return out
}
