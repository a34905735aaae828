package metrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// metricName matches a metric name of the agent (custos_*) or of its Go and process collectors.
var metricName = regexp.MustCompile(`\b(?:custos|process|go)_[a-z0-9_]+\b`)

// TestGrafanaDashboardNamesExportedMetrics: every query of configs/grafana/custos.json (panel targets and
// template variables) names at least one metric, and every metric it names is one the agent exports.
func TestGrafanaDashboardNamesExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "configs", "grafana", "custos.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("custos.json: %v", err)
	}
	queries := dashboardQueries(dash)
	if len(queries) < 20 {
		t.Fatalf("the dashboard has only %d queries", len(queries))
	}
	have := exportedNames(t)
	for _, q := range queries {
		names := metricName.FindAllString(q, -1)
		if len(names) == 0 {
			t.Errorf("query names no metric: %s", q)
		}
		for _, n := range names {
			if !have[n] {
				t.Errorf("query names %s, which the agent does not export: %s", n, q)
			}
		}
	}
}

// dashboardQueries returns the PromQL of a Grafana dashboard: every target's expr and every query
// template variable's query, in panels nested at any depth.
func dashboardQueries(v any) []string {
	var out []string
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch x := v.(type) {
		case map[string]any:
			if key == "templating" {
				for _, vv := range x["list"].([]any) {
					if m, ok := vv.(map[string]any); ok && m["type"] == "query" {
						out = append(out, m["query"].(string))
					}
				}
				return
			}
			for k, vv := range x {
				if k == "expr" {
					if s, ok := vv.(string); ok {
						out = append(out, s)
					}
					continue
				}
				walk(vv, k)
			}
		case []any:
			for _, vv := range x {
				walk(vv, key)
			}
		}
	}
	walk(v, "")
	return out
}

// exportedNames are the metric names a scrape of an exercised agent holds (histograms with their
// _bucket, _sum and _count series).
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	m := New()
	exercise(m)
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				have[f.GetName()+s] = true
			}
		}
	}
	return have
}
