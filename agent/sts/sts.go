// Package sts exchanges a web identity token for role credentials with STS AssumeRoleWithWebIdentity.
// The call is unsigned: the agent holds no AWS credentials. It talks to AWS and never to Kubernetes.
package sts

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssts "github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	smithyendpoints "github.com/aws/smithy-go/endpoints"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Config says which STS to call.
type Config struct {
	Region string // the node's region; regional endpoint sts.REGION.amazonaws.com
	// Endpoint overrides every endpoint (tests point it at MinIO; private VPC endpoints in production).
	Endpoint   string
	HTTPClient *http.Client // nil: a client with conservative timeouts
}

// Request is one AssumeRoleWithWebIdentity call.
type Request struct {
	RoleARN          string
	SessionName      string
	WebIdentityToken string
	Duration         time.Duration
	Regional         bool // false: the global endpoint (eks.amazonaws.com/sts-regional-endpoints: "false")
}

// Credentials are the temporary credentials STS returned.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	AccountID       string // from the assumed-role ARN; empty when STS does not say (MinIO)
}

// Client calls STS.
type Client struct {
	regional *awssts.Client
	global   *awssts.Client
}

// New builds a client. Retries are off: the credential cache retries with its own backoff, so every
// STS call is counted once and a throttled STS is not hit again by the SDK behind our back.
func New(cfg Config) (*Client, error) {
	if cfg.Region == "" && cfg.Endpoint == "" {
		return nil, errors.New("sts: a region or an endpoint is required")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				TLSHandshakeTimeout:   3 * time.Second,
				ResponseHeaderTimeout: 5 * time.Second,
				MaxIdleConnsPerHost:   16,
				IdleConnTimeout:       90 * time.Second,
			},
		}
	}
	region := cfg.Region
	if region == "" {
		region = "us-east-1"
	}
	var endpoint *string
	if cfg.Endpoint != "" {
		endpoint = aws.String(cfg.Endpoint)
	}
	build := func(global bool) *awssts.Client {
		return awssts.New(awssts.Options{
			Region:       region,
			HTTPClient:   hc,
			Retryer:      aws.NopRetryer{},
			Credentials:  aws.AnonymousCredentials{},
			BaseEndpoint: endpoint,
		}, func(o *awssts.Options) {
			if global {
				o.EndpointResolverV2 = globalResolver{awssts.NewDefaultEndpointResolverV2()}
			}
		})
	}
	return &Client{regional: build(false), global: build(true)}, nil
}

// globalResolver resolves STS's global endpoint by AWS's own rule: sts.amazonaws.com for the regions
// that had it before regional endpoints, and the regional endpoint everywhere else (aws-cn, aws-us-gov
// and newer regions have no global one to fall back to).
type globalResolver struct{ awssts.EndpointResolverV2 }

func (r globalResolver) ResolveEndpoint(ctx context.Context, p awssts.EndpointParameters) (smithyendpoints.Endpoint, error) {
	p.UseGlobalEndpoint = aws.Bool(true)
	return r.EndpointResolverV2.ResolveEndpoint(ctx, p)
}

// AssumeRole calls AssumeRoleWithWebIdentity. Errors are *Error.
func (c *Client) AssumeRole(ctx context.Context, r Request) (Credentials, error) {
	api := c.regional
	if !r.Regional {
		api = c.global
	}
	in := &awssts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(r.RoleARN),
		RoleSessionName:  aws.String(r.SessionName),
		WebIdentityToken: aws.String(r.WebIdentityToken),
	}
	if r.Duration > 0 {
		in.DurationSeconds = aws.Int32(int32(r.Duration / time.Second))
	}
	out, err := api.AssumeRoleWithWebIdentity(ctx, in)
	if err != nil {
		e := classify(err)
		if r.WebIdentityToken != "" {
			// STS's ValidationError messages quote the values they reject; the token must not reach a log.
			e.msg = strings.ReplaceAll(e.msg, r.WebIdentityToken, "[web identity token]")
		}
		return Credentials{}, e
	}
	if out.Credentials == nil || out.Credentials.Expiration == nil {
		return Credentials{}, newError("EmptyResponse", false, errors.New("sts returned no credentials"))
	}
	creds := Credentials{
		AccessKeyID:     aws.ToString(out.Credentials.AccessKeyId),
		SecretAccessKey: aws.ToString(out.Credentials.SecretAccessKey),
		SessionToken:    aws.ToString(out.Credentials.SessionToken),
		Expiration:      out.Credentials.Expiration.UTC(),
	}
	if out.AssumedRoleUser != nil {
		creds.AccountID = accountOf(aws.ToString(out.AssumedRoleUser.Arn))
	}
	if creds.AccountID == "" {
		creds.AccountID = accountOf(r.RoleARN)
	}
	return creds, nil
}

// accountOf returns the account field of an ARN (arn:partition:service:region:account:resource).
func accountOf(arn string) string {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) < 6 {
		return ""
	}
	return parts[4]
}

// Error is a classified STS failure. Its message carries the code and STS's own message, with the web
// identity token, should STS quote it, redacted.
type Error struct {
	Code  string // STS error code, "HTTP5xx", "Network" or "Canceled"
	retry bool
	err   error
	msg   string
}

func newError(code string, retry bool, err error) *Error {
	return &Error{Code: code, retry: retry, err: err, msg: err.Error()}
}

func (e *Error) Error() string   { return "sts " + e.Code + ": " + e.msg }
func (e *Error) Unwrap() error   { return e.err }
func (e *Error) Retryable() bool { return e.retry }

// retryable error codes; everything else (AccessDenied, InvalidIdentityToken, ExpiredTokenException,
// IDPRejectedClaim, RegionDisabledException, ValidationError, ...) is terminal for the token that was sent.
var retryableCodes = map[string]bool{
	"IDPCommunicationError":         true,
	"Throttling":                    true,
	"ThrottlingException":           true,
	"RequestLimitExceeded":          true,
	"ServiceUnavailable":            true,
	"InternalFailure":               true,
	"InternalError":                 true,
	"PriorRequestNotComplete":       true,
	"TooManyRequestsException":      true,
	"RequestThrottledException":     true,
	"ProvisionedThroughputExceeded": true,
}

// classify turns an SDK error into *Error, once, next to the client.
func classify(err error) *Error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return newError("Canceled", true, err)
	}
	// The SDK wraps a failed send (refused, reset, timeout) in a ResponseError with status 0: it is the
	// network, not STS, that failed.
	var send *smithyhttp.RequestSendError
	if errors.As(err, &send) {
		return newError("Network", true, err)
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		code := api.ErrorCode()
		e := newError(code, retryableCodes[code], err)
		e.msg = api.ErrorMessage()
		var resp *smithyhttp.ResponseError
		if errors.As(err, &resp) {
			if status := resp.HTTPStatusCode(); retryableStatus(status) {
				e.retry = true
			}
			if code == "UnknownError" {
				// No error document (a proxy's page, an empty body): the status says more than the SDK's placeholder.
				e.Code = fmt.Sprintf("HTTP%d", resp.HTTPStatusCode())
			}
		}
		return e
	}
	var resp *smithyhttp.ResponseError
	if errors.As(err, &resp) {
		return newError(fmt.Sprintf("HTTP%d", resp.HTTPStatusCode()), retryableStatus(resp.HTTPStatusCode()), err)
	}
	return newError("Network", true, err)
}

func retryableStatus(code int) bool { return code >= 500 || code == http.StatusTooManyRequests }

// SessionName names the session after the pod so CloudTrail shows which pod did what: "NS.POD@UID8",
// within STS's 2-64 characters of [\w+=,.@-]. The UID prefix keeps it unique across pod incarnations.
func SessionName(namespace, pod, uid string) string {
	clean := func(s string) string {
		b := []byte(s)
		for i, c := range b {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_+=,.@-", c) >= 0) {
				b[i] = '-'
			}
		}
		return string(b)
	}
	suffix := clean(strings.ReplaceAll(uid, "-", ""))
	if len(suffix) > 8 {
		suffix = suffix[:8]
	}
	name := clean(namespace + "." + pod)
	if max := 64 - len(suffix) - 1; len(name) > max {
		name = name[:max]
	}
	if suffix == "" {
		return name
	}
	return name + "@" + suffix
}
