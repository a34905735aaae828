package gateway

import (
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/reason"
)

// ProblemTypePrefix starts every problem's type: the rest is the reason code (reason/registry.go), so a
// client can switch on the type without parsing prose.
const ProblemTypePrefix = "urn:custos:reason:"

// Problem is an RFC 9457 problem details object (application/problem+json). Reason repeats the code
// that the type ends with; Field names the offending request field when there is one.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Reason string `json:"reason"`
	Field  string `json:"field,omitempty"`
	// RetryAfter is set with 429 and 503 (in seconds; also the Retry-After header).
	RetryAfter int `json:"retry_after,omitempty"`
}

// problem is a refusal on its way to the client.
type problem struct {
	status     int
	code       reason.Code
	detail     string
	field      string
	retryAfter time.Duration
}

func (p *problem) Error() string { return string(p.code) + ": " + p.detail }

func newProblem(status int, code reason.Code, detail string) *problem {
	return &problem{status: status, code: code, detail: detail}
}

func (p *problem) write(w http.ResponseWriter) {
	pr := Problem{Type: ProblemTypePrefix + string(p.code), Title: http.StatusText(p.status), Status: p.status,
		Detail: p.detail, Reason: string(p.code), Field: p.field}
	if p.retryAfter > 0 {
		secs := int((p.retryAfter + time.Second - 1) / time.Second)
		pr.RetryAfter = secs
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	if p.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="custos"`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.status)
	_ = json.NewEncoder(w).Encode(pr)
}

// fromControl maps an error of a control operation (a *control.Error) to a problem.
func fromControl(err error) *problem {
	var p *problem
	if errors.As(err, &p) {
		return p
	}
	msg := err.Error()
	switch control.CodeOf(err) {
	case control.CodeBadRequest:
		return newProblem(http.StatusBadRequest, reason.BadRequest, msg)
	case control.CodeNotFound:
		return newProblem(http.StatusNotFound, reason.NotFound, msg)
	case control.CodeDenied:
		return newProblem(http.StatusForbidden, reason.Denied, msg)
	case control.CodeUnavailable:
		return newProblem(http.StatusServiceUnavailable, reason.Unavailable, msg)
	case control.CodeTimeout:
		return newProblem(http.StatusGatewayTimeout, reason.Timeout, msg)
	case control.CodeRefused:
		return newProblem(http.StatusBadGateway, reason.PeerRefused, msg)
	case control.CodeTooLarge:
		return newProblem(http.StatusRequestEntityTooLarge, reason.TooLarge, msg)
	}
	return newProblem(http.StatusInternalServerError, reason.Failed, msg)
}

var unknownField = regexp.MustCompile(`unknown field "([^"]{0,128})"`)

// badJSON is the 400 of a body that does not decode: it names the unknown field when there is one.
func badJSON(err error) *problem {
	p := newProblem(http.StatusBadRequest, reason.BadRequest, "request body: "+err.Error())
	if m := unknownField.FindStringSubmatch(err.Error()); m != nil {
		p.field = m[1]
		p.detail = "request body: unknown field \"" + m[1] + "\" (see GET /v1/openapi.json for the fields)"
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		p.field = te.Field
	}
	return p
}
