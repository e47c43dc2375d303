package metadata

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash"
	"io"
	"net/netip"
	"sync"
	"time"
)

// IMDSv2 session tokens are stateless: base64url(version || expiry || HMAC-SHA256(key, label || version || caller ||
// expiry [|| 0 || scope])), with the caller's address in its 16-byte form, the expiry in Unix seconds and the scope
// (Config.TokenScope) only when there is one. Nothing is stored, so a token survives a restart that keeps the key, and
// a token minted for one pod IP, or one hostNetwork pod, never validates for another.
const (
	headerToken    = "X-Aws-Ec2-Metadata-Token"
	headerTokenTTL = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"

	maxTokenTTL  = 21600 // seconds, as EC2
	minKeyLength = 32

	tokenVersion  = 1
	tokenRawLen   = 1 + 8 + sha256.Size
	tokenLen      = (tokenRawLen*8 + 5) / 6 // base64 without padding
	tokenMACLabel = "iamlet imds token"
)

type tokenSigner struct {
	enc  *base64.Encoding
	macs sync.Pool // *macState: hmac.New costs several allocations, and valid runs on every v2 GET
}

// macState is scratch space for one MAC computation; it lives on the heap already, so nothing in it escapes anew.
type macState struct {
	h   hash.Hash
	msg [len(tokenMACLabel) + 1 + 16 + 8]byte
	sum [sha256.Size]byte
	raw [tokenRawLen]byte
	enc [tokenLen]byte
}

func newTokenSigner(key []byte) (*tokenSigner, error) {
	if len(key) < minKeyLength {
		return nil, errors.New("token key must be at least 32 bytes")
	}
	key = append([]byte(nil), key...) // the caller's slice may change under us
	s := &tokenSigner{enc: base64.RawURLEncoding.Strict()}
	s.macs.New = func() any { return &macState{h: hmac.New(sha256.New, key)} }
	return s, nil
}

// mac fills st.sum with the MAC of (caller, version, expiry, scope).
func (st *macState) mac(caller netip.Addr, version byte, expiry [8]byte, scope string) {
	ip := caller.As16()
	n := copy(st.msg[:], tokenMACLabel)
	st.msg[n] = version
	n += 1 + copy(st.msg[n+1:], ip[:])
	copy(st.msg[n:], expiry[:])
	st.h.Reset()
	st.h.Write(st.msg[:])
	if scope != "" {
		st.h.Write([]byte{0})
		io.WriteString(st.h, scope)
	}
	st.h.Sum(st.sum[:0])
}

// appendToken appends a token for caller (and scope) valid until expiry to dst.
func (s *tokenSigner) appendToken(dst []byte, caller netip.Addr, scope string, expiry time.Time) []byte {
	st := s.macs.Get().(*macState)
	defer s.macs.Put(st)
	var exp [8]byte
	binary.BigEndian.PutUint64(exp[:], uint64(expiry.Unix()))
	st.mac(caller, tokenVersion, exp, scope)
	st.raw[0] = tokenVersion
	copy(st.raw[1:9], exp[:])
	copy(st.raw[9:], st.sum[:])
	return s.enc.AppendEncode(dst, st.raw[:])
}

// valid reports whether token was minted by this key for caller and scope and has not expired at now.
func (s *tokenSigner) valid(token string, caller netip.Addr, scope string, now time.Time) bool {
	if len(token) != tokenLen {
		return false
	}
	st := s.macs.Get().(*macState)
	defer s.macs.Put(st)
	copy(st.enc[:], token)
	n, err := s.enc.Decode(st.raw[:], st.enc[:])
	if err != nil || n != tokenRawLen || st.raw[0] != tokenVersion {
		return false
	}
	var exp [8]byte
	copy(exp[:], st.raw[1:9])
	st.mac(caller, tokenVersion, exp, scope)
	if !hmac.Equal(st.sum[:], st.raw[9:]) {
		return false
	}
	return now.Unix() < int64(binary.BigEndian.Uint64(exp[:]))
}

// parseTTL parses the token PUT's TTL header values: exactly one value of 1 to 5 ASCII digits in 1..21600. Stricter
// than strconv.Atoi, which would take "+5".
func parseTTL(values []string) (int, bool) {
	if len(values) != 1 {
		return 0, false
	}
	v := values[0]
	if len(v) == 0 || len(v) > 16 { // leading zeros are allowed, a page of them is not
		return 0, false
	}
	n := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n = n*10 + int(c-'0'); n > maxTokenTTL {
			return 0, false
		}
	}
	return n, n >= 1
}
