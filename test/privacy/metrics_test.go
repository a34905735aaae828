package privacy_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/metrics"
)

// TestMetricsCarryNoAgentIDs (docs/privacy.md, metrics): every method of the agent's metrics is called
// with agent IDs wherever it takes a string; no series then has an agent ID, or any part of one, as a
// label value (label values are bounded identifiers; an agent ID counts as "other"). Methods added later
// are called too (by reflection), so a new per-peer label fails here.
func TestMetricsCarryNoAgentIDs(t *testing.T) {
	ids := []string{"ed25519:UkfMJAP2g8l__mHXDTskYoTeYOEZUc8oQHrGOf0ALcc", "p256:AqlkqzvRnFhUmyn0rZsmEU3LLd6mCBwNeAfX0ZlKpDsS"}
	m := metrics.New()
	v := reflect.ValueOf(m)
	called := 0
	for i := 0; i < v.NumMethod(); i++ {
		mt := v.Type().Method(i)
		ft := mt.Type
		for _, id := range ids {
			args := make([]reflect.Value, 0, ft.NumIn()-1)
			ok := true
			for j := 1; j < ft.NumIn(); j++ {
				in := ft.In(j)
				switch {
				case in.Kind() == reflect.String:
					args = append(args, reflect.ValueOf(id).Convert(in))
				case in == reflect.TypeOf(time.Duration(0)):
					args = append(args, reflect.ValueOf(time.Millisecond))
				case in.Kind() == reflect.Int:
					args = append(args, reflect.ValueOf(1).Convert(in))
				case in.Kind() == reflect.Bool:
					args = append(args, reflect.ValueOf(true))
				case in == reflect.TypeOf((*error)(nil)).Elem():
					args = append(args, reflect.ValueOf(errors.New(id)))
				case in == reflect.TypeOf(map[string]bool{}):
					args = append(args, reflect.ValueOf(map[string]bool{id: true}))
				default:
					ok = false
				}
			}
			if !ok {
				continue
			}
			v.Method(i).Call(args)
			called++
		}
	}
	if called < 20 {
		t.Fatalf("only %d calls made: the reflection walk is broken", called)
	}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, f := range fams {
		for _, s := range f.GetMetric() {
			series++
			for _, l := range s.GetLabel() {
				for _, id := range ids {
					_, body, _ := strings.Cut(id, ":")
					if strings.Contains(l.GetValue(), body[:12]) || strings.Contains(l.GetValue(), id) {
						t.Errorf("%s{%s=%q}: an agent ID as a label value", f.GetName(), l.GetName(), l.GetValue())
					}
				}
			}
		}
	}
	if series == 0 {
		t.Fatal("no series gathered")
	}
}
