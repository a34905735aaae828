package strictjson

import (
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	type obj struct {
		A int `json:"a"`
	}
	for _, tc := range []struct {
		name, in string
		max      int
		is       error
		contains string
	}{
		{"ok", `{"a":1}`, 0, nil, ""},
		{"ok with space", " {\"a\":1}\n", 16, nil, ""},
		{"too large", `{"a":1}`, 6, ErrTooLarge, "7 bytes exceeds 6"},
		{"unknown field", `{"a":1,"b":2}`, 0, nil, `unknown field "b"`},
		{"trailing object", `{"a":1}{}`, 0, ErrTrailing, "trailing data"},
		{"trailing close brace", `{"a":1}}`, 0, ErrTrailing, "trailing data"},
		{"trailing close bracket", `{"a":1}]`, 0, ErrTrailing, "trailing data"},
		{"empty", ``, 0, nil, "EOF"},
		{"syntax", `{"a":}`, 0, nil, "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v obj
			err := Decode([]byte(tc.in), &v, tc.max)
			if tc.contains == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("Decode(%q) = %v, want an error containing %q", tc.in, err, tc.contains)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("Decode(%q) = %v, want it to wrap %v", tc.in, err, tc.is)
			}
		})
	}
}

func TestCanonical(t *testing.T) {
	if err := Canonical([]byte(`{"a":1}`), []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := Canonical([]byte(`{ "a":1}`), []byte(`{"a":1}`)); !errors.Is(err, ErrNotCanonical) {
		t.Fatalf("got %v, want ErrNotCanonical", err)
	}
}
