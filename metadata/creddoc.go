package metadata

import (
	"sync"
	"time"
	"unicode/utf8"
)

// timeLayout is the only timestamp shape every SDK parses: botocore uses strptime with a literal Z, so no fractions
// and no offset.
const timeLayout = "2006-01-02T15:04:05Z"

// docKind is which of the three credential documents.
type docKind uint8

const (
	docStandard  docKind = iota // the IMDS document
	docExtended                 // the IMDS document with AccountId (security-credentials-extended)
	docContainer                // the container credentials endpoint's
)

// maxDocs bounds the documents kept: a node's pods, their sets before and after a rotation, both IMDS documents.
const maxDocs = 2048

// docCache keeps the documents of the credential sets lately served, rendered. A pod's SDK reads the same set until
// it rotates, and rendering one (a session token of a kilobyte and more, escaped byte by byte) cost a quarter of the
// handler's time for each cached answer.
type docCache struct {
	mu   sync.RWMutex
	docs map[docKey]*renderedDoc
}

type docKey struct {
	accessKeyID string
	kind        docKind
}

type renderedDoc struct {
	creds Credentials // the whole set: a document is served only for the very set it was rendered from
	body  []byte
}

// document returns c's document of kind; its body is shared, never to be written to. A set not kept yet is kept once
// the documents of sets expired by now are gone (a rotated set's within its last minutes); if that leaves the cache
// full, all go.
func (d *docCache) document(c *Credentials, kind docKind, now time.Time) []byte {
	k := docKey{c.AccessKeyID, kind}
	d.mu.RLock()
	r := d.docs[k]
	d.mu.RUnlock()
	if r != nil && r.creds == *c {
		return r.body
	}
	r = &renderedDoc{creds: *c}
	switch kind {
	case docContainer:
		r.body = appendContainerDocument(nil, c)
	default:
		r.body = appendCredentialDocument(nil, c, kind == docExtended)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.docs == nil {
		d.docs = make(map[docKey]*renderedDoc)
	}
	if _, replaced := d.docs[k]; !replaced {
		for k, old := range d.docs {
			if !now.Before(old.creds.Expiration) {
				delete(d.docs, k)
			}
		}
		if len(d.docs) >= maxDocs {
			clear(d.docs)
		}
	}
	d.docs[k] = r
	return r.body
}

// appendCredentialDocument appends the IMDS credential document, field order as EC2 sends it. The extended
// document adds AccountId when STS named one: an empty AccountId would read as an account to SDKs that
// build account-based endpoints, so it is left out instead.
func appendCredentialDocument(dst []byte, c *Credentials, extended bool) []byte {
	dst = append(dst, `{"Code":"Success","LastUpdated":`...)
	dst = appendJSONTime(dst, c.LastUpdated)
	dst = append(dst, `,"Type":"AWS-HMAC","AccessKeyId":`...)
	dst = appendJSONString(dst, c.AccessKeyID)
	dst = append(dst, `,"SecretAccessKey":`...)
	dst = appendJSONString(dst, c.SecretAccessKey)
	dst = append(dst, `,"Token":`...)
	dst = appendJSONString(dst, c.SessionToken)
	dst = append(dst, `,"Expiration":`...)
	dst = appendJSONTime(dst, c.Expiration)
	if extended && c.AccountID != "" {
		dst = append(dst, `,"AccountId":`...)
		dst = appendJSONString(dst, c.AccountID)
	}
	return append(dst, '}')
}

// appendContainerDocument appends the container credentials endpoint's document.
func appendContainerDocument(dst []byte, c *Credentials) []byte {
	dst = append(dst, `{"AccessKeyId":`...)
	dst = appendJSONString(dst, c.AccessKeyID)
	dst = append(dst, `,"SecretAccessKey":`...)
	dst = appendJSONString(dst, c.SecretAccessKey)
	dst = append(dst, `,"Token":`...)
	dst = appendJSONString(dst, c.SessionToken)
	if c.AccountID != "" {
		dst = append(dst, `,"AccountId":`...)
		dst = appendJSONString(dst, c.AccountID)
	}
	dst = append(dst, `,"Expiration":`...)
	dst = appendJSONTime(dst, c.Expiration)
	return append(dst, '}')
}

// appendContainerError appends the container endpoint's error document.
func appendContainerError(dst []byte, code, message string) []byte {
	dst = append(dst, `{"Code":`...)
	dst = appendJSONString(dst, code)
	dst = append(dst, `,"Message":`...)
	dst = appendJSONString(dst, message)
	return append(dst, '}')
}

func appendJSONTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.UTC().AppendFormat(dst, timeLayout)
	return append(dst, '"')
}

// appendJSONString appends s as a JSON string, byte for byte what encoding/json produces (HTML-safe escapes,
// invalid UTF-8 replaced by U+FFFD, U+2028 and U+2029 escaped), without its reflection. strconv.AppendQuote is not
// a substitute: its \x.. and \U........ escapes are not JSON.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
