"""TorchServe handler for classifiers whose input is one fixed-shape float tensor per row.

Tabular rows ([30] features) and small images ([1, 8, 8] pixels) are both this kind: the
shape comes from ``model_meta.json`` packed beside the model, so a user's own model of the
same kind needs no new handler.

Request body (JSON): ``{"features": [...]}`` (flat, or nested in the input shape) or a bare list;
behind a KServe envelope the row's ``data`` holds the same.
Response body (JSON): ``{"prediction": k, "label": name, "probabilities": [...], "logits": [...]}``.
A malformed row gets HTTP 400 with the reason; the other rows of its batch are still answered.

The model is TorchScript (``.pt``), an AOTInductor package (``.pt2``) or an eager model file
plus its state_dict (``--model-file``), loaded by TorchServe's ``BaseHandler`` where it can.
The tensor logic lives in module-level functions that tests call directly; the class only
wires them into BaseHandler's preprocess, inference and postprocess.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

META_FILE = "model_meta.json"


def decode_body(body) -> object:
    """The request payload as Python data: TorchServe hands over bytes, str, or parsed JSON."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        return json.loads(body)
    return body


def _flatten(values) -> list:
    if isinstance(values, (list, tuple)):
        out = []
        for v in values:
            out.extend(_flatten(v))
        return out
    return [values]


def parse_row(payload, input_shape: list[int]) -> torch.Tensor:
    """One request's features as a float32 tensor of ``input_shape``; ValueError says why not."""
    if isinstance(payload, dict):
        if "features" not in payload:
            raise ValueError(f"expected a JSON object with key 'features', got keys {sorted(payload)[:10]}")
        payload = payload["features"]
    if not isinstance(payload, (list, tuple)):
        raise ValueError(f"expected a list of numbers, got {type(payload).__name__}")
    flat = _flatten(payload)
    want = math.prod(input_shape)
    if len(flat) != want:
        raise ValueError(f"expected {want} features for input shape {input_shape}, got {len(flat)}")
    bad = [i for i, v in enumerate(flat) if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise ValueError(f"feature {bad[0]} is {flat[bad[0]]!r}, not a number")
    if not all(math.isfinite(v) for v in flat):
        raise ValueError("features must be finite numbers (found NaN or infinity)")
    return torch.tensor(flat, dtype=torch.float32).reshape(input_shape)


def logits_to_results(logits: torch.Tensor, class_names: list[str] | None) -> list[dict]:
    """One result dict per row of a [N, C] logits tensor."""
    logits = logits.detach().to(torch.float32).reshape(logits.shape[0], -1)
    probs = torch.softmax(logits.to(torch.float64), dim=1)
    preds = logits.argmax(dim=1)
    out = []
    for i in range(logits.shape[0]):
        k = int(preds[i])
        out.append(
            {
                "prediction": k,
                "label": class_names[k] if class_names and k < len(class_names) else str(k),
                "probabilities": probs[i].tolist(),
                "logits": logits[i].tolist(),
            }
        )
    return out


def request_payload(req: dict):
    """The row's payload from one request dict (raw body, or a KServe instance's ``data``)."""
    body = req.get("body") if req.get("body") is not None else req.get("data")
    return decode_body(body)


class TensorClassifierHandler(BaseHandler):
    """Fixed-shape tensor rows in, this project's JSON answer out."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape: list[int] = []
        self.class_names: list[str] | None = None
        self._errors: dict[int, str] = {}
        self._batch_size = 0

    def initialize(self, context) -> None:
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, META_FILE)) as f:
            meta = json.load(f)
        self.input_shape = [int(d) for d in meta["input_shape"]]
        self.class_names = meta.get("class_names")
        serialized = context.manifest["model"]["serializedFile"]
        if serialized.endswith(".pt2"):  # an AOTInductor package, which BaseHandler cannot load
            from torch import _inductor

            self.manifest = context.manifest
            self.device = torch.device("cpu")
            self.model = _inductor.aoti_load_package(os.path.join(model_dir, serialized))
            self.initialized = True
        else:
            super().initialize(context)
        logger.info("loaded %s, input shape %s", serialized, self.input_shape)

    def preprocess(self, data):
        rows, self._errors, self._batch_size = [], {}, len(data)
        for idx, req in enumerate(data):
            try:
                rows.append(parse_row(request_payload(req), self.input_shape))
            except (ValueError, TypeError, UnicodeDecodeError) as e:
                self._errors[idx] = str(e)
        return torch.stack(rows) if rows else None

    def inference(self, data, *args, **kwargs):
        if data is None:
            return None
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data):
        answers = iter(logits_to_results(data, self.class_names) if data is not None else [])
        results = []
        for idx in range(self._batch_size):
            if idx in self._errors:
                self.context.set_response_status(400, self._errors[idx], idx)
                results.append(json.dumps({"code": 400, "type": "BadInput", "message": self._errors[idx]}))
            else:
                results.append(json.dumps(next(answers)))
            self.context.set_response_content_type(idx, "application/json")
        return results
