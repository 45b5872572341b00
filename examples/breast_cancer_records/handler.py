"""TorchServe handler for breast-cancer JSON records: one record in, one labelled answer out.

A request body is one JSON object of the 30 named features, e.g. ``{"mean_radius": 17.99,
...}``; the tensor is built in the order ``features.json`` lists (packed into the .mar next
to this file), so the order of a record's keys never matters and extra keys are ignored.
Each request of a server-side batch gets its own answer::

    {"label": "malignant", "probability": 0.97, "scores": {"benign": 0.03, "malignant": 0.97}}

A record that lacks a field, or whose field is not a finite number, or a body that is not a
JSON object, gets HTTP 400 with ``{"code": 400, "type": "BadRequest", "message": ...}``; the
other requests of its batch are answered normally.

TorchServe's worker imports this file flat from the model folder: only json, os and torch
are imported, and it defines exactly one class, the handler (TorchServe's model loader
refuses a handler file with more than one, so refusals are plain ValueErrors).
"""

import json
import os

import torch

CLASS_NAMES = ("benign", "malignant")  # class indices 0, 1: model.class_names in spec.yaml
FEATURES_FILE = "features.json"
INF = float("inf")


def parse_record(body):
    """The JSON object a request carries: parsed already (application/json), or str/bytes JSON.

    Raises:
        ValueError: the body is not a UTF-8 JSON object (the request gets HTTP 400).
    """
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"the body is not UTF-8 text: {e}") from e
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError as e:
            raise ValueError(f"the body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object of features, got a {type(body).__name__}")
    return body


def record_tensor(record, features):
    """float32 [len(features)] of the record's fields, in ``features`` order.

    Raises:
        ValueError: a field is missing or not a finite number (the request gets HTTP 400).
    """
    missing = [f for f in features if f not in record]
    if missing:
        raise ValueError(f"record lacks {len(missing)} field(s): {missing[:5]}")
    values = []
    for f in features:
        v = record[f]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -INF < v < INF:
            raise ValueError(f"field {f!r} must be a finite number, got {v!r}")
        values.append(float(v))
    return torch.tensor(values, dtype=torch.float32)


def answers_from_logits(logits):
    """One answer per row of logits [N, C]: the predicted label, its probability, every class's."""
    probs = torch.softmax(logits, dim=1)
    out = []
    for row in probs.tolist():
        k = max(range(len(row)), key=row.__getitem__)
        out.append({"label": CLASS_NAMES[k], "probability": row[k],
                    "scores": {name: p for name, p in zip(CLASS_NAMES, row)}})
    return out


def error_body(message):
    return {"code": 400, "type": "BadRequest", "message": message}


class BreastCancerRecordsHandler:
    """Loads the TorchScript model and features.json; answers every request of a batch."""

    def __init__(self):
        self.model = None
        self.features = None
        self.initialized = False

    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        serialized = context.manifest["model"]["serializedFile"]
        self.model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu")
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
                rows.append(record_tensor(parse_record(body), self.features))
                index.append(i)
            except ValueError as e:
                context.set_response_status(400, str(e), i)
                answers[i] = error_body(str(e))
        if rows:
            with torch.inference_mode():
                logits = self.model(torch.stack(rows))
            for i, answer in zip(index, answers_from_logits(logits)):
                answers[i] = answer
        return answers
