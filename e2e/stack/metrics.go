package stack

import (
	"fmt"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of the agent's /metrics.
type Metrics map[string]*dto.MetricFamily

// Scrape reads the agent's metrics.
func Scrape() (Metrics, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + AgentMetricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// Value is the value of the series of family name whose labels include all of want, and whether one
// exists. Counters, gauges and untyped series are read; for histograms and summaries it is the sample count.
func (m Metrics) Value(name string, want map[string]string) (float64, bool) {
	for _, s := range m.series(name, want) {
		switch {
		case s.Counter != nil:
			return s.Counter.GetValue(), true
		case s.Gauge != nil:
			return s.Gauge.GetValue(), true
		case s.Histogram != nil:
			return float64(s.Histogram.GetSampleCount()), true
		case s.Summary != nil:
			return float64(s.Summary.GetSampleCount()), true
		case s.Untyped != nil:
			return s.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// Sum adds the values of every counter or gauge series of name whose labels include want.
func (m Metrics) Sum(name string, want map[string]string) float64 {
	total := 0.0
	for _, s := range m.series(name, want) {
		total += s.GetCounter().GetValue() + s.GetGauge().GetValue()
	}
	return total
}

// series are the series of family name whose labels include all of want.
func (m Metrics) series(name string, want map[string]string) []*dto.Metric {
	var out []*dto.Metric
next:
	for _, s := range m[name].GetMetric() {
		have := map[string]string{}
		for _, l := range s.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		out = append(out, s)
	}
	return out
}
