package gateway

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/rbac"
)

// Ops is what the gateway asks of the agent: a control operation by name (api.Table), with its arguments
// and a pointer to its result type. The daemon passes the same handlers its control socket serves
// (HandlerOps): the gateway is another front of the control operations, not a client of the socket.
type Ops interface {
	Call(ctx context.Context, op string, args, result any) error
}

// HandlerOps calls the control API's handlers in process, as Cred (the agent's own credentials: the
// gateway acts under its own authority and checks its clients' keys itself).
type HandlerOps struct {
	Handlers map[string]api.Handler
	Cred     rbac.Cred
}

// Call runs op's handler with args encoded as the control socket would carry them, and decodes its answer
// into result.
func (h HandlerOps) Call(ctx context.Context, op string, args, result any) error {
	fn, ok := h.Handlers[op]
	if !ok {
		return fmt.Errorf("gateway: the agent serves no operation %s", op)
	}
	raw, err := json.Marshal(args)
	if err != nil {
		return err
	}
	out, err := fn(ctx, h.Cred, raw)
	if err != nil {
		return err
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, result)
}
