package main

import (
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// checkPlots renders the plots and results.md of r into a fresh directory, checks that every plot in
// want was written and decodes as a PNG, and that results.md embeds exactly the plots written.
func checkPlots(t *testing.T, r *Results, want []string) {
	t.Helper()
	dir := t.TempDir()
	if err := writeReport(dir, r); err != nil {
		t.Fatalf("writeReport() = %v", err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, plotsDir, "*.png"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range files {
		got = append(got, strings.TrimSuffix(filepath.Base(f), ".png"))
	}
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("plots written = %v, want %v", got, want)
	}
	for _, name := range got {
		f, err := os.Open(filepath.Join(dir, plotsDir, name+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("plot %s: png.Decode() = %v", name, err)
			continue
		}
		if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
			t.Errorf("plot %s is %dx%d, want at least 300x200", name, b.Dx(), b.Dy())
		}
		link := "(" + plotsDir + "/" + name + ".png)"
		if strings.Count(string(md), link) != 1 {
			t.Errorf("results.md embeds %s %d times, want once", link, strings.Count(string(md), link))
		}
	}
	if n := strings.Count(string(md), "]("+plotsDir+"/"); n != len(got) {
		t.Errorf("results.md embeds %d plots, want the %d written", n, len(got))
	}
}

func allPlots() []string {
	var out []string
	for _, f := range figures {
		out = append(out, f.name)
	}
	return out
}

func TestPlotsRenderEveryFigure(t *testing.T) {
	checkPlots(t, fixture(), allPlots())
}

// The committed results.json, of whatever age, still draws every plot it has data for.
func TestPlotsRenderCommittedResults(t *testing.T) {
	checkPlots(t, committedResults(t), allPlots())
}

// A run with no data draws nothing, and a plot left by an earlier run is removed rather than shown
// beside figures it did not come from.
func TestPlotsWithoutData(t *testing.T) {
	dir := t.TempDir()
	if err := writeReport(dir, fixture()); err != nil {
		t.Fatal(err)
	}
	r := fixture()
	r.Cold = nil
	if err := writeReport(dir, r); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, plotsDir, plotCold+".png")); !os.IsNotExist(err) {
		t.Errorf("after a run without cold data, os.Stat(%s.png) = %v, want not exist", plotCold, err)
	}
	checkPlots(t, &Results{}, nil)
}
