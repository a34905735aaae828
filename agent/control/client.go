package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// ErrNoDaemon: nothing serves the control socket (the daemon is not running for this home).
var ErrNoDaemon = errors.New("no agent daemon is running")

// Call sends one request to the daemon at path and decodes the result into result (which may be nil).
// A failed response is returned as an *Error (see CodeOf). The connection stays open until the response
// is read; cancelling ctx closes it, which cancels the operation in the daemon.
func Call(ctx context.Context, path, op string, args, result any) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("%w for this home (no one listens on %s); start it with 'agentctl run'", ErrNoDaemon, path)
		}
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	req := Request{V: Version, Op: op}
	if args != nil {
		raw, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("encode %s arguments: %w", op, err)
		}
		req.Args = raw
	}
	line, err := json.Marshal(&req)
	if err != nil {
		return err
	}
	if len(line) > MaxRequest {
		return Errorf(CodeTooLarge, "request of %d bytes exceeds the control socket's limit of %d", len(line), MaxRequest)
	}
	_, werr := c.Write(append(line, '\n'))
	// A server that refuses a caller before reading its request (a plugin process, too many connections)
	// answers and closes: the write may fail while the answer waits to be read.
	respLine, err := readLine(c, MaxResponse)
	if err != nil {
		if werr != nil {
			return ctxOr(ctx, fmt.Errorf("send %s request: %w", op, werr))
		}
		return ctxOr(ctx, fmt.Errorf("read %s response: %w", op, err))
	}
	var resp Response
	if err := decodeStrict(respLine, &resp); err != nil {
		return fmt.Errorf("%s response does not decode: %w", op, err)
	}
	if !resp.OK {
		if resp.Error == nil {
			return Errorf(CodeFailed, "%s failed without a reason", op)
		}
		return resp.Error
	}
	if result != nil {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("%s result does not decode: %w", op, err)
		}
	}
	return nil
}

func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}
