#!/usr/bin/env python3
"""A small client of a Custos agent's HTTP gateway (docs/openapi.yaml), standard library only.

The gateway lets a program that is not an agent submit a task to another agent and get its signed,
verified result. Make an API key on the agent first (the token is printed once):

    agentctl gateway key create --name my-app --role gateway_service,task_submitter,agent_operator

As a library:

    from custos_gateway import Gateway, GatewayError
    gw = Gateway("http://127.0.0.1:8480", token)
    task = gw.submit(to="ed25519:...", handler="sha256", data=b"hello")
    final = gw.wait(task["task_id"])          # follows the task's server-sent events
    output = gw.output(final)                 # the result's bytes, checked against output_sha256
    check = gw.verify(final["result"]["evidence"])   # {"verified": true, "executor": ..., ...}

As a script (the token comes from the environment or a file, never from the command line):

    CUSTOS_GATEWAY_TOKEN=cgw_... python3 custos_gateway.py --url http://127.0.0.1:8480 \\
        --to ed25519:... --handler sha256 --input FILE [--poll] [--ca-file CA.pem | --pin-sha256 PIN] [--cert-file C --key-file K]

A gateway with gateway.tls.bind_agent_id serves a self-signed certificate bound to the agent ID; a
client without a Go binding verifier pins its key: pin_sha256 is the base64 SHA-256 of the
certificate's SubjectPublicKeyInfo, which the agent logs at start ("gateway listening ... pin_sha256=").
It is checked after the handshake and before the API key is sent; the key (and so the pin) lasts until
the agent restarts, while the certificate itself is renewed every 40 minutes or so.

It prints the task's states, the output, and whether the evidence verifies; it exits 0 when the task
succeeded and its evidence verifies, 1 otherwise (a refusal prints its status and reason code).
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

__all__ = ["Gateway", "GatewayError"]

FINAL_STATES = ("done", "failed")  # agent/tasks: Final


class GatewayError(Exception):
    """A refusal of the gateway: an RFC 9457 problem whose reason is the Custos failure code."""

    def __init__(self, status, problem):
        self.status = status
        self.type = problem.get("type", "")
        self.reason = problem.get("reason", "")
        self.detail = problem.get("detail", "")
        self.field = problem.get("field", "")
        self.retry_after = problem.get("retry_after", 0)
        msg = "%d %s: %s" % (status, self.reason or "error", self.detail)
        if self.field:
            msg += " (field %s)" % self.field
        super().__init__(msg)


def _b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64url_encode(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _der_tlv(b, i):
    """The DER element at b[i]: (tag, start of its contents, end)."""
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, i, i + n


def spki_sha256(der):
    """The base64 SHA-256 of a DER certificate's SubjectPublicKeyInfo (the gateway's pin, agent/gateway Pin)."""
    _, cert, _ = _der_tlv(der, 0)
    _, pos, end = _der_tlv(der, cert)  # tbsCertificate
    fields = []
    while pos < end:
        tag, _, nxt = _der_tlv(der, pos)
        fields.append((tag, pos, nxt))
        pos = nxt
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    _, start, stop = fields[5]
    return base64.b64encode(hashlib.sha256(der[start:stop]).digest()).decode("ascii")


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    pin = None

    def connect(self):
        super().connect()
        got = spki_sha256(self.sock.getpeercert(binary_form=True))
        if not hmac.compare_digest(got, self.pin):
            self.sock.close()
            raise ssl.SSLError("gateway certificate key %s does not match the pinned %s" % (got, self.pin))


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, ctx, pin):
        super().__init__(context=ctx)
        self._pin = pin

    def https_open(self, req):
        pin = self._pin

        class conn(_PinnedHTTPSConnection):
            pass

        conn.pin = pin
        return self.do_open(conn, req, context=self._context)


class Gateway:
    """A Custos gateway at url (http://host:port or https://...), called with one API key."""

    def __init__(self, url, token, ca_file=None, cert_file=None, key_file=None, timeout=60, pin_sha256=None):
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._ctx = None
        self._opener = None  # with pin_sha256: checks the pin before the API key is sent
        if url.startswith("https:"):  # the gateway serves TLS 1.3 only
            if pin_sha256 and ca_file:
                raise ValueError("pin_sha256 and ca_file are exclusive")
            self._ctx = ssl.create_default_context(cafile=ca_file)
            self._ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            if cert_file:  # mutual TLS: gateway.tls.client_fingerprints pins this certificate
                self._ctx.load_cert_chain(cert_file, key_file)
            if pin_sha256:  # gateway.tls.bind_agent_id: no CA, the key's pin
                self._ctx.check_hostname = False
                self._ctx.verify_mode = ssl.CERT_NONE
                self._opener = urllib.request.build_opener(_PinnedHTTPSHandler(self._ctx, pin_sha256))

    def _open(self, method, path, body=None, timeout=None):
        data = None
        headers = {"Authorization": "Bearer " + self._token, "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            if self._opener is not None:
                return self._opener.open(req, timeout=timeout or self.timeout)
            return urllib.request.urlopen(req, timeout=timeout or self.timeout, context=self._ctx)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                problem = json.loads(raw)
            except ValueError:
                problem = {"detail": raw.decode("utf-8", "replace")}
            raise GatewayError(e.code, problem) from None

    def _json(self, method, path, body=None, timeout=None):
        with self._open(method, path, body, timeout) as resp:
            return json.loads(resp.read())

    def health(self):
        """GET /v1/healthz: {"status": "ok", "agent_id": ...}."""
        return self._json("GET", "/v1/healthz")

    def submit(self, to, handler, data):
        """POST /v1/tasks: submit data (bytes) to handler on agent to; returns the pending task."""
        return self._json("POST", "/v1/tasks", {"to": to, "handler": handler, "input": _b64url_encode(data)})

    def task(self, task_id, wait=0):
        """GET /v1/tasks/{id}: the task; wait > 0 waits up to that many seconds for it to be final."""
        path = "/v1/tasks/" + task_id + ("?wait=%d" % wait if wait else "")
        return self._json("GET", path, timeout=self.timeout + wait)

    def events(self, task_id, timeout=600):
        """GET /v1/tasks/{id}/events: yields (event, task) for each server-sent event until the result."""
        with self._open("GET", "/v1/tasks/" + task_id + "/events", timeout=timeout) as resp:
            event, data = "message", []
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if data:
                        payload = "\n".join(data)
                        yield event, (json.loads(payload) if event != "error" else payload)
                        if event in ("result", "error"):
                            return
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())

    def wait(self, task_id, timeout=600, poll=False, on_state=None):
        """Waits for the task to be final and returns it: by its event stream, or by polling."""
        if not poll:
            for event, v in self.events(task_id, timeout=timeout):
                if event == "error":
                    raise GatewayError(502, {"reason": "failed", "detail": v})
                if on_state:
                    on_state(v)
                if event == "result":
                    return v
            raise GatewayError(504, {"reason": "timeout", "detail": "the event stream ended before the result"})
        deadline = time.monotonic() + timeout
        while True:
            left = int(deadline - time.monotonic())
            v = self.task(task_id, wait=max(1, min(30, left)))
            if on_state:
                on_state(v)
            if v["state"] in FINAL_STATES:
                return v
            if left <= 0:
                raise GatewayError(504, {"reason": "timeout", "detail": "task %s is still %s" % (task_id, v["state"])})

    def verify(self, evidence):
        """POST /v1/evidence/verify: checks a result's evidence as a third party would."""
        return self._json("POST", "/v1/evidence/verify", evidence)

    @staticmethod
    def output(task):
        """The output bytes of a final task, checked against the output_sha256 the executor signed."""
        r = task.get("result")
        if not r:
            raise ValueError("task %s has no result (state %s)" % (task.get("task_id"), task.get("state")))
        out = _b64url_decode(r.get("output", ""))
        if hashlib.sha256(out).hexdigest() != r["output_sha256"]:
            raise ValueError("task %s: the output does not match its signed digest" % task.get("task_id"))
        return out


def _token(args):
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            return f.read().strip()
    tok = os.environ.get("CUSTOS_GATEWAY_TOKEN", "")
    if not tok:
        sys.exit("custos_gateway: no API key: set CUSTOS_GATEWAY_TOKEN or give --token-file FILE "
                 "(agentctl gateway key create prints one)")
    return tok


def main(argv=None):
    p = argparse.ArgumentParser(description="Submit a task through a Custos gateway and print its verified result.")
    p.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:8480")
    p.add_argument("--to", required=True, help="the executing agent's ID (ed25519:...)")
    p.add_argument("--handler", required=True, help="the executor's handler, e.g. sha256 or echo")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="file whose bytes are the task's input (- for stdin)")
    src.add_argument("--data", help="the task's input as text")
    p.add_argument("--token-file", help="file holding the API key (default: $CUSTOS_GATEWAY_TOKEN)")
    p.add_argument("--ca-file", help="CA certificate (PEM) of an https gateway")
    p.add_argument("--pin-sha256", help="base64 SHA-256 of the gateway certificate's key (gateway.tls.bind_agent_id)")
    p.add_argument("--cert-file", help="client certificate (PEM) when the gateway requires one (mutual TLS)")
    p.add_argument("--key-file", help="the client certificate's private key (PEM)")
    p.add_argument("--poll", action="store_true", help="wait by polling GET /v1/tasks/{id} instead of the event stream")
    p.add_argument("--timeout", type=int, default=120, help="seconds to wait for the result (default 120)")
    args = p.parse_args(argv)

    if args.data is not None:
        data = args.data.encode("utf-8")
    elif args.input == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(args.input, "rb") as f:
            data = f.read()
    gw = Gateway(args.url, _token(args), ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                 pin_sha256=args.pin_sha256)
    try:
        task = gw.submit(args.to, args.handler, data)
        print("submitted task %s to %s (input sha256 %s)" % (task["task_id"], task["to"], task["input_sha256"]))
        final = gw.wait(task["task_id"], timeout=args.timeout, poll=args.poll,
                        on_state=lambda v: print("state %s" % v["state"]))
        if final["state"] != "done" or final["result"]["status"] != "ok":
            r = final.get("result") or {}
            print("task %s %s: %s %s" % (final["task_id"], final["state"], final.get("error_code", r.get("status", "")),
                                         final.get("error", r.get("error", ""))), file=sys.stderr)
            return 1
        out = gw.output(final)
        r = final["result"]
        print("executor %s" % r["executor"])
        try:
            print("output %s" % out.decode("utf-8"))
        except UnicodeDecodeError:
            print("output %d bytes" % len(out))
        print("output_sha256 %s (matches the output)" % r["output_sha256"])
        check = gw.verify(r["evidence"])
        if not check.get("verified"):
            print("evidence does NOT verify: %s" % check.get("error"), file=sys.stderr)
            return 1
        print("evidence verified: task %s run by %s for %s" % (check["task_id"], check["executor"], check["requester"]))
        return 0
    except GatewayError as e:
        print("custos_gateway: refused: %s [%s]" % (e, e.type), file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print("custos_gateway: cannot reach the gateway at %s: %s" % (args.url, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
