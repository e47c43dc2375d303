package sts_test

import (
	"testing"

	"github.com/iamlet/iamlet/agent/sts"
)

// TestEndpointRegion: an AWS STS endpoint is signed for the region it serves (a chained role's AssumeRole), whatever
// the node's; an STS that is not AWS's names none.
func TestEndpointRegion(t *testing.T) {
	tests := []struct {
		endpoint, want string
		ok             bool
	}{
		{"https://sts.eu-west-1.amazonaws.com", "eu-west-1", true},
		{"https://STS.EU-WEST-1.amazonaws.com.", "eu-west-1", true},
		{"https://sts-fips.us-east-2.amazonaws.com", "us-east-2", true},
		{"https://sts.cn-north-1.amazonaws.com.cn", "cn-north-1", true},
		{"https://vpce-0a1b2c3d4e5f-abcdefgh.sts.ap-southeast-2.vpce.amazonaws.com", "ap-southeast-2", true},
		{"https://vpce-0a1b2c3d4e5f-abcdefgh-ap-southeast-2a.sts.ap-southeast-2.vpce.amazonaws.com:443/", "ap-southeast-2", true},
		{"https://sts.amazonaws.com", "us-east-1", true},
		{"https://sts.eu-central-1.api.aws", "eu-central-1", true},
		{"https://sts-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1", true},
		{"http://10.0.0.1:9000", "", false},
		{"https://minio.example.com", "", false},
		{"https://s3.eu-west-1.amazonaws.com", "", false},
		{"https://amazonaws.com", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if got, ok := sts.EndpointRegion(tt.endpoint); got != tt.want || ok != tt.ok {
			t.Errorf("EndpointRegion(%q) = %q, %v; want %q, %v", tt.endpoint, got, ok, tt.want, tt.ok)
		}
	}
}
