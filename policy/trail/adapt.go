package trail

import "strings"

// What CloudTrail writes differs from what the SDK (and so the mapping) calls things. These tables are the
// hand-written adaptations; everything else comes from the generated mapping.

// sourcePrefix maps an eventSource's first label to its IAM prefix where the two differ.
var sourcePrefix = map[string]string{
	"monitoring":           "cloudwatch",
	"email":                "ses",
	"metering-marketplace": "aws-marketplace",
	"tagging":              "tag",
	"api.ecr":              "ecr",
	"streams.dynamodb":     "dynamodb",
	"data.iot":             "iot",
	"bedrock-runtime":      "bedrock",
}

// iamPrefix reads the IAM prefix from an eventSource such as "s3.amazonaws.com".
func iamPrefix(eventSource string) string {
	label := strings.TrimSuffix(eventSource, ".amazonaws.com")
	if p, ok := sourcePrefix[label]; ok {
		return p
	}
	if i := strings.IndexByte(label, '.'); i > 0 {
		label = label[:i]
	}
	if p, ok := sourcePrefix[label]; ok {
		return p
	}
	return label
}

// eventMethod is the SDK method of an event. S3 logs ListObjectsV2 as ListObjects with list-type 2; the rest of
// S3's data events (HeadObject, HeadBucket, the multipart upload calls) appear under their SDK names.
func eventMethod(e *Event) string {
	if e.EventSource == "s3.amazonaws.com" && e.EventName == "ListObjects" && first(e.lookup("list-type")) == "2" {
		return "ListObjectsV2"
	}
	return e.EventName
}

// parameterAliases are CloudTrail's names for SDK parameters beyond lowerCamel case, per eventSource.
var parameterAliases = map[string]map[string]string{
	"s3.amazonaws.com": {"Bucket": "bucketName"},
}

// NotObservable is what CloudTrail cannot show, stated with every report.
var NotObservable = []string{
	"S3 object-level calls (GetObject, PutObject, HeadObject, multipart uploads, ...) and other data events (DynamoDB items, Lambda Invoke, SQS messages, ...) are logged only when the trail has data-event selectors for them",
	"sts:GetCallerIdentity, sts:GetSessionToken and dynamodb:DescribeEndpoints need no permission and are not listed",
	"KMS calls that services make on the workload's behalf (S3 or DynamoDB encryption with a KMS key) are logged as the service's (invokedBy), and may not be attributed to the workload although its role needs kms permissions for them",
	"calls that fail before authorization (bad signature, expired credentials) and calls to services or regions the trail does not cover are not logged",
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
