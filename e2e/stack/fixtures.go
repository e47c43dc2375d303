package stack

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/iamlet/iamlet/agent/roles"
)

// TB is the part of testing.TB the harness uses, so the demo can drive it too.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Cleanup(func())
}

// ServiceAccounts of namespace "default": SAA and SAB carry MinIO's two roles (B with its own audience),
// SANoRole has no annotation.
const (
	SAA      = "app-a"
	SAB      = "app-b"
	SANoRole = "no-role"
)

// fixtures creates the namespace, ServiceAccounts and bucket every test and the demo use.
func (s *Stack) fixtures() error {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := s.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for _, sa := range []struct {
		name string
		ann  map[string]string
	}{
		{SAA, map[string]string{roles.AnnotationRoleARN: RoleARN(AudienceA)}},
		{SAB, map[string]string{roles.AnnotationRoleARN: RoleARN(AudienceB), roles.AnnotationAudience: AudienceB}},
		{SANoRole, nil},
	} {
		obj := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.name, Annotations: sa.ann}}
		if _, err := s.Kube.CoreV1().ServiceAccounts("default").Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("service account %s: %w", sa.name, err)
		}
	}
	return makeBucket(ctx)
}

// makeBucket creates the bucket, with an object "seed", using MinIO's root credentials from the node.
func makeBucket(ctx context.Context) error {
	c := s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(STSEndpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(MinIOUser, MinIOPassword, ""),
	})
	for _, b := range []string{Bucket, OtherBucket} {
		if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(b)}); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(Bucket), Key: aws.String("seed"), Body: strings.NewReader("seed")})
	return err
}
