// Package iammap is the format of the trimmed IAM mapping (iammap.json.gz): the generator writes it and package
// trail reads it, so both use these types.
package iammap

import "encoding/json"

// File is the whole mapping.
type File struct {
	Source         string                       `json:"source"`     // where the inputs came from
	SDKToPrefix    map[string]string            `json:"sdk_prefix"` // SDK service -> IAM prefix
	PrefixToSDK    map[string][]string          `json:"prefix_sdk"` // IAM prefix -> SDK services
	Permissionless []string                     `json:"permissionless"`
	Methods        map[string]map[string][]Call `json:"methods"` // SDK service -> method -> actions
	// Simple lists, per SDK service, the methods whose only action is PREFIX:METHOD on no resource type, joined
	// by spaces: a third of all methods, and a third of the file if written out.
	Simple    map[string]string            `json:"simple"`
	Types     map[string][]string          `json:"types"`     // action -> its resource types
	Resources map[string]map[string]string `json:"resources"` // IAM prefix -> resource type -> ARN format
}

// Call is one IAM action an SDK method needs.
type Call struct {
	Action    string            `json:"a"`
	Resources map[string]string `json:"r,omitempty"`  // ARN placeholder -> template over request parameters
	ARNs      map[string]string `json:"t,omitempty"`  // resource type -> template of the whole ARN
	Override  string            `json:"o,omitempty"`  // template of the whole ARN, replacing the formats
	If        *Cond             `json:"if,omitempty"` // the request condition under which the method needs it
}

// Cond is a condition over a request's parameters.
type Cond struct {
	LHS string `json:"lhs"`
	Op  string `json:"op"`
	RHS string `json:"rhs,omitempty"`
	And *Cond  `json:"andCondition,omitempty"`
}

// MarshalJSON writes a call that is only an action as the bare action: most calls, and the bulk of the file.
func (c Call) MarshalJSON() ([]byte, error) {
	if c.Resources == nil && c.ARNs == nil && c.Override == "" && c.If == nil {
		return json.Marshal(c.Action)
	}
	type plain Call
	return json.Marshal(plain(c))
}

// UnmarshalJSON reads both forms.
func (c *Call) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		*c = Call{}
		return json.Unmarshal(b, &c.Action)
	}
	type plain Call
	return json.Unmarshal(b, (*plain)(c))
}
