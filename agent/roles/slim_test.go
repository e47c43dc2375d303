package roles

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestAnnotationsOnly: the informers hold, per ServiceAccount and Namespace, the names and only the annotations the
// mapper reads; kubectl's last-applied-configuration and the like are dropped.
func TestAnnotationsOnly(t *testing.T) {
	big := strings.Repeat("x", 4096)
	sa := &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", UID: "u1", ResourceVersion: "7", Labels: map[string]string{"a": "b"},
			Annotations: map[string]string{
				AnnotationRoleARN: "arn:aws:iam::123456789012:role/r", AnnotationSessionPolicy: "{}",
				"kubectl.kubernetes.io/last-applied-configuration": big, "example.com/other": "y",
			}},
		Secrets: []corev1.ObjectReference{{Name: "token"}},
	}
	o, _ := annotationsOnly(sa)
	got := o.(*corev1.ServiceAccount)
	want := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", UID: "u1", ResourceVersion: "7",
		Annotations: map[string]string{AnnotationRoleARN: "arn:aws:iam::123456789012:role/r", AnnotationSessionPolicy: "{}"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("annotationsOnly(ServiceAccount) = %+v, want %+v", got, want)
	}
	o, _ = annotationsOnly(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns",
		Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": big}}})
	ns := o.(*corev1.Namespace)
	if ns.Name != "ns" || ns.Annotations != nil {
		t.Errorf("annotationsOnly(Namespace) = %+v, want the name and no annotations", ns)
	}
}
