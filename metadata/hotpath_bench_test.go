package metadata

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// The pieces of the cached-credential answer, one at a time, so a regression in the whole-handler
// benchmark (BenchmarkCachedCredentials) can be traced to routing, the IMDSv2 token check or rendering.

func BenchmarkMatch(b *testing.B) {
	for _, p := range []struct{ name, path string }{
		{"credentials", "/latest/meta-data/iam/security-credentials/pod-role"},
		{"listing", "/latest/meta-data/iam/security-credentials/"},
		{"token", "/latest/api/token"},
		{"refused", "/latest/user-data"},
	} {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rp, err := normalise(p.path)
				if err != nil {
					b.Fatal(err)
				}
				_ = match(rp)
			}
		})
	}
}

func BenchmarkTokenValid(b *testing.B) {
	s, err := newTokenSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		b.Fatal(err)
	}
	caller := netip.MustParseAddr("10.200.0.2")
	now := time.Unix(1_800_000_000, 0)
	tok := string(s.appendToken(nil, caller, "", now.Add(6*time.Hour)))
	b.ReportAllocs()
	for b.Loop() {
		if !s.valid(tok, caller, "", now) {
			b.Fatal("valid() = false, want true")
		}
	}
}

// BenchmarkCredentialDocument renders a document the size STS gives: its session tokens run to
// several hundred characters.
func BenchmarkCredentialDocument(b *testing.B) {
	now := time.Unix(1_800_000_000, 0).UTC()
	c := Credentials{
		RoleName:        "pod-role",
		AccessKeyID:     "ASIAPODEXAMPLE00001X",
		SecretAccessKey: strings.Repeat("s", 40),
		SessionToken:    strings.Repeat("FwoGZXIvYXdzEPOD//////////", 32),
		LastUpdated:     now,
		Expiration:      now.Add(time.Hour),
		AccountID:       "123456789012",
	}
	for _, ext := range []bool{false, true} {
		name := "standard"
		if ext {
			name = "extended"
		}
		b.Run(name, func(b *testing.B) {
			buf := make([]byte, 0, 4096)
			b.ReportAllocs()
			for b.Loop() {
				buf = appendCredentialDocument(buf[:0], &c, ext)
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}
