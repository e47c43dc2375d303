package main

import (
	"errors"
	"fmt"
	"image/color"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The plots: one per report section whose figures have a same-run baseline worth seeing beside them.
// Each is OUT/plots/<name>.png and is embedded under its section.
const (
	plotCached  = "cached"
	plotCold    = "cold"
	plotNewPods = "new_pods"
	plotMemory  = "memory"
	plotStartup = "startup"
)

// plotsDir is where the plots go, relative to OUT (and to results.md, which links them).
const plotsDir = "plots"

// figure is one PNG: a row of panels drawn from the results; no panels means no data for it.
type figure struct {
	name, alt string
	draw      func(*Results) ([]*plot.Plot, error)
}

var figures = []figure{
	{plotCached, "cached answer: p50 and p99 latency and throughput, iamlet vs the floor, by clients", plotCachedFigure},
	{plotCold, "cold answer: TokenRequest, STS and iamlet's own overhead, vs the same calls made directly", plotColdFigure},
	{plotNewPods, "new pods: address to credentials cached, per pod, beside the apiserver storing the address", plotNewPodsFigure},
	{plotMemory, "memory: iamlet vs the floor server, VmRSS, RssAnon and working set, by node and cluster pods", plotMemoryFigure},
	{plotStartup, "start-up: iamlet vs iamlet --iptables=false vs the floor server, by cluster and node pods", plotStartupFigure},
}

// plotted are the plots written, by name: the file (relative to OUT) and its alt text.
type plotted map[string]struct{ file, alt string }

var (
	colIamlet = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colFloor  = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	colThird  = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	colTarget = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	// Series of the same kind told apart (cluster sizes, node pods, churn loads).
	colSeries = []color.Color{colIamlet, color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, color.RGBA{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff},
		color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}}
	dashed = []vg.Length{vg.Points(4), vg.Points(3)}
	dotted = []vg.Length{vg.Points(2), vg.Points(2)}
)

// writePlots draws every figure it has data for into OUT/plots and removes the file of any it has
// none for, so results.md never sits beside a plot of another run.
func writePlots(out string, r *Results) (plotted, error) {
	dir := filepath.Join(out, plotsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	done := plotted{}
	for _, f := range figures {
		file := filepath.Join(dir, f.name+".png")
		panels, err := f.draw(r)
		if err != nil {
			return nil, fmt.Errorf("plot %s: %w", f.name, err)
		}
		if len(panels) == 0 {
			if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			continue
		}
		if err := savePanels(file, panels); err != nil {
			return nil, fmt.Errorf("plot %s: %w", f.name, err)
		}
		done[f.name] = struct{ file, alt string }{filepath.ToSlash(filepath.Join(plotsDir, f.name+".png")), f.alt}
	}
	return done, nil
}

// savePanels writes panels side by side into one PNG.
func savePanels(file string, panels []*plot.Plot) (err error) {
	w, h := 18*vg.Centimeter, 11*vg.Centimeter
	if len(panels) > 1 {
		w = vg.Length(len(panels)) * 13 * vg.Centimeter
	}
	c := vgimg.New(w, h)
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadX: vg.Centimeter, PadTop: vg.Points(4), PadBottom: vg.Points(4),
		PadLeft: vg.Points(4), PadRight: vg.Points(8)}
	canvases := plot.Align([][]*plot.Plot{panels}, tiles, draw.New(c))
	for i, p := range panels {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer func() {
		if e := f.Close(); err == nil {
			err = e
		}
	}()
	_, err = vgimg.PngCanvas{Canvas: c}.WriteTo(f)
	return err
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

// headroom raises the top of p's Y axis so the legend, at the top, clears the data.
func headroom(p *plot.Plot, legendRows int) {
	if _, log := p.Y.Scale.(plot.LogScale); log {
		p.Y.Max *= 8
		return
	}
	p.Y.Max *= 1 + 0.1*float64(max(legendRows, 3))
}

// line adds a line with points to p, in col, dashed if dashes is non-nil.
func line(p *plot.Plot, name string, xys plotter.XYs, col color.Color, dashes []vg.Length, shape draw.GlyphDrawer) error {
	if len(xys) == 0 {
		return nil
	}
	l, s, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, s.Color, l.Dashes = col, col, dashes
	if shape != nil {
		s.Shape = shape
	}
	p.Add(l, s)
	p.Legend.Add(name, l, s)
	return nil
}

// level adds a horizontal line at y across p's X range: a target, or a baseline that does not vary with X.
func level(p *plot.Plot, name string, y float64, col color.Color, dashes []vg.Length) {
	f := plotter.NewFunction(func(float64) float64 { return y })
	f.Color, f.Dashes = col, dashes
	f.Width = vg.Points(1.5)
	p.Add(f)
	p.Legend.Add(name, f)
	p.Y.Max = max(p.Y.Max, y)
}

// bars adds one bar per category to p, as the i-th of n bars in each group.
func bars(p *plot.Plot, name string, v plotter.Values, col color.Color, i, n int, w vg.Length) error {
	b, err := plotter.NewBarChart(v, w)
	if err != nil {
		return err
	}
	b.Color = col
	b.LineStyle.Width = 0
	b.Offset = w * vg.Length(float64(i)-float64(n-1)/2)
	p.Add(b)
	p.Legend.Add(name, b)
	return nil
}

// nominal labels p's X axis with names at 0, 1, …, half a category of margin each side.
func nominal(p *plot.Plot, names []string) {
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(names))-0.5
}

// mark adds a single target glyph at (x, y).
func mark(p *plot.Plot, name string, x, y float64) error {
	s, err := plotter.NewScatter(plotter.XYs{{X: x, Y: y}})
	if err != nil {
		return err
	}
	s.Color = colTarget
	s.Shape = draw.PyramidGlyph{}
	s.Radius = vg.Points(4)
	p.Add(s)
	p.Legend.Add(name, s)
	return nil
}

// plotCachedFigure is workload 1: latency (p50, p99) and throughput, iamlet against the floor at each
// client count, with the targets at cachedTarget clients.
func plotCachedFigure(r *Results) ([]*plot.Plot, error) {
	var pts []CachedPoint
	for _, c := range r.Cached {
		if len(c.Agent) > 0 && len(c.Floor) > 0 {
			pts = append(pts, c)
		}
	}
	if len(pts) == 0 {
		return nil, nil
	}
	names := make([]string, len(pts))
	for i, c := range pts {
		names[i] = strconv.Itoa(c.Clients)
	}

	lat := newPlot("Cached answer latency (median of runs)", "concurrent clients", "µs (log)")
	lat.Y.Scale = plot.LogScale{}
	lat.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	for _, q := range []struct {
		name  string
		f     func(Load) float64
		shape draw.GlyphDrawer
	}{{"p50", p50, draw.CircleGlyph{}}, {"p99", p99, draw.SquareGlyph{}}} {
		for _, who := range []struct {
			name   string
			loads  func(CachedPoint) []Load
			col    color.Color
			dashes []vg.Length
		}{{"iamlet", func(c CachedPoint) []Load { return c.Agent }, colIamlet, nil},
			{"floor", func(c CachedPoint) []Load { return c.Floor }, colFloor, dashed}} {
			xys := make(plotter.XYs, len(pts))
			for i, c := range pts {
				xys[i] = plotter.XY{X: float64(i), Y: max(1, med(who.loads(c), q.f))}
			}
			if err := line(lat, who.name+" "+q.name, xys, who.col, who.dashes, q.shape); err != nil {
				return nil, err
			}
		}
	}

	thr := newPlot("Cached answer throughput (median of runs)", "concurrent clients", "requests per second")
	var a, f plotter.Values
	for _, c := range pts {
		a, f = append(a, med(c.Agent, rps)), append(f, med(c.Floor, rps))
	}
	w := vg.Points(18)
	if err := bars(thr, "iamlet", a, colIamlet, 0, 2, w); err != nil {
		return nil, err
	}
	if err := bars(thr, "floor (trivial server)", f, colFloor, 1, 2, w); err != nil {
		return nil, err
	}

	for i, c := range pts {
		if c.Clients != cachedTarget {
			continue
		}
		if err := mark(lat, fmt.Sprintf("target: iamlet p99 ≤ %.1f× the floor's", targetP99Ratio), float64(i), targetP99Ratio*med(c.Floor, p99)); err != nil {
			return nil, err
		}
		if err := mark(thr, fmt.Sprintf("target: iamlet ≥ %.2f× the floor's", targetRPSRatio), float64(i), targetRPSRatio*med(c.Floor, rps)); err != nil {
			return nil, err
		}
	}
	nominal(lat, names)
	nominal(thr, names)
	thr.Y.Min = 0
	headroom(lat, 5)
	headroom(thr, 3)
	return []*plot.Plot{lat, thr}, nil
}

// plotColdFigure is workload 2: the cold answer's time split, beside the same two calls made directly.
func plotColdFigure(r *Results) ([]*plot.Plot, error) {
	c := r.Cold
	if len(c) == 0 {
		return nil, nil
	}
	p := newPlot("Cold answer: where the time goes (medians)", "", "milliseconds")
	tok := plotter.Values{medianOf(c, func(x ColdRun) float64 { return x.TokenMS }), medianOf(c, func(x ColdRun) float64 { return x.BaseToken })}
	sts := plotter.Values{medianOf(c, func(x ColdRun) float64 { return x.STSMS }), medianOf(c, func(x ColdRun) float64 { return x.BaseSTS })}
	own := plotter.Values{max(0, medianOf(c, ColdRun.OverheadMS)), 0}
	w := vg.Points(60)
	var prev *plotter.BarChart
	for _, s := range []struct {
		name string
		v    plotter.Values
		col  color.Color
	}{{"TokenRequest", tok, colIamlet}, {"STS AssumeRoleWithWebIdentity", sts, colFloor}, {"iamlet's own overhead", own, colThird}} {
		b, err := plotter.NewBarChart(s.v, w)
		if err != nil {
			return nil, err
		}
		b.Color = s.col
		b.LineStyle.Width = 0
		if prev != nil {
			b.StackOn(prev)
		}
		prev = b
		p.Add(b)
		p.Legend.Add(s.name, b)
	}
	nominal(p, []string{"iamlet, cache miss", "direct calls (baseline)"})
	p.Legend.Left = false
	p.Y.Min = 0
	headroom(p, 3)
	return []*plot.Plot{p}, nil
}

// plotNewPodsFigure is workload 3: each pod's time from its address to its credentials cached, in
// creation order, beside the apiserver's time to store that address, and the 1 s at which the pod's
// first request comes.
func plotNewPodsFigure(r *Results) ([]*plot.Plot, error) {
	labels := churnLabels(r)
	if len(labels) == 0 {
		return nil, nil
	}
	p := newPlot("New pods: address in the API → credentials cached", "pod (creation order within its run; runs overlaid)", "milliseconds (log)")
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	for i, l := range labels {
		var cached, stored plotter.XYs
		for _, c := range r.Churn {
			if churnLabel(c) != l {
				continue
			}
			for j, v := range c.ToCachedMS {
				cached = append(cached, plotter.XY{X: float64(j), Y: max(0.1, v)})
			}
			for j, v := range c.StatusMS {
				stored = append(stored, plotter.XY{X: float64(j), Y: max(0.1, v)})
			}
		}
		col := colSeries[i%len(colSeries)]
		for _, s := range []struct {
			name  string
			xys   plotter.XYs
			shape draw.GlyphDrawer
			r     vg.Length
		}{{l + ": to cached", cached, draw.CircleGlyph{}, 1.8}, {l + ": apiserver storing the address (baseline)", stored, draw.CrossGlyph{}, 1.5}} {
			if len(s.xys) == 0 {
				continue
			}
			sc, err := plotter.NewScatter(s.xys)
			if err != nil {
				return nil, err
			}
			sc.Color, sc.Shape, sc.Radius = col, s.shape, vg.Points(float64(s.r))
			p.Add(sc)
			p.Legend.Add(s.name, sc)
		}
	}
	level(p, "first request: 1 s after the address", 1000, colTarget, dotted)
	headroom(p, 2*len(labels)+1)
	return []*plot.Plot{p}, nil
}

// plotMemoryFigure is workloads 4 and 5's memory: one panel per way of counting it (VmRSS, RssAnon,
// working set), iamlet by node pods for each cluster size, the floor server's beside it, and the target.
func plotMemoryFigure(r *Results) ([]*plot.Plot, error) {
	var panels []*plot.Plot
	for _, m := range []struct {
		title  string
		of     func(Mem) float64
		target float64
	}{
		{"VmRSS", func(m Mem) float64 { return m.RSSMiB }, targetRSSMiB},
		{"RssAnon", func(m Mem) float64 { return m.AnonMiB }, targetAnonMiB},
		{"working set, memory cgroup", func(m Mem) float64 { return m.WorkingSetMiB }, 0},
	} {
		p := newPlot("Memory: "+m.title+" (median of runs)", "pods on the agent's node", "MiB")
		rows, drawn := 0, false
		for i, c := range scaleClusters(r) {
			col := colSeries[i%len(colSeries)]
			var xys plotter.XYs
			for _, pt := range scalePoints(r) {
				if pt.cluster != c {
					continue
				}
				if v := medianOf(pt.runs, func(s ScaleRun) float64 { return m.of(s.Mem) }); v > 0 {
					xys = append(xys, plotter.XY{X: float64(pt.node), Y: v})
				}
			}
			if len(xys) == 0 {
				continue
			}
			drawn = true
			if err := line(p, fmt.Sprintf("iamlet, %s cluster pods", thousands(c)), xys, col, nil, nil); err != nil {
				return nil, err
			}
			rows++
			if v := m.of(floorMem(r, c)); v > 0 {
				level(p, fmt.Sprintf("floor server, %s cluster pods", thousands(c)), v, col, dashed)
				rows++
			}
		}
		if !drawn {
			continue
		}
		if m.target > 0 {
			level(p, fmt.Sprintf("target: %.0f MiB at %d node pods", m.target, targetNodePods), m.target, colTarget, dotted)
			rows++
		}
		var ticks []plot.Tick
		for _, n := range scaleNodes(r) {
			ticks = append(ticks, plot.Tick{Value: float64(n), Label: strconv.Itoa(n)})
		}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.Y.Min = 0
		headroom(p, rows)
		panels = append(panels, p)
	}
	return panels, nil
}

// plotStartupFigure is workloads 4 and 5's start-up: for each cluster size, iamlet's exec to /readyz
// at each node pod count, beside iamlet with --iptables=false and the floor server's exec to first
// answer (both measured at targetNodePods), and the target.
func plotStartupFigure(r *Results) ([]*plot.Plot, error) {
	clusters, nodes := scaleClusters(r), scaleNodes(r)
	if len(clusters) == 0 {
		return nil, nil
	}
	p := newPlot("Start-up: exec to ready (median of runs)", "pods in the cluster", "milliseconds")
	type series struct {
		name string
		at   func(cluster int) float64
		col  color.Color
	}
	var ss []series
	for i, n := range nodes {
		ss = append(ss, series{fmt.Sprintf("iamlet, %d node pods", n), func(c int) float64 {
			if pt, ok := scalePointAt(r, n, c); ok {
				return medianOf(pt.runs, func(s ScaleRun) float64 { return s.StartupMS })
			}
			return 0
		}, colSeries[i%len(colSeries)]})
	}
	if len(r.StartBase) > 0 {
		ss = append(ss,
			series{fmt.Sprintf("iamlet --iptables=false, %d node pods", targetNodePods), func(c int) float64 {
				return medianOf(startBases(r, c), func(b StartBaseline) float64 { return b.NoIptablesMS })
			}, colThird},
			series{"floor server, exec to first answer", func(c int) float64 {
				return medianOf(startBases(r, c), func(b StartBaseline) float64 { return b.ProcMS })
			}, colFloor})
	}
	w := vg.Points(min(30, 360/float64(len(ss)*len(clusters))))
	for i, s := range ss {
		v := make(plotter.Values, len(clusters))
		for j, c := range clusters {
			v[j] = s.at(c)
		}
		if err := bars(p, s.name, v, s.col, i, len(ss), w); err != nil {
			return nil, err
		}
	}
	names := make([]string, len(clusters))
	for i, c := range clusters {
		names[i] = thousands(c)
	}
	nominal(p, names)
	level(p, fmt.Sprintf("target: %.0f ms at %d node pods", targetReadyMS, targetNodePods), targetReadyMS, colTarget, dotted)
	p.Y.Min = 0
	headroom(p, len(ss)+1)
	return []*plot.Plot{p}, nil
}
