// Command s3ops is an unmodified aws-sdk-go-v2 workload for the least-privilege tests: it takes credentials from
// the SDK's default chain (the instance metadata service, in a pod) and makes the S3 calls its arguments name, in
// order, each as OP:BUCKET/KEY (list takes a prefix as KEY). It prints one line per step:
//
//	creds <access key id>
//	<op> <bucket>/<key> ok | <op> <bucket>/<key> denied <code>
//
// Ops: put, get, head, list, multipart (create, upload one part, complete), delete.
package main

import (
	"bytes"
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
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

func main() {
	endpoint := flag.String("endpoint", "", "S3 endpoint")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := run(ctx, *endpoint, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "s3ops:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoint string, ops []string) error {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	c, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return fmt.Errorf("retrieve credentials: %w", err)
	}
	fmt.Printf("creds %s\n", c.AccessKeyID)
	api := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
	})
	for _, op := range ops {
		name, target, ok := strings.Cut(op, ":")
		bucket, key, _ := strings.Cut(target, "/")
		if !ok || bucket == "" {
			return fmt.Errorf("%q: want OP:BUCKET/KEY", op)
		}
		err := call(ctx, api, name, bucket, key)
		var apiErr smithy.APIError
		switch {
		case err == nil:
			fmt.Printf("%s %s ok\n", name, target)
		case errors.As(err, &apiErr):
			fmt.Printf("%s %s denied %s\n", name, target, apiErr.ErrorCode())
		default:
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return nil
}

func call(ctx context.Context, api *s3.Client, op, bucket, key string) error {
	b, k := aws.String(bucket), aws.String(key)
	switch op {
	case "put":
		_, err := api.PutObject(ctx, &s3.PutObjectInput{Bucket: b, Key: k, Body: strings.NewReader("hello from " + key)})
		return err
	case "get":
		out, err := api.GetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: k})
		if err == nil {
			out.Body.Close()
		}
		return err
	case "head":
		_, err := api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: b, Key: k})
		return err
	case "list":
		_, err := api.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: b, Prefix: k})
		return err
	case "delete":
		_, err := api.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: b, Key: k})
		return err
	case "multipart":
		up, err := api.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: b, Key: k})
		if err != nil {
			return err
		}
		part, err := api.UploadPart(ctx, &s3.UploadPartInput{Bucket: b, Key: k, UploadId: up.UploadId, PartNumber: aws.Int32(1),
			Body: bytes.NewReader(bytes.Repeat([]byte("x"), 1024))})
		if err != nil {
			return err
		}
		_, err = api.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: b, Key: k, UploadId: up.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: []types.CompletedPart{{ETag: part.ETag, PartNumber: aws.Int32(1)}}}})
		return err
	}
	return fmt.Errorf("unknown op %q", op)
}
