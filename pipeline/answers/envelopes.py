"""Request and answer envelopes: none (TorchServe's own API), KServe v1, KServe v2 (Open Inference Protocol).

    none       POST /predictions/NAME        the body as is                -> the handler's answer
    kserve_v1  POST /v1/models/NAME:predict  {"instances": [{"data": X}]}  -> {"predictions": [answer]}
    kserve_v2  POST /v2/models/NAME/infer    {"inputs": [{"name", "shape", "datatype", "data"}]}
                                                                           -> {"outputs": [{"data": [...]}]}

X is the body base64-encoded for bytes (what TorchServe's vision handler decodes), the text
for text, the parsed document for JSON. A task that reads its answer by output name (detection:
``boxes``, ``labels``, ``scores``, as KServe and Triton runtimes name them) gets every output
(``unwrap_outputs``): several named outputs become ``{name: data}``, and one output's data is
kept as the list it is (TorchServe's built-in object_detector sends its boxes as one BYTES
output: one box is still a list of one, no box an empty list). In v2, a ``{"features": [...]}`` document travels as
an FP32 tensor, anything else as BYTES. TorchServe's KServe envelopes use only the first
request of a server-side batch, so one row travels per request.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pipeline.answers.base import AnswerError, parse_json

JSON = "application/json"


def _instance_value(body: bytes, content_type: str, view: Any) -> Any:
    if content_type == JSON and not isinstance(view, (bytes, bytearray)):
        return view
    if content_type.startswith("text") and isinstance(view, str):
        return view
    return base64.b64encode(body).decode("ascii")


def _maybe_json(value: Any) -> Any:
    if isinstance(value, (str, bytes, bytearray)):
        try:
            return parse_json(value)
        except AnswerError:
            return value
    return value


class Plain:
    name = "none"
    service_envelope = None

    def path(self, model: str) -> str:
        return f"/predictions/{model}"

    def wrap(self, body: bytes, content_type: str, view: Any) -> tuple[bytes, str]:
        return body, content_type

    def unwrap(self, body: bytes) -> Any:
        return parse_json(body)

    def unwrap_outputs(self, body: bytes) -> Any:
        return self.unwrap(body)


class KServeV1:
    name = "kserve_v1"
    service_envelope = "kserve"

    def path(self, model: str) -> str:
        return f"/v1/models/{model}:predict"

    def wrap(self, body: bytes, content_type: str, view: Any) -> tuple[bytes, str]:
        doc = {"instances": [{"data": _instance_value(body, content_type, view)}]}
        return json.dumps(doc, separators=(",", ":")).encode(), JSON

    def unwrap(self, body: bytes) -> Any:
        doc = parse_json(body)
        preds = doc.get("predictions") if isinstance(doc, dict) else None
        if not isinstance(preds, list) or not preds:
            raise AnswerError(f"a KServe v1 answer needs a non-empty 'predictions' list, got {str(doc)[:120]!r}")
        return _maybe_json(preds[0])

    def unwrap_outputs(self, body: bytes) -> Any:
        return self.unwrap(body)  # a prediction is one object already: {"boxes": ..., "labels": ..., "scores": ...}


class KServeV2:
    name = "kserve_v2"
    service_envelope = "kservev2"

    def path(self, model: str) -> str:
        return f"/v2/models/{model}/infer"

    def wrap(self, body: bytes, content_type: str, view: Any) -> tuple[bytes, str]:
        features = view.get("features") if isinstance(view, dict) and len(view) == 1 else None
        if isinstance(features, list) and all(isinstance(v, (int, float)) for v in features):
            tensor = {"name": "input-0", "shape": [len(features)], "datatype": "FP32", "data": features}
        else:
            value = _instance_value(body, content_type, view)
            if not isinstance(value, str):
                value = json.dumps(value, separators=(",", ":"))
            tensor = {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": [value]}
        return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode(), JSON

    def _outputs(self, body: bytes) -> list:
        doc = parse_json(body)
        outputs = doc.get("outputs") if isinstance(doc, dict) else None
        if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
            raise AnswerError(f"a KServe v2 answer needs a non-empty 'outputs' list, got {str(doc)[:120]!r}")
        return outputs

    def unwrap_outputs(self, body: bytes) -> Any:
        """Every output of the answer: ``{name: data}`` (flat, as sent) for several, one output's data list as is,
        or the JSON document a single BYTES value holds; AnswerError for unnamed or twice-named outputs."""
        outputs = self._outputs(body)
        if len(outputs) == 1:
            data = outputs[0].get("data")
            if not isinstance(data, list):
                raise AnswerError(f"a KServe v2 output needs a 'data' list, got {str(outputs[0])[:120]!r}")
            return _maybe_json(data[0]) if len(data) == 1 and isinstance(data[0], (str, bytes)) else data
        named: dict[str, Any] = {}
        for out in outputs:
            name = out.get("name") if isinstance(out, dict) else None
            if not isinstance(name, str) or not isinstance(out.get("data"), list):
                raise AnswerError(f"each output of a KServe v2 answer needs a 'name' and a 'data' list, got "
                                  f"{str(out)[:120]!r}")
            if name in named:
                raise AnswerError(f"the KServe v2 answer names two outputs {name!r}: each needs its own name")
            named[name] = out["data"]
        return named

    def unwrap(self, body: bytes) -> Any:
        outputs = self._outputs(body)
        data = outputs[0].get("data")
        if not isinstance(data, list) or not data:
            raise AnswerError(f"a KServe v2 output needs a non-empty 'data' list, got {str(outputs[0])[:120]!r}")
        if len(data) == 1 and isinstance(data[0], (str, dict, bytes)):
            return _maybe_json(data[0])
        return data


ENVELOPES = {e.name: e for e in (Plain(), KServeV1(), KServeV2())}
