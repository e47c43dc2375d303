package main

import (
	"fmt"
	"image/color"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var (
	colIamlet = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colBase   = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	colThird  = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	colTarget = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
)

// writePlots draws every figure it has data for and returns the file of each, by name.
func writePlots(dir string, r *Results) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range []struct {
		name string
		draw func(*Results) (*plot.Plot, error)
	}{
		{"cached_latency", plotCachedLatency},
		{"cached_throughput", plotCachedThroughput},
		{"cold_breakdown", plotCold},
		{"churn_to_cached", plotChurn},
		{"scale_rss", plotScale},
		{"startup", plotStartup},
	} {
		p, err := f.draw(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
		if p == nil {
			continue
		}
		// Head-room above the data for the legend, which sits at the top.
		if _, log := p.Y.Scale.(plot.LogScale); log {
			p.Y.Max *= 4
		} else {
			p.Y.Max *= 1.35
		}
		file := f.name + ".png"
		if err := p.Save(18*vg.Centimeter, 11*vg.Centimeter, filepath.Join(dir, file)); err != nil {
			return nil, err
		}
		out[f.name] = file
	}
	return out, nil
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	p.Add(plotter.NewGrid())
	return p
}

func plotCachedLatency(r *Results) (*plot.Plot, error) {
	if len(r.Cached) == 0 {
		return nil, nil
	}
	p := newPlot("Cached answer latency (median of runs)", "concurrent clients", "latency (µs, log)")
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	var names []string
	for _, c := range r.Cached {
		names = append(names, strconv.Itoa(c.Clients))
	}
	for i, q := range []struct {
		name string
		f    func(Load) float64
	}{{"p50", p50}, {"p99", p99}, {"p99.9", p999}} {
		for _, who := range []string{"iamlet", "floor"} {
			xys := make(plotter.XYs, len(r.Cached))
			for j, c := range r.Cached {
				ls := c.Agent
				if who == "floor" {
					ls = c.Floor
				}
				xys[j] = plotter.XY{X: float64(j), Y: max(1, med(ls, q.f))}
			}
			l, s, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			col := colIamlet
			if who == "floor" {
				col = colBase
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			l.Color, s.Color = col, col
			s.Shape = plotutil.Shape(i)
			p.Add(l, s)
			p.Legend.Add(who+" "+q.name, l, s)
		}
	}
	p.NominalX(names...)
	return p, nil
}

func plotCachedThroughput(r *Results) (*plot.Plot, error) {
	if len(r.Cached) == 0 {
		return nil, nil
	}
	p := newPlot("Cached answer throughput (median of runs)", "concurrent clients", "requests per second")
	var a, f plotter.Values
	var names []string
	for _, c := range r.Cached {
		a = append(a, med(c.Agent, rps))
		f = append(f, med(c.Floor, rps))
		names = append(names, strconv.Itoa(c.Clients))
	}
	w := vg.Points(18)
	ba, err := plotter.NewBarChart(a, w)
	if err != nil {
		return nil, err
	}
	bf, err := plotter.NewBarChart(f, w)
	if err != nil {
		return nil, err
	}
	ba.Color, bf.Color = colIamlet, colBase
	ba.LineStyle.Width, bf.LineStyle.Width = 0, 0
	ba.Offset, bf.Offset = -w/2, w/2
	p.Add(ba, bf)
	p.Legend.Add("iamlet", ba)
	p.Legend.Add("floor (trivial server)", bf)
	p.NominalX(names...)
	return p, nil
}

func plotCold(r *Results) (*plot.Plot, error) {
	if len(r.Cold) == 0 {
		return nil, nil
	}
	c := r.Cold
	p := newPlot("Cold answer: where the time goes (medians)", "", "milliseconds")
	tok := plotter.Values{medianOf(c, func(x ColdRun) float64 { return x.TokenMS }), medianOf(c, func(x ColdRun) float64 { return x.BaseToken })}
	sts := plotter.Values{medianOf(c, func(x ColdRun) float64 { return x.STSMS }), medianOf(c, func(x ColdRun) float64 { return x.BaseSTS })}
	ovh := plotter.Values{max(0, medianOf(c, ColdRun.OverheadMS)), 0}
	w := vg.Points(50)
	bt, err := plotter.NewBarChart(tok, w)
	if err != nil {
		return nil, err
	}
	bs, err := plotter.NewBarChart(sts, w)
	if err != nil {
		return nil, err
	}
	bo, err := plotter.NewBarChart(ovh, w)
	if err != nil {
		return nil, err
	}
	bt.Color, bs.Color, bo.Color = colIamlet, colBase, colThird
	bs.StackOn(bt)
	bo.StackOn(bs)
	p.Add(bt, bs, bo)
	p.Legend.Add("TokenRequest", bt)
	p.Legend.Add("STS AssumeRoleWithWebIdentity", bs)
	p.Legend.Add("iamlet's own overhead", bo)
	p.NominalX("iamlet, cache miss", "direct calls (baseline)")
	p.Legend.Left = false
	return p, nil
}

func plotChurn(r *Results) (*plot.Plot, error) {
	if len(r.Churn) == 0 {
		return nil, nil
	}
	p := newPlot("Pod churn: address in the API → credentials cached", "pod (creation order within its run)", "milliseconds (log)")
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	for i, rate := range churnRateList(r) {
		var xys plotter.XYs
		for _, c := range r.Churn {
			if c.Rate != rate {
				continue
			}
			for j, v := range c.ToCachedMS {
				xys = append(xys, plotter.XY{X: float64(j), Y: max(1, v)})
			}
		}
		s, err := plotter.NewScatter(xys)
		if err != nil {
			return nil, err
		}
		s.Color = []color.Color{colIamlet, colBase}[i%2]
		s.Shape = draw.CircleGlyph{}
		s.Radius = vg.Points(1.8)
		p.Add(s)
		p.Legend.Add(fmt.Sprintf("%d pods/s", rate), s)
	}
	return p, nil
}

func plotScale(r *Results) (*plot.Plot, error) {
	if len(r.Scale) == 0 {
		return nil, nil
	}
	p := newPlot("Agent memory (median of runs)", "pods on the agent's node", "MiB")
	p.Y.Min = 0
	for i, c := range scaleClusters(r) {
		var rss, heap plotter.XYs
		for _, pt := range scalePoints(r) {
			if pt.cluster != c {
				continue
			}
			rss = append(rss, plotter.XY{X: float64(pt.node), Y: medianOf(pt.runs, func(s ScaleRun) float64 { return s.RSSMiB })})
			heap = append(heap, plotter.XY{X: float64(pt.node), Y: medianOf(pt.runs, liveHeap)})
		}
		col := []color.Color{colIamlet, colBase}[i%2]
		for _, series := range []struct {
			name   string
			xys    plotter.XYs
			dashed bool
		}{{"RSS", rss, false}, {"live Go heap", heap, true}} {
			l, s, err := plotter.NewLinePoints(series.xys)
			if err != nil {
				return nil, err
			}
			l.Color, s.Color = col, col
			if series.dashed {
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			p.Add(l, s)
			p.Legend.Add(fmt.Sprintf("%s, %d cluster pods", series.name, c), l, s)
		}
	}
	t := plotter.NewFunction(func(float64) float64 { return 40 })
	t.Color = colTarget
	t.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
	p.Add(t)
	p.Legend.Add("target: 40 MiB", t)
	p.Y.Max = max(p.Y.Max, 45)
	return p, nil
}

func plotStartup(r *Results) (*plot.Plot, error) {
	if len(r.Scale) == 0 {
		return nil, nil
	}
	p := newPlot("Start-up: exec to /readyz 200 (median of runs)", "pods on the agent's node", "milliseconds")
	clusters := scaleClusters(r)
	nodes := scaleNodes(r)
	w := vg.Points(18)
	for i, c := range clusters {
		var v plotter.Values
		for _, n := range nodes {
			x := 0.0
			for _, pt := range scalePoints(r) {
				if pt.node == n && pt.cluster == c {
					x = medianOf(pt.runs, func(s ScaleRun) float64 { return s.StartupMS })
				}
			}
			v = append(v, x)
		}
		b, err := plotter.NewBarChart(v, w)
		if err != nil {
			return nil, err
		}
		b.Color = []color.Color{colIamlet, colBase}[i%2]
		b.LineStyle.Width = 0
		b.Offset = w * vg.Length(float64(i)-float64(len(clusters)-1)/2)
		p.Add(b)
		p.Legend.Add(fmt.Sprintf("%d cluster pods", c), b)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, strconv.Itoa(n))
	}
	p.NominalX(names...)
	t := plotter.NewFunction(func(float64) float64 { return 2000 })
	t.Color = colTarget
	t.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
	p.Add(t)
	p.Legend.Add("target: 2 s at 110 pods", t)
	p.Y.Min = 0
	p.Y.Max = max(p.Y.Max, 2100)
	return p, nil
}

// liveHeap is about the heap live after the last GC: half the next goal at GOGC=100; the heap in use
// (garbage included) for runs that did not record the goal.
func liveHeap(s ScaleRun) float64 {
	if s.HeapGoalMiB > 0 {
		return s.HeapGoalMiB / 2
	}
	return s.HeapMiB
}
