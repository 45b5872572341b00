"""TorchServe handler for diabetes JSON records: one record in, one predicted progression out.

A request body is one JSON object of the 10 named features (``{"age": 0.038, "sex": 0.05, ...}``);
the tensor is built in the order ``features.json`` lists (packed into the .mar). Each request of
a server-side batch gets its own answer ``{"value": 151.2}``, the progression in the target's
units (the model de-normalises its output itself). A record that lacks a field or holds a value
that is not a finite number gets HTTP 400; the other requests of its batch are answered.

TorchServe imports this file flat from the model folder: only json, os and torch are imported,
and it defines exactly one class, the handler.
"""

import json
import os

import torch

FEATURES_FILE = "features.json"
INF = float("inf")


def record_tensor(body, features):
    """float32 [len(features)] of one request's record; ValueError (HTTP 400) for a bad record."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body)
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object of features, got a {type(body).__name__}")
    missing = [f for f in features if f not in body]
    if missing:
        raise ValueError(f"record lacks {len(missing)} field(s): {missing[:5]}")
    values = []
    for f in features:
        v = body[f]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -INF < v < INF:
            raise ValueError(f"field {f!r} must be a finite number, got {v!r}")
        values.append(float(v))
    return torch.tensor(values, dtype=torch.float32)


class DiabetesRecordsHandler:
    """Loads the TorchScript model and features.json; answers every request of a batch."""

    def __init__(self):
        self.model = None
        self.features = None
        self.initialized = False

    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        self.model = torch.jit.load(os.path.join(model_dir, context.manifest["model"]["serializedFile"]),
                                    map_location="cpu")
        self.model.eval()
        with open(os.path.join(model_dir, FEATURES_FILE), encoding="utf-8") as f:
            self.features = json.load(f)
        self.initialized = True

    def handle(self, data, context):
        answers = [None] * len(data)
        rows, index = [], []
        for i, request in enumerate(data):
            body = request.get("data") if request.get("data") is not None else request.get("body")
            try:
                rows.append(record_tensor(body, self.features))
                index.append(i)
            except ValueError as e:
                context.set_response_status(400, str(e), i)
                answers[i] = {"code": 400, "type": "BadRequest", "message": str(e)}
        if rows:
            with torch.inference_mode():
                values = self.model(torch.stack(rows))[:, 0].tolist()
            for i, v in zip(index, values):
                answers[i] = {"value": v}
        return answers
