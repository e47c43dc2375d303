package main

import (
	"bufio"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
)

var gomaxprocsSuffix = regexp.MustCompile(`-\d+$`)

// readMicro reads the file of `go test -bench -benchmem -count N` output at path.
func readMicro(path string) ([]Micro, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMicro(f)
}

// parseMicro reads `go test -bench -benchmem -count N` output and returns each benchmark's medians.
func parseMicro(r io.Reader) ([]Micro, error) {
	type key struct{ pkg, name string }
	var order []key
	samples := map[key]map[string][]float64{}
	pkg := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		fs := strings.Fields(line)
		if len(fs) < 4 || !strings.HasPrefix(fs[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(fs[1]); err != nil {
			continue
		}
		k := key{pkg, gomaxprocsSuffix.ReplaceAllString(fs[0], "")}
		if samples[k] == nil {
			samples[k] = map[string][]float64{}
			order = append(order, k)
		}
		for i := 2; i+1 < len(fs); i += 2 {
			v, err := strconv.ParseFloat(fs[i], 64)
			if err != nil {
				continue
			}
			samples[k][fs[i+1]] = append(samples[k][fs[i+1]], v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	out := make([]Micro, 0, len(order))
	for _, k := range order {
		s := samples[k]
		m := Micro{Pkg: k.pkg, Name: k.name, Runs: len(s["ns/op"]), NsPerOp: median(s["ns/op"]), BPerOp: median(s["B/op"]), Allocs: median(s["allocs/op"])}
		if ns := s["ns/op"]; len(ns) > 0 {
			m.NsSpread = [2]float64{percentile(ns, 0), percentile(ns, 1)}
		}
		for unit, vs := range s {
			switch unit {
			case "ns/op", "B/op", "allocs/op":
				continue
			}
			if m.Extra == nil {
				m.Extra = map[string]float64{}
			}
			m.Extra[unit] = median(vs)
		}
		out = append(out, m)
	}
	return out, nil
}
