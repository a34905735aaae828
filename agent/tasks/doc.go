// Package tasks is the task protocol between agents (DESIGN 4.3): a submitter sends a task_request
// (handler name and input) over its session with the executor; the executor records the task (bbolt,
// fsync) before it answers task_response "accepted", runs it on a local handler (built-in echo and sha256,
// or a configured command run without a shell), and returns a task_result that carries its signed evidence:
// an unencrypted envelope (cipher "none") whose plaintext names the task, the requester, the handler, the
// input digest and the output, signed by the executor's operational key. The submitter verifies it against
// the executor's key event log and delegation, stores it (fsync) and acknowledges it (task_response
// "result_received"), after which the executor forgets the task.
//
// Delivery is at least once, with idempotent task IDs: the submitter repeats unacknowledged requests (on
// every new session with the executor and on a timer); a repeated request is answered from the executor's
// store (the stored result, or "accepted" again), never run a second time while the record lives; tasks an
// executor accepted but had not finished when it stopped run again when it starts. Payloads are small JSON
// documents, strictly decoded (no unknown fields, no trailing data, unpadded base64url bytes).
//
// The third-party check of a result needs only the Evidence bundle (envelope, delegation, key event log):
// VerifyEvidence.
package tasks
