package metadata

import (
	"errors"
	"path"
	"strings"
)

// reqPath is a request path after normalise: percent-decoded once, cleaned, with the client's letter case kept (all
// matching is ASCII case-insensitive, so a role name can be echoed in logs as the client spelled it).
type reqPath struct {
	p   string // starts with "/", no "//", no "." or ".." segments, no trailing slash unless it is "/"
	dir bool   // the client's spelling ended in a slash (or in "/." or "/..")
}

// String is the path as logged: normalised, with the client's trailing slash.
func (rp reqPath) String() string {
	if rp.dir {
		return rp.p + "/"
	}
	return rp.p
}

var (
	errBadEscape     = errors.New("malformed percent escape")
	errDoubleEncoded = errors.New("percent sign after decoding")
	errControlChar   = errors.New("control character in path")
)

// normalise turns a request's escaped path (r.URL.EscapedPath(), or a raw request target) into the one form every
// routing decision is made on. Matching on anything else would let "%2e%2e", "//" or "/./" walk around the
// allow-list. It decodes exactly once and refuses a '%' that survives decoding, so "%252e" cannot become ".." in some
// later layer.
func normalise(escaped string) (reqPath, error) {
	if i := strings.IndexByte(escaped, '?'); i >= 0 {
		escaped = escaped[:i]
	}
	if isClean(escaped) {
		// The common case (what SDKs send): no allocation.
		if len(escaped) > 1 && escaped[len(escaped)-1] == '/' {
			return reqPath{p: escaped[:len(escaped)-1], dir: true}, nil
		}
		return reqPath{p: escaped}, nil
	}
	decoded, err := percentDecode(escaped)
	if err != nil {
		return reqPath{}, err
	}
	for i := 0; i < len(decoded); i++ {
		if c := decoded[i]; c < 0x20 || c == 0x7f {
			return reqPath{}, errControlChar
		}
	}
	dir := strings.HasSuffix(decoded, "/") || strings.HasSuffix(decoded, "/.") || strings.HasSuffix(decoded, "/..") ||
		decoded == "." || decoded == ".."
	if !strings.HasPrefix(decoded, "/") {
		decoded = "/" + decoded
	}
	p := path.Clean(decoded)
	return reqPath{p: p, dir: dir && p != "/"}, nil
}

// isClean reports whether s is already in normal form apart from a single trailing slash: it starts with '/', has no
// escapes, control characters, empty segments or dot segments.
func isClean(s string) bool {
	if len(s) == 0 || s[0] != '/' {
		return false
	}
	segStart := 1
	for i := 1; i <= len(s); i++ {
		if i < len(s) {
			c := s[i]
			if c == '%' || c < 0x20 || c == 0x7f {
				return false
			}
			if c != '/' {
				continue
			}
		}
		seg := s[segStart:i]
		if seg == "." || seg == ".." || (seg == "" && i < len(s)) {
			return false
		}
		segStart = i + 1
	}
	return true
}

// percentDecode decodes every %XX once. Unlike url.PathUnescape it is the only decoder on the path, so its idea of
// '/' is the router's idea of '/'.
func percentDecode(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return "", errBadEscape
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", errBadEscape
		}
		d := hi<<4 | lo
		if d == '%' {
			return "", errDoubleEncoded
		}
		b = append(b, d)
		i += 2
	}
	return string(b), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// equalFoldASCII is strings.EqualFold restricted to ASCII: Unicode folding would let "\u212a" (Kelvin sign) match
// 'k', and nothing on the allow-list needs it.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func hasPrefixFoldASCII(s, prefix string) bool {
	return len(s) >= len(prefix) && equalFoldASCII(s[:len(prefix)], prefix)
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
