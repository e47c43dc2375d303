package main

import (
	"slices"
	"testing"
)

// TestParseAddrs: --metadata-addr takes what the downward API's status.hostIPs gives (bare addresses, IPv6
// unbracketed, one or both families) with --metadata-port, or explicit address:port pairs.
func TestParseAddrs(t *testing.T) {
	for _, c := range []struct {
		in   string
		port uint16
		want []string
		err  bool
	}{
		{"10.0.0.5", 8181, []string{"10.0.0.5:8181"}, false},
		{"2600:1f18::5", 8181, []string{"[2600:1f18::5]:8181"}, false},
		{"10.0.0.5,2600:1f18::5", 8181, []string{"10.0.0.5:8181", "[2600:1f18::5]:8181"}, false},
		{"10.0.0.5:9000,[2600:1f18::5]:9000", 8181, []string{"10.0.0.5:9000", "[2600:1f18::5]:9000"}, false},
		{"[2600:1f18::5]", 8181, []string{"[2600:1f18::5]:8181"}, false},
		{"10.0.0.5", 0, nil, true},             // the container face needs a port
		{"10.0.0.5,10.0.0.6", 8181, nil, true}, // one listener per family
		{"node-1", 8181, nil, true},
	} {
		got, err := parseAddrs(c.in, c.port)
		if (err != nil) != c.err {
			t.Errorf("parseAddrs(%q, %d) error = %v, want error %v", c.in, c.port, err, c.err)
			continue
		}
		var s []string
		for _, a := range got {
			s = append(s, a.String())
		}
		if !slices.Equal(s, c.want) {
			t.Errorf("parseAddrs(%q, %d) = %v, want %v", c.in, c.port, s, c.want)
		}
	}
}
