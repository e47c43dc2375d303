package roles_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/iamlet/iamlet/agent/kube/kubetest"
	"github.com/iamlet/iamlet/agent/roles"
)

const (
	reader = "arn:aws:iam::123456789012:role/reader"
	writer = "arn:aws:iam::123456789012:role/writer"
)

func TestFromAnnotations(t *testing.T) {
	base := roles.Role{ARN: reader, Audience: "sts.amazonaws.com", Duration: time.Hour, Regional: true}
	with := func(f func(*roles.Role)) roles.Role {
		r := base
		f(&r)
		return r
	}
	tests := []struct {
		name    string
		a       map[string]string
		cfg     roles.Config
		want    roles.Role
		wantErr error
	}{
		{"defaults", map[string]string{roles.AnnotationRoleARN: reader}, roles.Config{}, base, nil},
		{"arn with spaces", map[string]string{roles.AnnotationRoleARN: "  " + reader + "\n"}, roles.Config{}, base, nil},
		{"configured defaults", map[string]string{roles.AnnotationRoleARN: reader},
			roles.Config{DefaultAudience: "iamlet", DefaultDuration: 2 * time.Hour},
			with(func(r *roles.Role) { r.Audience, r.Duration = "iamlet", 2*time.Hour }), nil},
		{"audience", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationAudience: " custom-aud "}, roles.Config{},
			with(func(r *roles.Role) { r.Audience = "custom-aud" }), nil},
		{"empty audience", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationAudience: ""}, roles.Config{}, base, nil},
		{"regional false", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationRegionalSTS: "false"}, roles.Config{},
			with(func(r *roles.Role) { r.Regional = false }), nil},
		{"regional FALSE", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationRegionalSTS: " FALSE "}, roles.Config{},
			with(func(r *roles.Role) { r.Regional = false }), nil},
		{"regional true", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationRegionalSTS: "true"}, roles.Config{}, base, nil},
		{"regional other", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationRegionalSTS: "no"}, roles.Config{}, base, nil},
		{"duration 2h", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "2h"}, roles.Config{},
			with(func(r *roles.Role) { r.Duration = 2 * time.Hour }), nil},
		{"duration 7200", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "7200"}, roles.Config{},
			with(func(r *roles.Role) { r.Duration = 2 * time.Hour }), nil},
		{"duration 1h30m", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "1h30m"}, roles.Config{},
			with(func(r *roles.Role) { r.Duration = 90 * time.Minute }), nil},
		{"duration minimum", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "900"}, roles.Config{},
			with(func(r *roles.Role) { r.Duration = 15 * time.Minute }), nil},
		{"duration maximum", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "12h"}, roles.Config{},
			with(func(r *roles.Role) { r.Duration = 12 * time.Hour }), nil},
		{"duration below minimum", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "899"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"duration above maximum", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "43201"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"duration 13h", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "13h"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"duration zero", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "0"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"duration negative", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "-1h"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"duration garbage", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "an hour"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"duration trailing junk", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "3600x"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"duration signed seconds", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "+3600"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"duration overflow", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "99999999999999999999"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
		{"no role", map[string]string{roles.AnnotationAudience: "x"}, roles.Config{}, roles.Role{}, roles.ErrNoRole},
		{"nil annotations", nil, roles.Config{}, roles.Role{}, roles.ErrNoRole},
		{"blank role", map[string]string{roles.AnnotationRoleARN: "  "}, roles.Config{}, roles.Role{}, roles.ErrNoRole},
		{"invalid role", map[string]string{roles.AnnotationRoleARN: "arn:aws:iam::123456789012:user/bob"}, roles.Config{}, roles.Role{}, roles.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := roles.FromAnnotations(tt.a, tt.cfg)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("FromAnnotations(%v) = %+v, %v, want %v", tt.a, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("FromAnnotations(%v) = %+v, %v, want %+v", tt.a, got, err, tt.want)
			}
		})
	}
}

func TestValidateARN(t *testing.T) {
	long := "arn:aws:iam::123456789012:role/" + strings.Repeat("p/", 1006) + "reader" // 2049 characters, otherwise valid
	tests := []struct {
		arn  string
		want bool
	}{
		{"arn:aws:iam::123456789012:role/reader", true},
		{"arn:aws-cn:iam::123456789012:role/reader", true},
		{"arn:aws-us-gov:iam::123456789012:role/reader", true},
		{"arn:minio:iam:::role/dummy-internal", true},
		{"arn:aws:iam:::role/x", true}, // 20 characters: STS's minimum
		{"arn:aws:iam::123456789012:role/team/app/reader", true},
		{"arn:aws:iam::123456789012:role/service-role/a_b+c=d,e.f@g-h", true},
		{"arn:aws:iam::123456789012:role/" + strings.Repeat("r", 64), true},
		{"arn:aws:iam::123456789012:role/" + strings.Repeat("r", 65), false},
		{long, false},
		{"", false},
		{"reader", false},
		{"arn:aws:iam:::role/", false},
		{"arn:aws:iam::123456789012:role/", false},
		{"arn:aws:iam::123456789012:role/team/", false},
		{"arn:aws:sts::123456789012:role/reader", false},
		{"arn:aws:sts::123456789012:assumed-role/reader/session", false},
		{"arn:aws:iam::123456789012:user/reader", false},
		{"arn:aws:iam::123456789012:policy/reader", false},
		{"arn:aws:iam:us-east-1:123456789012:role/reader", false},
		{"arn:AWS:iam::123456789012:role/reader", false},
		{"arn:aws:iam::12345678901:role/reader", false},
		{"arn:aws:iam::1234567890123:role/reader", false},
		{"arn:aws:iam::12345678901a:role/reader", false},
		{"arn:aws:iam::123456789012:role/reader\n", false},
		{"arn:aws:iam::123456789012:role/reader\nx", false},
		{" arn:aws:iam::123456789012:role/reader", false},
		{"arn:aws:iam::123456789012:role/read er", false},
		{"arn:aws:iam::123456789012:role/reader;id", false},
		{"arn:aws:iam::123456789012:role/reader\"", false},
		{"arn:aws:iam::123456789012:role/reader\x00", false},
		{"arn:aws:iam::123456789012:role/reader<x>", false},
		{"arn:aws:iam::123456789012:role/rëader", false},
		{"arn:aws:iam::123456789012:role/te am/reader", false},
		{"arn:aws:iam::123456789012:role/team\t/reader", false},
	}
	for _, tt := range tests {
		err := roles.ValidateARN(tt.arn)
		if got := err == nil; got != tt.want {
			t.Errorf("ValidateARN(%q) = %v, want valid %v", tt.arn, err, tt.want)
		}
		if err != nil && !errors.Is(err, roles.ErrInvalid) {
			t.Errorf("ValidateARN(%q) = %v, want one wrapping ErrInvalid", tt.arn, err)
		}
	}
}

func TestRoleName(t *testing.T) {
	tests := []struct{ arn, want string }{
		{"arn:aws:iam::123456789012:role/reader", "reader"},
		{"arn:aws:iam::123456789012:role/team/app/reader", "reader"},
		{"arn:minio:iam:::role/dummy-internal", "dummy-internal"},
	}
	for _, tt := range tests {
		if got := roles.RoleName(tt.arn); got != tt.want {
			t.Errorf("RoleName(%q) = %q, want %q", tt.arn, got, tt.want)
		}
	}
}

func TestAllowed(t *testing.T) {
	tests := []struct {
		list, arn string
		want      bool
	}{
		{"*", reader, false}, // '*' stays within a segment; role ARNs have at least "role/"
		{"**", reader, true},
		{reader, reader, true},
		{"arn:aws:iam::123456789012:role/*", reader, true},
		{"arn:aws:iam::123456789012:role/*", "arn:aws:iam::123456789012:role/team/app/reader", false},
		{"arn:aws:iam::123456789012:role/**", "arn:aws:iam::123456789012:role/team/app/reader", true},
		{"arn:aws:iam::123456789012:role/team-a-*", "arn:aws:iam::123456789012:role/team-a-x/Admin", false},
		{"arn:aws:iam::123456789012:role/team-a-*/*", "arn:aws:iam::123456789012:role/team-a-x/Admin", true},
		{"arn:aws:iam::123456789012:role/team/*/reader", "arn:aws:iam::123456789012:role/team/app/reader", true},
		{"arn:aws:iam::123456789012:role/team/*/reader", "arn:aws:iam::123456789012:role/team/a/b/reader", false},
		{"arn:aws:iam::123456789012:role/team/**/reader", "arn:aws:iam::123456789012:role/team/a/b/reader", true},
		{"arn:aws:iam::123456789012:role/team-*", "arn:aws:iam::123456789012:role/team-a", true},
		{"arn:aws:iam::123456789012:role/team-*", "arn:aws:iam::123456789012:role/team-", true},
		{"arn:aws:iam::123456789012:role/team-*", "arn:aws:iam::123456789012:role/other", false},
		{"arn:aws:iam::*:role/reader", "arn:aws:iam::210987654321:role/reader", true},
		{"arn:aws:iam::*:role/reader", "arn:aws:iam::210987654321:role/writer", false},
		{"*/reader", "arn:aws:iam::123456789012:role/team/reader", false},
		{"**/reader", "arn:aws:iam::123456789012:role/team/reader", true},
		{"arn:*:iam::*:role/*-ro*", "arn:aws:iam::123456789012:role/app-ro-v2", true},
		{"arn:*:iam::*:role/*-ro*", "arn:aws:iam::123456789012:role/app-rw", false},
		{"***", reader, true},
		{writer + "," + reader, reader, true},
		{writer + ", " + reader, reader, true},
		{" " + writer + " ,\n  " + reader + " \n", reader, true},
		{"\n  " + writer + "\n  " + reader + "\n", reader, true},
		{writer + "\r\n" + reader + "\r\n", reader, true},
		{writer, reader, false},
		{"", reader, false},
		{" , ,\n", reader, false},
		{reader + "-extra", reader, false}, // pattern longer than the input
		{"arn:aws:iam::123456789012:role/reade", reader, false},
		{"arn:aws:iam::123456789012:role/reader*x", reader, false},
		{"ARN:AWS:IAM::123456789012:ROLE/READER", reader, false},
		{"arn:aws:iam::123456789012:role/reade?", reader, false},
		// Entries separate at commas and newlines only: a space-separated line is one pattern, which
		// no ARN matches, so a typo fails closed rather than leaving a bare "*" that allows everything.
		{writer + " " + reader, reader, false},
		{"arn:aws:iam::123456789012:role/team- *", reader, false},
	}
	for _, tt := range tests {
		if got := roles.Allowed(tt.list, tt.arn); got != tt.want {
			t.Errorf("Allowed(%q, %q) = %v, want %v", tt.list, tt.arn, got, tt.want)
		}
	}
}

func serviceAccount(name string, annotations map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: annotations}}
}

func namespace(allowed *string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}
	if allowed != nil {
		ns.Annotations = map[string]string{roles.AnnotationAllowedRoles: *allowed}
	}
	return ns
}

func ptr(s string) *string { return &s }

// start runs a mapper over a fake clientset holding objs until the test ends, and waits for it to sync.
// Call it inside a synctest bubble.
func start(t *testing.T, cfg roles.Config, objs ...runtime.Object) (*roles.Mapper, *fake.Clientset, <-chan struct{}) {
	t.Helper()
	client := fake.NewClientset(objs...)
	m := roles.New(kubetest.Client{Interface: client}, cfg)
	events := make(chan struct{}, 100)
	m.AddHandler(func() { events <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	m.Start(ctx)
	t.Cleanup(func() {
		cancel()
		m.Shutdown()
	})
	synctest.Wait()
	if !m.HasSynced() {
		t.Fatal("HasSynced() = false once the informers are idle, want true")
	}
	return m, client, events
}

// TestWaitForSync: start-up waits on the informers' own signal: it returns once both hold their lists, and with the
// context's error while they have not (here: never started).
func TestWaitForSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idle := roles.New(kubetest.Client{Interface: fake.NewClientset()}, roles.Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := idle.WaitForSync(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("WaitForSync on informers never started = %v, want context.Canceled", err)
		}
		m, _, _ := start(t, roles.Config{}, namespace(nil))
		if err := m.WaitForSync(context.Background()); err != nil {
			t.Errorf("WaitForSync once synced = %v, want nil", err)
		}
	})
}

func TestRoleFor(t *testing.T) {
	annotated := serviceAccount("app", map[string]string{roles.AnnotationRoleARN: reader})
	tests := []struct {
		name    string
		cfg     roles.Config
		objs    []runtime.Object
		sa      string
		want    string
		wantErr error
	}{
		{"no allow-list", roles.Config{}, []runtime.Object{namespace(nil), annotated}, "app", reader, nil},
		// The namespace's allow-list is unknown until the informer has it: fail closed, even without required lists.
		{"no namespace object", roles.Config{}, []runtime.Object{annotated}, "app", "", roles.ErrNotAllowed},
		{"allow-listed", roles.Config{}, []runtime.Object{namespace(ptr("arn:aws:iam::123456789012:role/*")), annotated}, "app", reader, nil},
		{"allow-list excludes", roles.Config{}, []runtime.Object{namespace(ptr(writer)), annotated}, "app", "", roles.ErrNotAllowed},
		{"empty allow-list", roles.Config{}, []runtime.Object{namespace(ptr("")), annotated}, "app", "", roles.ErrNotAllowed},
		{"required allow-list missing", roles.Config{RequireNamespaceAllowlist: true}, []runtime.Object{namespace(nil), annotated}, "app", "", roles.ErrNotAllowed},
		{"required allow-list, no namespace object", roles.Config{RequireNamespaceAllowlist: true}, []runtime.Object{annotated}, "app", "", roles.ErrNotAllowed},
		{"required allow-list present", roles.Config{RequireNamespaceAllowlist: true}, []runtime.Object{namespace(ptr(reader)), annotated}, "app", reader, nil},
		{"service account missing", roles.Config{}, []runtime.Object{namespace(nil), annotated}, "other", "", roles.ErrNoRole},
		{"service account without role", roles.Config{}, []runtime.Object{namespace(nil), serviceAccount("app", nil)}, "app", "", roles.ErrNoRole},
		{"invalid role", roles.Config{}, []runtime.Object{namespace(nil),
			serviceAccount("app", map[string]string{roles.AnnotationRoleARN: "arn:aws:iam::123456789012:user/bob"})}, "app", "", roles.ErrInvalid},
		{"invalid duration", roles.Config{}, []runtime.Object{namespace(nil),
			serviceAccount("app", map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionDuration: "1d"})}, "app", "", roles.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m, _, _ := start(t, tt.cfg, tt.objs...)
				got, err := m.RoleFor("ns", tt.sa)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Errorf("RoleFor(ns, %s) = %+v, %v, want %v", tt.sa, got, err, tt.wantErr)
					}
					return
				}
				if err != nil || got.ARN != tt.want {
					t.Errorf("RoleFor(ns, %s) = %+v, %v, want %s", tt.sa, got, err, tt.want)
				}
				if got.Audience != "sts.amazonaws.com" || got.Duration != time.Hour || !got.Regional {
					t.Errorf("RoleFor(ns, %s) = %+v, want the default audience, duration and regional STS", tt.sa, got)
				}
			})
		})
	}
}

// TestRoleForNarrowing: the mapper reads session policies from both the ServiceAccount and its Namespace, a bad
// one is ErrInvalidPolicy, and a chained role must pass the namespace's allow-list too: it is the role the pod holds.
func TestRoleForNarrowing(t *testing.T) {
	const (
		policy  = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}`
		other   = "arn:aws:iam::444455556666:role/elsewhere"
		chained = "arn:aws:iam::123456789012:role/chained"
	)
	nsWith := func(ann map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: ann}}
	}
	tests := []struct {
		name       string
		ns         *corev1.Namespace
		sa         map[string]string
		wantErr    error
		wantPolicy bool
		wantChain  string
	}{
		{"service account policy", namespace(nil), map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionPolicy: policy}, nil, true, ""},
		{"namespace policy as default", nsWith(map[string]string{roles.AnnotationSessionPolicy: policy}), map[string]string{roles.AnnotationRoleARN: reader}, nil, true, ""},
		{"bad policy", namespace(nil), map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationSessionPolicy: "{"}, roles.ErrInvalidPolicy, false, ""},
		{"chained role, no allow-list", namespace(nil), map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationChainRoleARN: other}, nil, false, other},
		{"chained role allow-listed", namespace(ptr(reader + "," + chained)), map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationChainRoleARN: chained}, nil, false, chained},
		{"chained role not allow-listed", namespace(ptr(reader)), map[string]string{roles.AnnotationRoleARN: reader, roles.AnnotationChainRoleARN: other}, roles.ErrNotAllowed, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m, _, _ := start(t, roles.Config{}, tt.ns, serviceAccount("app", tt.sa))
				got, err := m.RoleFor("ns", "app")
				if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
					t.Fatalf("RoleFor = %+v, %v; want error %v", got, err, tt.wantErr)
				}
				if err != nil {
					return
				}
				if (got.Narrowing.Policy != "") != tt.wantPolicy || got.Narrowing.ChainRoleARN != tt.wantChain || got.ARN != reader {
					t.Errorf("RoleFor = %+v; want policy %v, chain %q", got, tt.wantPolicy, tt.wantChain)
				}
			})
		})
	}
}

func TestRoleForSeesChangesWithoutRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, client, events := start(t, roles.Config{}, namespace(ptr(reader+","+writer)), serviceAccount("app", map[string]string{roles.AnnotationRoleARN: reader}))
		for len(events) > 0 {
			<-events
		}
		ctx := context.Background()
		steps := []struct {
			name    string
			change  func() error
			want    string
			wantErr error
			quiet   bool // nothing the mapper reads changed: no handler call
		}{
			{"role changed", func() error {
				_, err := client.CoreV1().ServiceAccounts("ns").Update(ctx, serviceAccount("app", map[string]string{roles.AnnotationRoleARN: writer}), metav1.UpdateOptions{})
				return err
			}, writer, nil, false},
			{"allow-list narrowed", func() error {
				_, err := client.CoreV1().Namespaces().Update(ctx, namespace(ptr(reader)), metav1.UpdateOptions{})
				return err
			}, "", roles.ErrNotAllowed, false},
			{"role removed", func() error {
				_, err := client.CoreV1().ServiceAccounts("ns").Update(ctx, serviceAccount("app", nil), metav1.UpdateOptions{})
				return err
			}, "", roles.ErrNoRole, false},
			{"unannotated service account deleted", func() error {
				return client.CoreV1().ServiceAccounts("ns").Delete(ctx, "app", metav1.DeleteOptions{})
			}, "", roles.ErrNoRole, true},
			{"service account recreated", func() error {
				_, err := client.CoreV1().ServiceAccounts("ns").Create(ctx, serviceAccount("app", map[string]string{roles.AnnotationRoleARN: reader}), metav1.CreateOptions{})
				return err
			}, reader, nil, false},
			{"annotated service account deleted", func() error {
				return client.CoreV1().ServiceAccounts("ns").Delete(ctx, "app", metav1.DeleteOptions{})
			}, "", roles.ErrNoRole, false},
			{"unannotated service account created", func() error {
				_, err := client.CoreV1().ServiceAccounts("ns").Create(ctx, serviceAccount("other", nil), metav1.CreateOptions{})
				return err
			}, "", roles.ErrNoRole, true},
		}
		for _, s := range steps {
			if err := s.change(); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			synctest.Wait()
			if len(events) == 0 && !s.quiet {
				t.Errorf("%s: no handler call, want one (the agent re-derives its cache from it)", s.name)
			}
			if len(events) > 0 && s.quiet {
				t.Errorf("%s: %d handler calls, want none (nothing the mapper reads changed)", s.name, len(events))
			}
			for len(events) > 0 {
				<-events
			}
			got, err := m.RoleFor("ns", "app")
			if s.wantErr != nil {
				if !errors.Is(err, s.wantErr) {
					t.Errorf("%s: RoleFor() = %+v, %v, want %v", s.name, got, err, s.wantErr)
				}
				continue
			}
			if err != nil || got.ARN != s.want {
				t.Errorf("%s: RoleFor() = %+v, %v, want %s", s.name, got, err, s.want)
			}
		}
	})
}
