"""TorchServe handler for classifiers whose input is one fixed-shape float tensor per row.

Tabular rows ([30] features) and small images ([1, 8, 8] pixels) are both this kind: the
shape comes from ``model_meta.json`` packed beside the model, so a user's own model of the
same kind needs no new handler.

Request body (JSON): ``{"features": [...]}`` (flat, or nested in the input shape) or a bare list.
Response body (JSON): ``{"prediction": k, "label": name, "probabilities": [...], "logits": [...]}``.
A malformed row gets HTTP 400 with the reason; the other rows of its batch are still answered.

The model file is TorchScript (``.pt``, via ``torch.jit.load``) or an AOTInductor package
(``.pt2``, via ``torch._inductor.aoti_load_package``). TorchServe wants exactly one class in
this file, so the tensor logic lives in module-level functions that tests call directly.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch

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


def load_model_file(path: str):
    """A callable model from a TorchScript file or an AOTInductor package."""
    if path.endswith(".pt2"):
        from torch import _inductor

        return _inductor.aoti_load_package(path)
    model = torch.jit.load(path, map_location="cpu")
    model.eval()
    return model


class TensorClassifierHandler:
    """Wires the functions above into TorchServe's initialize/handle protocol."""

    def __init__(self) -> None:
        self.model = None
        self.input_shape: list[int] = []
        self.class_names: list[str] | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        model_dir = context.system_properties.get("model_dir")
        serialized = context.manifest["model"]["serializedFile"]
        with open(os.path.join(model_dir, META_FILE)) as f:
            meta = json.load(f)
        self.input_shape = [int(d) for d in meta["input_shape"]]
        self.class_names = meta.get("class_names")
        self.model = load_model_file(os.path.join(model_dir, serialized))
        self.initialized = True
        logger.info("loaded %s, input shape %s", serialized, self.input_shape)

    def handle(self, data, context):
        rows, errors = [], {}
        for idx, req in enumerate(data):
            body = req.get("body") if req.get("body") is not None else req.get("data")
            try:
                rows.append((idx, parse_row(decode_body(body), self.input_shape)))
            except (ValueError, TypeError, UnicodeDecodeError) as e:
                errors[idx] = str(e)
        results: list[str | None] = [None] * len(data)
        if rows:
            with torch.inference_mode():
                logits = self.model(torch.stack([t for _, t in rows]))
            for (idx, _), result in zip(rows, logits_to_results(logits, self.class_names)):
                results[idx] = json.dumps(result)
        for idx, msg in errors.items():
            context.set_response_status(400, msg, idx)
            results[idx] = json.dumps({"code": 400, "type": "BadInput", "message": msg})
        for idx in range(len(data)):
            context.set_response_content_type(idx, "application/json")
        return results
