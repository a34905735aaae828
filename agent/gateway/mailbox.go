package gateway

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/mailbox"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
)

// Mailbox is the agent's store-and-forward mailbox (mailbox.Service, ADR 0093).
type Mailbox interface {
	Post(ctx context.Context, to string, data []byte) (*mailbox.Stored, error)
	Messages() ([]*mailbox.Message, error)
}

// MessageRequest is the body of POST /v1/agents/{id}/messages.
type MessageRequest struct {
	Data envelope.B64 `json:"data"`
}

// MessageStored is the answer of POST /v1/agents/{id}/messages: the message is sealed to the recipient
// and held until it connects (or until Expires, Unix seconds).
type MessageStored struct {
	MessageID string `json:"message_id"`
	To        string `json:"to"`
	Expires   int64  `json:"expires"`
}

// ReceivedMessage is one message of GET /v1/messages.
type ReceivedMessage struct {
	From      string       `json:"from"`
	MessageID string       `json:"message_id"`
	Timestamp int64        `json:"timestamp"`
	Received  int64        `json:"received"`
	Data      envelope.B64 `json:"data"`
}

// Messages is the answer of GET /v1/messages.
type Messages struct {
	Messages []ReceivedMessage `json:"messages"`
}

// mailboxProblem maps a mailbox refusal to its HTTP status.
func mailboxProblem(err error) error {
	code := reason.Of(err)
	status := map[reason.Code]int{
		reason.BadRequest:          http.StatusBadRequest,
		reason.TooLarge:            http.StatusRequestEntityTooLarge,
		reason.RecipientKeyUnknown: http.StatusConflict,
		reason.MailboxFull:         http.StatusTooManyRequests,
	}[code]
	if status == 0 {
		return err
	}
	p := newProblem(status, code, err.Error())
	if status == http.StatusTooManyRequests {
		p.retryAfter = time.Minute
	}
	return p
}

func (s *Server) postMessage(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	c.details["to"] = id
	if _, err := identity.ParseID(id); err != nil {
		p := newProblem(http.StatusBadRequest, reason.BadRequest, err.Error())
		p.field = "id"
		return p
	}
	if s.opts.Mailbox == nil {
		return newProblem(http.StatusServiceUnavailable, reason.Unavailable, "this agent has no mailbox")
	}
	var a MessageRequest
	if err := s.decode(r, &a); err != nil {
		return err
	}
	m, err := s.opts.Mailbox.Post(r.Context(), id, a.Data)
	if err != nil {
		return mailboxProblem(err)
	}
	c.details["message_id"] = m.MessageID
	w.Header().Set("Location", fmt.Sprintf("/v1/agents/%s/messages/%s", id, m.MessageID))
	return writeJSON(w, http.StatusAccepted, MessageStored{MessageID: m.MessageID, To: id, Expires: m.Expires})
}

func (s *Server) messages(w http.ResponseWriter, _ *http.Request, _ *call) error {
	if s.opts.Mailbox == nil {
		return newProblem(http.StatusServiceUnavailable, reason.Unavailable, "this agent has no mailbox")
	}
	ms, err := s.opts.Mailbox.Messages()
	if err != nil {
		return err
	}
	out := Messages{Messages: []ReceivedMessage{}}
	for _, m := range ms {
		out.Messages = append(out.Messages, ReceivedMessage{From: m.From, MessageID: m.MessageID, Timestamp: m.Timestamp, Received: m.Received, Data: m.Data})
	}
	return writeJSON(w, http.StatusOK, out)
}
