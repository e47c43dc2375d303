package metadata

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// class is what a request asked for; a fixed set so the metrics' cardinality is fixed.
type class uint8

const (
	classToken class = iota
	classCredentials
	classCredentialsExtended
	classNodeFact
	classOther
	numClasses
)

func (c class) String() string {
	switch c {
	case classToken:
		return "token"
	case classCredentials:
		return "credentials"
	case classCredentialsExtended:
		return "credentials_extended"
	case classNodeFact:
		return "node_fact"
	}
	return "other"
}

// outcome is how a request ended; a fixed set (see refusal.info for the mapping from refusals).
type outcome uint8

const (
	outcomeServed outcome = iota
	outcomeUnknownPod
	outcomeNoRole
	outcomeNotAllowed
	outcomeUnavailable
	outcomeNodePath
	outcomeBadToken
	outcomeBadRequest
	outcomeMethodNotAllowed
	outcomeNotFound
	numOutcomes
)

func (o outcome) String() string {
	switch o {
	case outcomeServed:
		return "served"
	case outcomeUnknownPod:
		return "unknown_pod"
	case outcomeNoRole:
		return "no_role"
	case outcomeNotAllowed:
		return "not_allowed"
	case outcomeUnavailable:
		return "unavailable"
	case outcomeNodePath:
		return "node_path"
	case outcomeBadToken:
		return "bad_token"
	case outcomeBadRequest:
		return "bad_request"
	case outcomeMethodNotAllowed:
		return "method_not_allowed"
	}
	return "not_found"
}

// durationBuckets span a cached answer (microseconds) to a cold one behind STS or the node's IMDS (up to the SDKs'
// one-second budget and beyond).
func durationBuckets() []float64 {
	return []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
}

// imdsMetrics holds every series resolved up front, so recording one costs no map lookup or allocation.
type imdsMetrics struct {
	requests [numClasses][numOutcomes]prometheus.Counter
	duration [numClasses]prometheus.Observer
}

func newIMDSMetrics(reg prometheus.Registerer) (*imdsMetrics, error) {
	requests, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "iamlet", Subsystem: "metadata", Name: "requests_total",
		Help: "IMDS requests answered, by what was asked (class) and how it ended (outcome).",
	}, []string{"class", "outcome"}))
	if err != nil {
		return nil, err
	}
	duration, err := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "iamlet", Subsystem: "metadata", Name: "request_duration_seconds",
		Help:    "Time to answer an IMDS request, by class.",
		Buckets: durationBuckets(),
	}, []string{"class"}))
	if err != nil {
		return nil, err
	}
	m := &imdsMetrics{}
	for c := range numClasses {
		for o := range numOutcomes {
			m.requests[c][o] = requests.WithLabelValues(c.String(), o.String())
		}
		m.duration[c] = duration.WithLabelValues(c.String())
	}
	return m, nil
}

func (m *imdsMetrics) observe(c class, o outcome, d time.Duration) {
	m.requests[c][o].Inc()
	m.duration[c].Observe(d.Seconds())
}

// containerMetrics are the container endpoint's own series; it has a single class, so no class label.
type containerMetrics struct {
	requests [numOutcomes]prometheus.Counter
	duration prometheus.Observer
}

func newContainerMetrics(reg prometheus.Registerer) (*containerMetrics, error) {
	requests, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "iamlet", Subsystem: "metadata", Name: "container_requests_total",
		Help: "Container credentials endpoint requests answered, by outcome.",
	}, []string{"outcome"}))
	if err != nil {
		return nil, err
	}
	duration, err := register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "iamlet", Subsystem: "metadata", Name: "container_request_duration_seconds",
		Help:    "Time to answer a container credentials endpoint request.",
		Buckets: durationBuckets(),
	}))
	if err != nil {
		return nil, err
	}
	m := &containerMetrics{duration: duration}
	for o := range numOutcomes {
		m.requests[o] = requests.WithLabelValues(o.String())
	}
	return m, nil
}

func (m *containerMetrics) observe(o outcome, d time.Duration) {
	m.requests[o].Inc()
	m.duration.Observe(d.Seconds())
}

// register registers c, or returns the identical collector already registered (two handlers on one registry, e.g.
// one per listener, share their series). A nil registerer leaves c unregistered.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("register metadata metrics: %w", err)
	}
	return c, nil
}
