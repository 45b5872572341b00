"""What TorchServe 0.12's Python worker makes of a request body before the handler sees it.

``otf_message_handler._retrieve_input_data``: an ``application/json`` body is parsed JSON
(left as bytes if it does not parse), a ``text/*`` body is a ``str`` (bytes if it is not
UTF-8), anything else stays ``bytes``. A leaf module: the in-process handler child imports it
without the rest of the pipeline.
"""

from __future__ import annotations

import json
from typing import Any


def worker_view(body: bytes, content_type: str) -> Any:
    """The handler's view of a raw request body with this Content-Type."""
    if content_type == "application/json":
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return body
    if content_type.startswith("text"):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body
    return body
