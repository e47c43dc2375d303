package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	toolscache "k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/agent/kube/kubetest"
	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/agent/satoken"
	"github.com/iamlet/iamlet/agent/sts"
	"github.com/iamlet/iamlet/agent/sts/ststest"
	"github.com/iamlet/iamlet/metadata"
	"github.com/iamlet/iamlet/policy"
)

const (
	chainedRoleARN  = "arn:aws:iam::210987654321:role/cross-account-reader"
	chainExternalID = "iamlet-7f3a"
	// sessionPolicy is written as a person would annotate it; STS is sent its compact form.
	sessionPolicy = `{
  "Version": "2012-10-17",
  "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::bucket/*"}]
}`
	sessionPolicyARN = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
)

// testSessionName is the session name of testPod's sessions, first and chained alike.
var testSessionName = sts.SessionName(testPod.Namespace, testPod.Name, string(testPod.UID))

// chainedAnnotations are a ServiceAccount's annotations that chain testRoleARN to chainedRoleARN with a session policy.
func chainedAnnotations(externalID string) map[string]string {
	a := map[string]string{
		roles.AnnotationRoleARN:           testRoleARN,
		roles.AnnotationSessionPolicy:     sessionPolicy,
		roles.AnnotationSessionPolicyARNs: sessionPolicyARN,
		roles.AnnotationChainRoleARN:      chainedRoleARN,
	}
	if externalID != "" {
		a[roles.AnnotationChainExternalID] = externalID
	}
	return a
}

// compactPolicy is sessionPolicy as STS must receive it.
func compactPolicy(t *testing.T) string {
	t.Helper()
	doc, err := policy.Parse([]byte(sessionPolicy))
	if err != nil {
		t.Fatalf("policy.Parse(sessionPolicy) error = %v", err)
	}
	return string(doc.Compact())
}

// credentialRig is one node's credential path, real from a ServiceAccount's annotations to STS's answer: the role
// mapper over a fake apiserver that also answers TokenRequests, the fetcher with the real STS client talking to the
// ststest stand-in, the cache on a fake clock, and the observer logging to a buffer and writing issuance records to a
// file. Only the pod index is a stub: testPod calls from testCaller.
type credentialRig struct {
	sts      *ststest.STS
	issued   *issuedSessions
	clock    *clocktesting.FakeClock
	mapper   *roles.Mapper
	cache    *creds.Cache
	provider *provider
	logs     *syncBuffer
	file     string        // the issuance file
	stored   chan string   // the reason of every credential set the cache stored, in order
	tokens   *atomic.Int32 // TokenRequests the apiserver answered
	record   *issuanceFile // the issuance file, open
	metrics  *metrics
	log      *slog.Logger
	// unconfined, when it holds an error, is the confinement check's failure: the fetcher mints nothing.
	unconfined atomic.Pointer[error]
	fetcher    *fetcher
}

func newCredentialRig(t *testing.T, annotations map[string]string) *credentialRig {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Now())
	// The stand-in keeps the cache's time, so that the sessions it issues expire by the clock the test drives.
	stand := ststest.New(ststest.Config{Now: clk.Now, VerifyToken: func(tok string) (ststest.Identity, error) {
		if tok != testWebToken {
			return ststest.Identity{}, errors.New("not the token the apiserver minted")
		}
		return ststest.Identity{Subject: "system:serviceaccount:ns:app", Audience: testRole.Audience}, nil
	}})
	issued := &issuedSessions{next: stand}
	srv := httptest.NewServer(issued)
	t.Cleanup(srv.Close)
	stsClient, err := sts.New(sts.Config{Region: "eu-west-1", Endpoint: srv.URL})
	if err != nil {
		t.Fatalf("sts.New() error = %v", err)
	}

	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: testPod.Namespace, Name: testPod.ServiceAccount, Annotations: annotations}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testPod.Namespace,
		Annotations: map[string]string{roles.AnnotationAllowedRoles: testRoleARN + "," + chainedRoleARN}}}
	kube := fake.NewClientset(sa, ns)
	var tokens atomic.Int32
	kube.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest).DeepCopy()
		if ref := tr.Spec.BoundObjectRef; ref == nil || ref.UID != testPod.UID {
			t.Errorf("TokenRequest bound to %+v, want pod %s", ref, testPod.UID)
		}
		tokens.Add(1)
		tr.Status.Token = testWebToken
		return true, tr, nil
	})
	mapper := roles.New(kubetest.Client{Interface: kube}, roles.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	mapper.Start(ctx)
	t.Cleanup(func() {
		cancel()
		mapper.Shutdown()
	})
	if !toolscache.WaitForCacheSync(t.Context().Done(), mapper.HasSynced) {
		t.Fatal("the role mapper's informers did not sync")
	}

	log, logs := logBuffer()
	m := newMetrics(prometheus.NewRegistry(), true)
	file := filepath.Join(t.TempDir(), "issuance.jsonl")
	f, err := openIssuanceFile(file, issuanceNotWritten(m, log))
	if err != nil {
		t.Fatalf("openIssuanceFile(%q) error = %v", file, err)
	}
	stored := make(chan string, 16)
	rig := &credentialRig{sts: stand, issued: issued, clock: clk, mapper: mapper, logs: logs, file: file, stored: stored, tokens: &tokens,
		record: f, metrics: m, log: log}
	t.Cleanup(func() { _ = rig.record.Close() })
	confined := func() error {
		if err := rig.unconfined.Load(); err != nil {
			return *err
		}
		return nil
	}
	rig.fetcher = &fetcher{tokens: satoken.New(kubetest.Client{Interface: kube}, satoken.MinTTL), confined: confined, sts: stsClient, metrics: m, issued: f, now: clk.Now}
	rig.cache = creds.New(rig.fetcher, creds.Config{Clock: clk, Observer: notifying{observer: observer{metrics: m, log: log}, stored: stored}})
	rig.provider = &provider{pods: stubPods{pod: testPod}, roles: mapper, cache: rig.cache, metrics: m, log: log}
	return rig
}

// notifying is the agent's observer that also says when the cache stored credentials: a background refresh has
// no caller to return to.
type notifying struct {
	observer
	stored chan<- string
}

func (n notifying) Stored(r creds.Request, c creds.Credentials, reason string) {
	n.observer.Stored(r, c, reason)
	select {
	case n.stored <- reason:
	default: // the cache holds its lock: never block it
	}
}

// serve asks for testPod's credentials as the pod would.
func (r *credentialRig) serve(t *testing.T) (metadata.Credentials, error) {
	t.Helper()
	return r.provider.Credentials(t.Context(), testCaller)
}

// refresh lets the cache's background loop rotate testPod's credentials, as it does when their rotation falls due,
// and returns once it has stored new ones.
func (r *credentialRig) refresh(t *testing.T) {
	t.Helper()
	role, err := r.mapper.RoleFor(testPod.Namespace, testPod.ServiceAccount)
	if err != nil {
		t.Fatalf("RoleFor() error = %v", err)
	}
	for drained := false; !drained; { // what was stored before
		select {
		case <-r.stored:
		default:
			drained = true
		}
	}
	r.cache.Retain([]creds.Request{requestFor(testPod, role)})
	// A one-hour session rotates with 30 minutes left (a little more, for jitter) and is served down to 15: the step
	// makes the rotation due before Run first looks, while the old credentials are still served.
	r.clock.Step(31 * time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.cache.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case reason := <-r.stored:
		if reason != "refresh" {
			t.Fatalf("the cache stored credentials for %q, want a refresh", reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no refresh stored; STS calls: %+v", r.sts.Calls())
	}
}

// issuedSessions serves the stand-in and keeps the credentials of every session it issues, in order: what STS
// answered, to hold what the agent serves and records against.
type issuedSessions struct {
	next http.Handler

	mu       sync.Mutex
	sessions []issuedSession
}

type issuedSession struct {
	action                               string
	accessKeyID, secretKey, sessionToken string
	expiration                           time.Time
}

// stsResult finds a successful answer's result element, which names the action.
var stsResult = regexp.MustCompile(`<(AssumeRole|AssumeRoleWithWebIdentity)Result>`)

func (s *issuedSessions) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	s.next.ServeHTTP(rec, r)
	body := rec.Body.String()
	if m := stsResult.FindStringSubmatch(body); m != nil {
		exp, _ := time.Parse(time.RFC3339, xmlText(body, "Expiration"))
		s.mu.Lock()
		s.sessions = append(s.sessions, issuedSession{action: m[1], accessKeyID: xmlText(body, "AccessKeyId"),
			secretKey: xmlText(body, "SecretAccessKey"), sessionToken: xmlText(body, "SessionToken"), expiration: exp})
		s.mu.Unlock()
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// xmlText is the text of the first element name in doc; the stand-in's credentials need no unescaping.
func xmlText(doc, name string) string {
	_, rest, ok := strings.Cut(doc, "<"+name+">")
	text, _, closed := strings.Cut(rest, "</"+name+">")
	if !ok || !closed {
		return ""
	}
	return text
}

// all returns the sessions issued so far, oldest first.
func (s *issuedSessions) all() []issuedSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sessions)
}

// secrets returns every issued session's secret key and session token, and the pod's web identity token.
func (s *issuedSessions) secrets() []string {
	out := []string{testWebToken}
	for _, sess := range s.all() {
		out = append(out, sess.secretKey, sess.sessionToken)
	}
	return out
}

// assertHoldsNoSecret fails if text holds any of secrets.
func assertHoldsNoSecret(t *testing.T, what, text string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s holds a secret key, session token or web identity token:\n%s", what, text)
			return
		}
	}
}

// TestChainedRoleEndToEnd: a pod whose ServiceAccount chains its role to another account's is served the chained
// session: STS is asked for the first role without the session policy, then, signed by that first session, for the
// chained one with the same session name, the external ID and the session policies; the issuance record names both
// roles and the key served; and a refresh does both calls again and serves a new chained session.
func TestChainedRoleEndToEnd(t *testing.T) {
	rig := newCredentialRig(t, chainedAnnotations(chainExternalID))
	rig.sts.RequireExternalID(chainedRoleARN, chainExternalID)
	compact := compactPolicy(t)

	for round, step := range []func(){nil, func() { rig.refresh(t) }} {
		if step != nil {
			step()
		}
		got, err := rig.serve(t)
		if err != nil {
			t.Fatalf("round %d: Credentials() error = %v", round, err)
		}

		calls, sessions := rig.sts.Calls(), rig.issued.all()
		if len(calls) != 2*(round+1) || len(sessions) != len(calls) {
			t.Fatalf("round %d: STS calls = %+v, want two a round, each issuing a session", round, calls)
		}
		first, chained := calls[2*round], calls[2*round+1]
		firstSession, chainedSession := sessions[2*round], sessions[2*round+1]
		// The first session only signs the chained call: the shortest STS grants.
		wantFirst := ststest.Call{Action: ststest.AssumeRoleWithWebIdentity, RoleARN: testRoleARN, SessionName: testSessionName,
			Duration: roles.MinDuration}
		if !equalCalls(first, wantFirst) {
			t.Errorf("round %d: first STS call = %+v, want %+v (no session policy: it narrows the chained session; shortest duration)", round, first, wantFirst)
		}
		wantChained := ststest.Call{Action: ststest.AssumeRole, RoleARN: chainedRoleARN, SessionName: testSessionName,
			ExternalID: chainExternalID, Policy: compact, PolicyARNs: []string{sessionPolicyARN}, Duration: time.Hour,
			AccessKeyID: firstSession.accessKeyID}
		if !equalCalls(chained, wantChained) {
			t.Errorf("round %d: second STS call = %+v, want %+v (signed by this round's first session)", round, chained, wantChained)
		}
		if firstSession.action != ststest.AssumeRoleWithWebIdentity || chainedSession.action != ststest.AssumeRole {
			t.Fatalf("round %d: sessions issued by %s then %s, want %s then %s", round, firstSession.action, chainedSession.action,
				ststest.AssumeRoleWithWebIdentity, ststest.AssumeRole)
		}

		want := metadata.Credentials{RoleName: "cross-account-reader", AccessKeyID: chainedSession.accessKeyID,
			SecretAccessKey: chainedSession.secretKey, SessionToken: chainedSession.sessionToken,
			Expiration: chainedSession.expiration, LastUpdated: rig.clock.Now(), AccountID: "210987654321"}
		if got != want {
			t.Errorf("round %d: Credentials() = %+v, want the chained session %+v", round, got, want)
		}
		if round > 0 && got.AccessKeyID == sessions[1].accessKeyID {
			t.Errorf("round %d: Credentials() served access key %s again, want the refreshed session's", round, got.AccessKeyID)
		}
		if snap := rig.cache.Snapshot(); len(snap) != 1 || snap[0].ServedRoleARN != chainedRoleARN || snap[0].AccessKeyID != chainedSession.accessKeyID {
			t.Errorf("round %d: cache holds %+v, want the chained role's session %s", round, snap, chainedSession.accessKeyID)
		}
		if n := rig.tokens.Load(); n != int32(round+1) {
			t.Errorf("round %d: %d TokenRequests, want one a round", round, n)
		}

		recs := readIssuance(t, rig)
		if len(recs) != round+1 {
			t.Fatalf("round %d: %d issuance records, want %d", round, len(recs), round+1)
		}
		if rec := recs[round]; rec.RoleARN != testRoleARN || rec.ChainedRoleARN != chainedRoleARN || rec.AccessKeyID != chainedSession.accessKeyID {
			t.Errorf("round %d: issuance record = %+v, want roles %s and %s and access key %s", round, rec, testRoleARN, chainedRoleARN,
				chainedSession.accessKeyID)
		}
	}
	assertHoldsNoSecret(t, "the log", rig.logs.String(), rig.issued.secrets())
}

// equalCalls compares two recorded STS calls, a nil and an empty list of policy ARNs alike.
func equalCalls(a, b ststest.Call) bool {
	pa, pb := a.PolicyARNs, b.PolicyARNs
	a.PolicyARNs, b.PolicyARNs = nil, nil
	return reflect.DeepEqual(a, b) && slices.Equal(pa, pb)
}

// TestChainedRoleRefused: when the chained call fails the pod gets an error and no credentials, never the first
// role's, and nothing is recorded as issued.
func TestChainedRoleRefused(t *testing.T) {
	tests := []struct {
		name       string
		externalID string // annotated; the stand-in requires chainExternalID
		inject     bool   // the stand-in refuses the next AssumeRole
	}{
		{name: "chained call denied", externalID: chainExternalID, inject: true},
		{name: "wrong external ID", externalID: "iamlet-guess"},
		{name: "no external ID", externalID: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rig := newCredentialRig(t, chainedAnnotations(tt.externalID))
			rig.sts.RequireExternalID(chainedRoleARN, chainExternalID)
			if tt.inject {
				rig.sts.FailNext(ststest.AssumeRole, 1, &ststest.Error{Status: http.StatusForbidden, Code: "AccessDenied",
					Message: "User: arn:aws:sts::123456789012:assumed-role/reader/" + testSessionName + " is not authorized to perform: sts:AssumeRole"})
			}

			for attempt := range 2 { // the refusal, then the answer from backoff
				got, err := rig.serve(t)
				var se *sts.Error
				if !errors.Is(err, metadata.ErrForbidden) || !errors.As(err, &se) || se.Code != "AccessDenied" {
					t.Errorf("attempt %d: Credentials() error = %v, want forbidden by STS's AccessDenied", attempt, err)
				}
				if got != (metadata.Credentials{}) {
					t.Errorf("attempt %d: Credentials() = %+v with the chained call refused, want none", attempt, got)
				}
			}

			calls, sessions := rig.sts.Calls(), rig.issued.all()
			if len(calls) != 2 || calls[0].Code != "" || calls[1].Action != ststest.AssumeRole || calls[1].Code != "AccessDenied" {
				t.Fatalf("STS calls = %+v, want the first session issued and the chained call refused", calls)
			}
			if len(sessions) != 1 {
				t.Fatalf("sessions issued = %+v, want the first role's only", sessions)
			}
			if snap := rig.cache.Snapshot(); len(snap) != 1 || snap[0].Has || snap[0].AccessKeyID != "" {
				t.Errorf("cache holds %+v, want no credentials", snap)
			}
			if recs := readIssuance(t, rig); len(recs) != 0 {
				t.Errorf("issuance records = %+v, want none", recs)
			}
			logs := rig.logs.String()
			if strings.Contains(logs, sessions[0].accessKeyID) {
				t.Errorf("the log names the first session's access key %s, as if it were issued:\n%s", sessions[0].accessKeyID, logs)
			}
			assertHoldsNoSecret(t, "the log", logs, rig.issued.secrets())
		})
	}
}

// TestSessionPolicyWithoutChain: without a chained role the session policies narrow the one session there is, so they go
// on AssumeRoleWithWebIdentity.
func TestSessionPolicyWithoutChain(t *testing.T) {
	rig := newCredentialRig(t, map[string]string{roles.AnnotationRoleARN: testRoleARN,
		roles.AnnotationSessionPolicy: sessionPolicy, roles.AnnotationSessionPolicyARNs: sessionPolicyARN})
	got, err := rig.serve(t)
	if err != nil {
		t.Fatalf("Credentials() error = %v", err)
	}
	calls, sessions := rig.sts.Calls(), rig.issued.all()
	want := ststest.Call{Action: ststest.AssumeRoleWithWebIdentity, RoleARN: testRoleARN, SessionName: testSessionName,
		Policy: compactPolicy(t), PolicyARNs: []string{sessionPolicyARN}, Duration: time.Hour}
	if len(calls) != 1 || !equalCalls(calls[0], want) {
		t.Fatalf("STS calls = %+v, want only %+v", calls, want)
	}
	if got.RoleName != "reader" || got.AccessKeyID != sessions[0].accessKeyID {
		t.Errorf("Credentials() = role %q, access key %s, want reader's session %s", got.RoleName, got.AccessKeyID, sessions[0].accessKeyID)
	}
	if recs := readIssuance(t, rig); len(recs) != 1 || recs[0].ChainedRoleARN != "" || recs[0].AccessKeyID != sessions[0].accessKeyID {
		t.Errorf("issuance records = %+v, want one for %s without a chained role", recs, sessions[0].accessKeyID)
	}
}
