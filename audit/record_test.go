package audit

import (
	"encoding/json"
	"math"
	"testing"
)

// The writer's own encoder must produce exactly what json.Marshal does (Verify compares with it).
func TestAppendValueMatchesJSON(t *testing.T) {
	values := []any{
		nil, "", "plain", "with space", `quote " and \ backslash`, "<script>&amp;</script>", "tab\tnew\nline\r\x00\x1f\x7f",
		"é ü 日本", "\u2028\u2029", "bad utf8 \xff\xfe", true, false, 0, -1, math.MaxInt64, int64(math.MinInt64),
		uint64(math.MaxUint64), int32(-7), uint32(7), uint(9), []string{"a", "<b>"}, []string(nil), []string{},
		[]any{1, "x", nil, []any{true}}, []any(nil), map[string]any{}, map[string]any(nil),
		map[string]any{"b": 1, "a": "x", "A": []any{}, "<k>": map[string]any{"z": nil, "y": false}, "é": "\u2028"},
	}
	for _, v := range values {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := appendValue(nil, v)
		if !ok {
			t.Fatalf("appendValue(%#v) declined a plain value", v)
		}
		if string(got) != string(want) {
			t.Errorf("appendValue(%#v) = %s, json.Marshal = %s", v, got, want)
		}
	}
	for _, v := range []any{1.5, float32(2), json.Number("3"), struct{ A int }{1}, map[string]int{"a": 1}, []any{1.5}} {
		if _, ok := appendValue(nil, v); ok {
			t.Errorf("appendValue(%#v) should leave it to json.Marshal", v)
		}
	}
}
