// Command gov2 is an unmodified aws-sdk-go-v2 workload for the end-to-end tests: it takes credentials
// from the SDK's default chain (in a pod with no credentials that is the instance metadata service),
// then reads an object of an S3 bucket and writes one. It prints one line per step:
//
//	creds <provider source> <access key id>
//	get ok | get denied <code>
//	put ok | put denied <code>
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

func main() {
	endpoint := flag.String("endpoint", "", "S3 endpoint")
	bucket := flag.String("bucket", "", "bucket to read (key seed) and write")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, *endpoint, *bucket); err != nil {
		fmt.Fprintln(os.Stderr, "gov2:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoint, bucket string) error {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	c, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return fmt.Errorf("retrieve credentials: %w", err)
	}
	fmt.Printf("creds %s %s\n", c.Source, c.AccessKeyID)
	if bucket == "" {
		return nil
	}
	s3c := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
	})
	out, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("seed")})
	if err == nil {
		out.Body.Close()
	}
	report("get", err)
	_, err = s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("gov2"), Body: strings.NewReader("hello")})
	report("put", err)
	return nil
}

func report(op string, err error) {
	var api smithy.APIError
	switch {
	case err == nil:
		fmt.Println(op, "ok")
	case errors.As(err, &api):
		fmt.Println(op, "denied", api.ErrorCode())
	default:
		fmt.Println(op, "error", err)
	}
}
