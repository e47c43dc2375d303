// Command gov1 is an unmodified aws-sdk-go (v1) workload for the end-to-end tests: it takes credentials
// from the SDK's default chain (in a pod with no credentials that is the instance metadata service, or
// the container endpoint when AWS_CONTAINER_CREDENTIALS_FULL_URI is set), then reads an object of an S3
// bucket and writes one. It prints one line per step, as e2e/clients/gov2 does:
//
//	creds <provider name> <access key id>
//	get ok | get denied <code> | get error <message>
//	put ok | put denied <code> | put error <message>
//
// With -region it prints "region <name>" from the SDK's own IMDS region lookup (the instance identity
// document) and stops. With -refetch it keeps its session (and so its IMDSv2 token) after the first
// "creds" line and, for every line read on stdin, expires the credentials and fetches them again,
// printing "creds ..." or "error <message>": a test can restart the agent in between.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/ec2metadata"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

func main() {
	endpoint := flag.String("endpoint", "", "S3 endpoint")
	bucket := flag.String("bucket", "", "bucket to read (key seed) and write")
	region := flag.Bool("region", false, "print the region the SDK reads from the instance metadata service, and stop")
	refetch := flag.Bool("refetch", false, "after the first fetch, fetch the credentials again for every line on stdin")
	flag.Parse()
	if err := run(*endpoint, *bucket, *region, *refetch); err != nil {
		fmt.Fprintln(os.Stderr, "gov1:", err)
		os.Exit(1)
	}
}

func run(endpoint, bucket string, region, refetch bool) error {
	sess, err := session.NewSession()
	if err != nil {
		return err
	}
	if region {
		r, err := ec2metadata.New(sess).Region()
		if err != nil {
			return fmt.Errorf("region from the instance metadata service: %w", err)
		}
		fmt.Println("region", r)
		return nil
	}
	if err := printCreds(sess); err != nil {
		return err
	}
	if refetch {
		// The provider keeps its ec2metadata client, and that client its token, across these fetches.
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			sess.Config.Credentials.Expire()
			if err := printCreds(sess); err != nil {
				fmt.Println("error", oneLine(err))
			}
		}
		return in.Err()
	}
	if bucket == "" {
		return nil
	}
	c := s3.New(sess, &aws.Config{Endpoint: aws.String(endpoint), S3ForcePathStyle: aws.Bool(true)})
	out, err := c.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("seed")})
	if err == nil {
		out.Body.Close()
	}
	report("get", err)
	_, err = c.PutObject(&s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("gov1"), Body: strings.NewReader("hello")})
	report("put", err)
	return nil
}

func printCreds(sess *session.Session) error {
	v, err := sess.Config.Credentials.Get()
	if err != nil {
		return fmt.Errorf("retrieve credentials: %w", err)
	}
	fmt.Printf("creds %s %s\n", v.ProviderName, v.AccessKeyID)
	return nil
}

func report(op string, err error) {
	var aerr awserr.Error
	switch {
	case err == nil:
		fmt.Println(op, "ok")
	case errors.As(err, &aerr):
		fmt.Println(op, "denied", aerr.Code())
	default:
		fmt.Println(op, "error", oneLine(err))
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }
