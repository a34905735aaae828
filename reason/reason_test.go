package reason

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"testing"
)

func TestCodes(t *testing.T) {
	seen := map[Code]bool{}
	re := regexp.MustCompile(`^[a-z_]+$`)
	for _, c := range All {
		if seen[c] || !re.MatchString(string(c)) || !Known(c) {
			t.Fatalf("code %q: duplicate or not [a-z_]+", c)
		}
		seen[c] = true
	}
	if Known("made_up") {
		t.Fatal("unknown code reported known")
	}
}

func TestErrors(t *testing.T) {
	cause := errors.New("cause")
	err := fmt.Errorf("outer: %w", Wrap(BadSignature, cause, "the %s signature", "challenge"))
	if !errors.Is(err, BadSignature) || errors.Is(err, WrongRecipient) || !errors.Is(err, cause) {
		t.Fatal("errors.Is does not match the code and the cause")
	}
	if Of(err) != BadSignature || err.Error() != "outer: bad_signature: the challenge signature: cause" {
		t.Fatalf("%q, %q", Of(err), err)
	}
	for in, want := range map[error]Code{
		nil:                      "",
		errors.New("x"):          Internal,
		context.DeadlineExceeded: Timeout,
		context.Canceled:         Closed,
		StaleTimestamp:           StaleTimestamp,
	} {
		if got := Of(in); got != want {
			t.Errorf("Of(%v) = %q, want %q", in, got, want)
		}
	}
}
