package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The YAML library's type errors, one per string: "line N: cannot unmarshal !!TAG `VALUE` into GOTYPE"
// and "line N: field KEY not found in type GOTYPE".
var (
	reCannot  = regexp.MustCompile("^line ([0-9]+): cannot unmarshal !!([a-z]+)(?: `(.*)`)? into (.+)$")
	reUnknown = regexp.MustCompile(`^line ([0-9]+): field (.+) not found in type .+$`)
	reLine    = regexp.MustCompile(`^(?:yaml: )?line ([0-9]+): (.*)$`)
)

// explainYAML turns an error of the YAML decoder into one line per problem that names the key (its
// dotted path, as configs/agent.example.yaml writes it), the value, and the form expected: never the
// library's Go type names. root is the document the error is about (nil when it did not parse).
func explainYAML(err error, root *yaml.Node) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := reLine.FindStringSubmatch(msg); m != nil {
			return fmt.Errorf("%w: line %s: not valid YAML: %s", ErrConfig, m[1], m[2])
		}
		return fmt.Errorf("%w: not valid YAML: %s", ErrConfig, msg)
	}
	var parts []string
	for _, e := range te.Errors {
		parts = append(parts, explainOne(e, root))
	}
	return fmt.Errorf("%w: %s", ErrConfig, strings.Join(parts, "; "))
}

func explainOne(e string, root *yaml.Node) string {
	if m := reUnknown.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		path := findKey(root, line, m[2])
		if path == "" {
			path = m[2]
		}
		msg := fmt.Sprintf("line %d: %s: unknown key", line, path)
		if known := knownKeys(parentPath(path)); len(known) > 0 {
			msg += " (the keys there are: " + strings.Join(known, ", ") + ")"
		}
		return msg
	}
	if m := reCannot.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		tag, value, goType := m[2], m[3], m[4]
		path := findValue(root, line, value)
		shown := value
		switch {
		case tag == "map":
			shown = "a mapping"
		case tag == "seq":
			shown = "a list"
		}
		where := fmt.Sprintf("line %d: ", line)
		if path != "" {
			where += path + ": "
		}
		return where + shown + " is not " + expectedForm(goType)
	}
	return strings.TrimPrefix(e, "yaml: ")
}

// expectedForm names the form a Go type takes in YAML, in an operator's words.
func expectedForm(goType string) string {
	switch {
	case goType == "time.Duration":
		return "a duration; write it with a unit, like 30s"
	case goType == "bool":
		return "true or false"
	case goType == "string":
		return "a string"
	case goType == "float64" || goType == "float32":
		return "a number"
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		return "a whole number"
	case strings.HasPrefix(goType, "[]"):
		return "a list; write it as [a, b] or one \"- item\" per line"
	default: // a map or a struct
		return "a mapping; write it as {key: value} or one \"key: value\" per line, indented"
	}
}

// findValue returns the dotted path of the value node on line whose text is value (any node on the
// line when value is empty), or "".
func findValue(root *yaml.Node, line int, value string) string {
	var found string
	walk(root, "", func(path string, key, val *yaml.Node) bool {
		if val.Line == line && (value == "" || (val.Kind == yaml.ScalarNode && val.Value == value) ||
			(val.Kind != yaml.ScalarNode && value == "")) {
			found = path
			return true
		}
		return false
	})
	return found
}

// findKey returns the dotted path of the mapping key name on line, or "".
func findKey(root *yaml.Node, line int, name string) string {
	var found string
	walk(root, "", func(path string, key, _ *yaml.Node) bool {
		if key != nil && key.Line == line && key.Value == name {
			found = path
			return true
		}
		return false
	})
	return found
}

// walk visits every (key, value) of the document depth first with its dotted path (list items as
// [i], key nil) until visit returns true.
func walk(n *yaml.Node, path string, visit func(path string, key, val *yaml.Node) bool) bool {
	if n == nil {
		return false
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if walk(c, path, visit) {
				return true
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if visit(p, k, v) || walk(v, p, visit) {
				return true
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if visit(p, nil, c) || walk(c, p, visit) {
				return true
			}
		}
	}
	return false
}

// parentPath drops the last key of a dotted path ("limits.drain_timout" → "limits").
func parentPath(path string) string {
	if i := strings.LastIndex(path, "."); i >= 0 {
		return path[:i]
	}
	return ""
}

// knownKeys lists the keys the schema accepts at a dotted path ("" is the top level), from Config's
// yaml tags; nil where the path is not a fixed mapping.
func knownKeys(path string) []string {
	t := reflect.TypeOf(Config{})
	if path != "" {
		for _, seg := range strings.Split(path, ".") {
			name, _, _ := strings.Cut(seg, "[")
			t = structField(t, name)
			if t == nil {
				return nil
			}
			for strings.Contains(seg, "[") && (t.Kind() == reflect.Slice || t.Kind() == reflect.Map) {
				t = t.Elem()
				seg = seg[strings.Index(seg, "]")+1:]
			}
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag != "" && tag != "-" {
			keys = append(keys, tag)
		}
	}
	sort.Strings(keys)
	return keys
}

// structField returns the type of t's field tagged name (the element type for a map, whose keys are
// names chosen by the operator), or nil.
func structField(t reflect.Type, name string) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Map:
		return t.Elem()
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag == name {
				return t.Field(i).Type
			}
		}
	}
	return nil
}
