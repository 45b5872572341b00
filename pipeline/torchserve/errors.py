"""TorchServe 0.12's error answers, classified by status and wording (the only place that knows them)."""

from __future__ import annotations

import json

ERROR_CLASSES = {
    "bad_input": "the handler rejected the row (HTTP 400)",
    "handler_error": "the handler raised (HTTP 503 'Prediction failed')",
    "batch_mismatch": "the handler returned the wrong number of results for a batch",
    "queue_full": "TorchServe's queue was full or no worker was free (HTTP 503), retries exhausted",
    "worker_died": "the worker died or exceeded the response timeout (HTTP 500 'Worker died.')",
    "too_large": "the request is larger than TorchServe's max_request_size (HTTP 413)",
    "timeout": "no answer within replay.request_timeout_s",
    "connection_error": "the connection was refused or dropped",
    "bad_response": "the answer did not match its format",
    "unauthorized": "the token was refused (HTTP 400/401/403 'Token Authorization failed')",
    "not_found": "the model is not served at this URL (HTTP 404)",
    "http_error": "another HTTP error status",
    "not_sent": "the replay stopped before this row was sent",
}
RETRYABLE = frozenset({"queue_full"})
# Failures of the server, not of the model: the run cannot vouch for the model (exit 3).
SERVER_FAILURES = frozenset({"worker_died", "timeout", "connection_error", "not_found", "unauthorized"})


def answer_message(body: str) -> str:
    try:
        doc = json.loads(body)
        msg = str(doc.get("message", body)) if isinstance(doc, dict) else body
    except ValueError:
        msg = body
    return msg.strip()


def classify_status(status: int, body: str) -> tuple[str, str]:
    """Error class and message of a non-200 TorchServe answer."""
    msg = answer_message(body)
    if "Token Authorization failed" in msg or "Token Authentication failed" in msg:
        return "unauthorized", msg  # TorchServe 0.12 answers a missing or wrong token with 400
    if status == 400:
        return "bad_input", msg
    if status in (401, 403):
        return "unauthorized", msg
    if status == 404:
        return "not_found", msg
    if status == 413:
        return "too_large", msg
    if status in (503, 507):
        if "Prediction failed" in msg:
            return "handler_error", msg
        if "batch response mismatched" in msg:
            return "batch_mismatch", msg
        if "Invalid model predict output" in msg or "Unsupported model output" in msg:
            return "bad_response", msg
        if "Out of resources" in msg:
            return "handler_error", msg
        return "queue_full", msg
    if status == 500 and "Worker died" in msg:
        return "worker_died", msg
    if status in (408, 504):
        return "timeout", msg
    return "http_error", f"HTTP {status}: {msg}"
