// Package policy reads, writes and reasons about IAM policy documents of the kind STS accepts as session policies:
// strict parsing, the compact form STS counts against its size limit, evaluation of one call, and a sound check
// that one document allows nothing another does not.
package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The two policy language versions IAM knows. Only Version2012 substitutes policy variables (${aws:username}).
const (
	Version2012 = "2012-10-17"
	Version2008 = "2008-10-17"
)

// Effect is a statement's Allow or Deny.
type Effect string

const (
	EffectAllow Effect = "Allow"
	EffectDeny  Effect = "Deny"
)

// Document is a parsed policy. Lists hold at least one element; exactly one of Action/NotAction and one of
// Resource/NotResource is set in each statement.
type Document struct {
	Version   string
	ID        string
	Statement []Statement
}

// Statement is one statement of a Document. Condition values are kept as compact JSON: the package evaluates
// no conditions, it only knows whether a statement has any.
type Statement struct {
	Sid         string
	Effect      Effect
	Action      []string
	NotAction   []string
	Resource    []string
	NotResource []string
	Condition   map[string]map[string]json.RawMessage
}

// Parse reads a policy document strictly: exact key names, no unknown or repeated keys, no Principal (a session
// policy may not name one), and errors that say which statement and which field.
func Parse(data []byte) (*Document, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	raw, err := object(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the top-level object")
	}
	d := &Document{}
	var statements json.RawMessage
	for _, f := range raw {
		switch f.key {
		case "Version":
			if err := json.Unmarshal(f.value, &d.Version); err != nil {
				return nil, errors.New("Version: want a string")
			}
		case "Id":
			if err := json.Unmarshal(f.value, &d.ID); err != nil {
				return nil, errors.New("Id: want a string")
			}
		case "Statement":
			statements = f.value
		default:
			return nil, fmt.Errorf("unknown key %q (keys are case-sensitive: Version, Id, Statement)", f.key)
		}
	}
	switch d.Version {
	case Version2012, Version2008:
	case "":
		return nil, fmt.Errorf("Version is required: %q or %q", Version2012, Version2008)
	default:
		return nil, fmt.Errorf("Version %q: want %q or %q", d.Version, Version2012, Version2008)
	}
	if statements == nil {
		return nil, errors.New("Statement is required")
	}
	var list []json.RawMessage
	if first := firstByte(statements); first == '{' {
		list = []json.RawMessage{statements}
	} else if first != '[' || json.Unmarshal(statements, &list) != nil {
		return nil, errors.New("Statement: want an object or an array of objects")
	}
	if len(list) == 0 {
		return nil, errors.New("Statement: no statements")
	}
	for i, raw := range list {
		s, err := parseStatement(raw)
		if err != nil {
			where := fmt.Sprintf("Statement[%d]", i)
			if s.Sid != "" {
				where += fmt.Sprintf(" (Sid %q)", s.Sid)
			}
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		d.Statement = append(d.Statement, s)
	}
	return d, nil
}

// parseStatement returns what it has read so far with an error, so the caller can name the statement by its Sid.
func parseStatement(data json.RawMessage) (Statement, error) {
	var s Statement
	fields, err := object(json.NewDecoder(bytes.NewReader(data)))
	if err != nil {
		return s, err
	}
	// The Sid first, so that every later error can name the statement.
	for _, f := range fields {
		if f.key == "Sid" {
			if err := json.Unmarshal(f.value, &s.Sid); err != nil {
				return s, errors.New("Sid: want a string")
			}
		}
	}
	for _, f := range fields {
		var err error
		switch f.key {
		case "Sid":
		case "Effect":
			if json.Unmarshal(f.value, &s.Effect) != nil || (s.Effect != EffectAllow && s.Effect != EffectDeny) {
				err = fmt.Errorf("want %q or %q, got %s", EffectAllow, EffectDeny, f.value)
			}
		case "Action":
			s.Action, err = actions(f.value)
		case "NotAction":
			s.NotAction, err = actions(f.value)
		case "Resource":
			s.Resource, err = resources(f.value)
		case "NotResource":
			s.NotResource, err = resources(f.value)
		case "Condition":
			s.Condition, err = condition(f.value)
		case "Principal", "NotPrincipal":
			err = errors.New("not allowed: a session policy applies to the session's own principal")
		default:
			err = errors.New("unknown key (keys are case-sensitive: Sid, Effect, Action, NotAction, Resource, NotResource, Condition)")
		}
		if err != nil {
			return s, fmt.Errorf("%s: %w", f.key, err)
		}
	}
	switch {
	case s.Effect == "":
		return s, errors.New("Effect is required")
	case (s.Action == nil) == (s.NotAction == nil):
		return s, errors.New("exactly one of Action and NotAction is required")
	case (s.Resource == nil) == (s.NotResource == nil):
		return s, errors.New("exactly one of Resource and NotResource is required")
	}
	return s, nil
}

type field struct {
	key   string
	value json.RawMessage
}

// object reads one JSON object from dec as its fields in order, refusing a repeated key: encoding/json would keep
// the last silently, and IAM may not read it the same way.
func object(dec *json.Decoder) ([]field, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("want a JSON object")
	}
	var out []field
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key := tok.(string) // inside an object, the decoder yields only string keys here
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		if seen[key] {
			return nil, fmt.Errorf("key %q appears twice", key)
		}
		seen[key] = true
		out = append(out, field{key, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	return out, nil
}

func firstByte(b []byte) byte {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// stringList reads a string or a non-empty array of strings, each of which must pass check.
func stringList(data json.RawMessage, check func(string) error) ([]string, error) {
	var list []string
	switch firstByte(data) {
	case '"':
		list = []string{""}
		if json.Unmarshal(data, &list[0]) != nil {
			return nil, errors.New("want a string or an array of strings")
		}
	case '[':
		if json.Unmarshal(data, &list) != nil {
			return nil, errors.New("want a string or an array of strings")
		}
	default:
		return nil, errors.New("want a string or an array of strings")
	}
	if len(list) == 0 {
		return nil, errors.New("empty array")
	}
	for _, v := range list {
		if err := check(v); err != nil {
			return nil, fmt.Errorf("%q: %w", v, err)
		}
	}
	return list, nil
}

func actions(data json.RawMessage) ([]string, error) {
	return stringList(data, func(a string) error {
		if a == "*" {
			return nil
		}
		prefix, name, ok := strings.Cut(a, ":")
		if !ok || prefix == "" || name == "" || strings.Contains(name, ":") || strings.ContainsAny(prefix, "*?") {
			return errors.New("want service:action (wildcards * and ? in the action only) or *")
		}
		return nil
	})
}

func resources(data json.RawMessage) ([]string, error) {
	return stringList(data, func(r string) error {
		if r != "*" && !strings.HasPrefix(r, "arn:") {
			return errors.New("want an ARN or *")
		}
		return nil
	})
}

// condition checks the shape operator -> key -> value(s) and keeps each value as compact JSON.
func condition(data json.RawMessage) (map[string]map[string]json.RawMessage, error) {
	ops, err := object(json.NewDecoder(bytes.NewReader(data)))
	if err != nil {
		return nil, err
	}
	if len(ops) == 0 {
		return nil, errors.New("empty")
	}
	out := make(map[string]map[string]json.RawMessage, len(ops))
	for _, op := range ops {
		keys, err := object(json.NewDecoder(bytes.NewReader(op.value)))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op.key, err)
		}
		if op.key == "" || len(keys) == 0 {
			return nil, fmt.Errorf("%q: want an operator with at least one condition key", op.key)
		}
		out[op.key] = make(map[string]json.RawMessage, len(keys))
		for _, k := range keys {
			if k.key == "" || !conditionValue(k.value) {
				return nil, fmt.Errorf("%s: %q: want a condition key with a string, number or boolean, or a non-empty array of them", op.key, k.key)
			}
			var buf bytes.Buffer
			if err := json.Compact(&buf, k.value); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", op.key, k.key, err)
			}
			out[op.key][k.key] = buf.Bytes()
		}
	}
	return out, nil
}

func conditionValue(v json.RawMessage) bool {
	scalar := func(v any) bool {
		switch v.(type) {
		case string, json.Number, bool:
			return true
		}
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var x any
	if dec.Decode(&x) != nil {
		return false
	}
	if list, ok := x.([]any); ok {
		for _, e := range list {
			if !scalar(e) {
				return false
			}
		}
		return len(list) > 0
	}
	return scalar(x)
}

// wire is the document's JSON form. One-element lists are written as a plain string, which IAM accepts and is
// the shortest; statements are always a list, since IAM-compatible servers (MinIO's STS) accept no other form.
type wire struct {
	Version   string          `json:"Version"`
	ID        string          `json:"Id,omitempty"`
	Statement []wireStatement `json:"Statement"`
}

type wireStatement struct {
	Sid         string                                `json:"Sid,omitempty"`
	Effect      Effect                                `json:"Effect"`
	Action      any                                   `json:"Action,omitempty"`
	NotAction   any                                   `json:"NotAction,omitempty"`
	Resource    any                                   `json:"Resource,omitempty"`
	NotResource any                                   `json:"NotResource,omitempty"`
	Condition   map[string]map[string]json.RawMessage `json:"Condition,omitempty"`
}

func shortList(l []string) any {
	switch len(l) {
	case 0:
		return nil
	case 1:
		return l[0]
	}
	return l
}

// Compact is the document as minimal JSON: what a caller sends to STS, whose session-policy limit counts the
// characters sent. Condition operators and keys come out sorted, so equal documents compact alike.
func (d *Document) Compact() []byte {
	w := wire{Version: d.Version, ID: d.ID}
	statements := make([]wireStatement, len(d.Statement))
	for i, s := range d.Statement {
		statements[i] = wireStatement{
			Sid: s.Sid, Effect: s.Effect,
			Action: shortList(s.Action), NotAction: shortList(s.NotAction),
			Resource: shortList(s.Resource), NotResource: shortList(s.NotResource),
			Condition: s.Condition,
		}
	}
	w.Statement = statements
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // \u003c would be six characters where STS counts one
	if err := enc.Encode(w); err != nil {
		// Every field is a string, a list of strings or compact JSON that Parse checked.
		panic(fmt.Sprintf("policy: encoding a document: %v", err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// Hash is the hex SHA-256 of Compact(): equal for documents that differ only in whitespace and list forms.
func (d *Document) Hash() string { return HashOf(d.Compact()) }

// HashOf is Hash for a document's Compact() already at hand, so a caller that needs both compacts once.
func HashOf(compact []byte) string {
	sum := sha256.Sum256(compact)
	return hex.EncodeToString(sum[:])
}

// MarshalJSON writes Compact(), so a Document embeds in other JSON as itself.
func (d *Document) MarshalJSON() ([]byte, error) { return d.Compact(), nil }

// UnmarshalJSON reads a document with Parse.
func (d *Document) UnmarshalJSON(data []byte) error {
	p, err := Parse(data)
	if err != nil {
		return err
	}
	*d = *p
	return nil
}
