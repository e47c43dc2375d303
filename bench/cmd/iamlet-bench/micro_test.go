package main

import (
	"strings"
	"testing"
)

const benchOut = `goos: linux
goarch: amd64
pkg: github.com/iamlet/iamlet/agent/creds
cpu: AMD EPYC
BenchmarkCachedCredentials/serial-2         	 3868707	        95.00 ns/op	       0 B/op	       0 allocs/op
BenchmarkCachedCredentials/serial-2         	 3868707	       101.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkCachedCredentials/serial-2         	 3868707	        94.70 ns/op	       0 B/op	       0 allocs/op
BenchmarkConcurrentMisses1000-2   	     100	   2742189 ns/op	         1.000 fetches/op	  326301 B/op	    5122 allocs/op
PASS
ok  	github.com/iamlet/iamlet/agent/creds	3.1s
`

func TestParseMicro(t *testing.T) {
	ms, err := parseMicro(strings.NewReader(benchOut))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 {
		t.Fatalf("parseMicro() = %d benchmarks, want 2: %+v", len(ms), ms)
	}
	s := ms[0]
	if s.Pkg != "github.com/iamlet/iamlet/agent/creds" || s.Name != "BenchmarkCachedCredentials/serial" || s.Runs != 3 ||
		s.NsPerOp != 95 || s.NsSpread != [2]float64{94.7, 101} || s.BPerOp != 0 {
		t.Errorf("parseMicro()[0] = %+v, want CachedCredentials/serial, 3 runs, median 95 ns, spread 94.7–101", s)
	}
	if m := ms[1]; m.Extra["fetches/op"] != 1 || m.Allocs != 5122 {
		t.Errorf("parseMicro()[1] = %+v, want 1 fetches/op and 5122 allocs/op", m)
	}
}
