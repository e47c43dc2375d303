package roles

import (
	"maps"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// TestStoreKeepsWhatTheMapperReads: per ServiceAccount only the annotations the mapper reads, and no entry at all for
// one without any (most of a cluster's); every Namespace's name. Handlers run only when what is kept changes.
func TestStoreKeepsWhatTheMapperReads(t *testing.T) {
	big := strings.Repeat("x", 4096)
	sa := func(name string, ann map[string]string) *corev1.ServiceAccount {
		return &corev1.ServiceAccount{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: "u1", ResourceVersion: "7", Labels: map[string]string{"a": "b"}, Annotations: ann},
			Secrets:    []corev1.ObjectReference{{Name: "token"}},
		}
	}
	annotated := sa("app", map[string]string{
		AnnotationRoleARN: "arn:aws:iam::123456789012:role/r", AnnotationSessionPolicy: "{}",
		"kubectl.kubernetes.io/last-applied-configuration": big, "example.com/other": "y",
	})
	bare := sa("default", map[string]string{"kubectl.kubernetes.io/last-applied-configuration": big})

	s := newStore(false)
	calls := 0
	s.addHandler(func() { calls++ })
	if err := s.Replace([]any{annotated, bare}, "1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.synced:
	default:
		t.Error("synced not closed by the first Replace")
	}
	want := map[string]string{AnnotationRoleARN: "arn:aws:iam::123456789012:role/r", AnnotationSessionPolicy: "{}"}
	if got, ok := s.get(objectKey{"ns", "app"}); !ok || !reflect.DeepEqual(maps.Collect(got.each()), want) {
		t.Errorf("get(ns/app) = %q, %v, want %v", got, ok, want)
	}
	if got, ok := s.get(objectKey{"ns", "default"}); ok {
		t.Errorf("get(ns/default) = %v, kept; want a ServiceAccount without a known annotation not kept", got)
	}
	if calls != 1 {
		t.Errorf("first Replace: %d handler calls, want 1", calls)
	}

	// Relisting the same objects, or changing what the mapper does not read, changes nothing.
	_ = s.Replace([]any{annotated, bare}, "2")
	_ = s.Update(sa("app", map[string]string{AnnotationRoleARN: "arn:aws:iam::123456789012:role/r", AnnotationSessionPolicy: "{}", "example.com/other": "z"}))
	_ = s.Update(sa("default", nil))
	_ = s.Delete(bare)
	if calls != 1 {
		t.Errorf("changes to nothing kept: %d handler calls in all, want still 1", calls)
	}
	_ = s.Update(sa("default", map[string]string{AnnotationRoleARN: "arn:aws:iam::123456789012:role/d"}))
	_ = s.Update(sa("app", nil)) // its last known annotation removed: dropped
	if _, ok := s.get(objectKey{"ns", "app"}); ok {
		t.Error("ns/app still kept after its annotations were removed")
	}
	_ = s.Delete(cache.DeletedFinalStateUnknown{Key: "ns/default", Obj: sa("default", nil)})
	if _, ok := s.get(objectKey{"ns", "default"}); ok {
		t.Error("ns/default still kept after its deletion")
	}
	if calls != 4 {
		t.Errorf("three changes to what is kept: %d handler calls in all, want 4", calls)
	}

	namespaces := newStore(true)
	_ = namespaces.Replace([]any{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": big}}}}, "1")
	if got, ok := namespaces.get(objectKey{name: "ns"}); !ok || got != "" {
		t.Errorf("get(namespace ns) = %v, %v, want kept with no annotations", got, ok)
	}
}

// TestStoreTransformer: a streamed list's objects are slimmed to their names and known annotations as they arrive.
func TestStoreTransformer(t *testing.T) {
	o, err := newStore(false).Transformer()(&corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", UID: "u1", Annotations: map[string]string{
			AnnotationRoleARN: "arn:aws:iam::123456789012:role/r", "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
		Secrets: []corev1.ObjectReference{{Name: "token"}},
	})
	want := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns",
		Annotations: map[string]string{AnnotationRoleARN: "arn:aws:iam::123456789012:role/r"}}}
	if err != nil || !reflect.DeepEqual(o, want) {
		t.Errorf("Transformer()(ServiceAccount) = %+v, %v, want %+v", o, err, want)
	}
}

// TestAnnotationsEncoding: any key and value, NUL bytes and lengths past one varint byte included, reads back as
// written, and a missing key reads as absent.
func TestAnnotationsEncoding(t *testing.T) {
	in := map[string]string{
		AnnotationRoleARN: "arn:aws:iam::123456789012:role/r", AnnotationAudience: "",
		AnnotationSessionPolicy: strings.Repeat("\x00{}é", 100), "iamlet.dev/x\x00y": "z", "example.com/dropped": "1",
	}
	a := known(in)
	delete(in, "example.com/dropped")
	if got := maps.Collect(a.each()); !reflect.DeepEqual(got, in) {
		t.Errorf("known(m) decodes to %q, want %q", got, in)
	}
	for k, v := range in {
		if got, ok := a.get(k); !ok || got != v {
			t.Errorf("get(%q) = %q, %v, want %q, true", k, got, ok, v)
		}
	}
	if got, ok := a.get(AnnotationChainRoleARN); ok {
		t.Errorf("get(absent) = %q, true, want absent", got)
	}
	if known(nil) != "" || known(map[string]string{"a": "b"}) != "" {
		t.Error("known of no annotation the mapper reads is not empty")
	}
}
