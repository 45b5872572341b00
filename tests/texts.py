"""A tiny text project on disk: texts that mention more 'x' than 'y' are class 0, else class 1.

The model takes letter counts; the reference preprocessing (``features.py``) counts the 26
letters of the lowercased text; the handler does the same with the str TorchServe's worker
hands it for a ``text/plain`` body, and answers this project's JSON.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

MODEL = '''
import torch
from torch import nn


class LetterVotes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(26, 2)

    def forward(self, x):
        return self.fc(x)


def build():
    m = LetterVotes()
    with torch.no_grad():
        m.fc.weight.zero_()
        m.fc.bias.zero_()
        m.fc.weight[0, ord("x") - 97] = 1.0
        m.fc.weight[1, ord("y") - 97] = 1.0
    return m
'''

FEATURES = '''
import torch


def preprocess(text) -> torch.Tensor:
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    counts = torch.zeros(26)
    for ch in text.lower():
        if "a" <= ch <= "z":
            counts[ord(ch) - 97] += 1
    return counts
'''

HANDLER = '''
import json
import os

import torch


def letters(text):
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    counts = torch.zeros(26)
    for ch in text.lower():
        if "a" <= ch <= "z":
            counts[ord(ch) - 97] += 1
    return counts


class TextHandler:
    def initialize(self, context):
        d = context.system_properties.get("model_dir")
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"])).eval()

    def handle(self, data, context):
        x = torch.stack([letters(r.get("body") if r.get("body") is not None else r.get("data")) for r in data])
        with torch.inference_mode():
            logits = self.model(x)
        probs = torch.softmax(logits.double(), dim=1)
        return [json.dumps({"prediction": int(l.argmax()), "probabilities": p.tolist(), "logits": l.tolist()})
                for l, p in zip(logits, probs)]
'''


def make_text_project(root: Path, rows: int = 40, spec_overrides: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.py").write_text(textwrap.dedent(MODEL))
    (root / "features.py").write_text(textwrap.dedent(FEATURES))
    (root / "handler.py").write_text(textwrap.dedent(HANDLER))
    ns: dict = {}
    exec(compile(MODEL, "model.py", "exec"), ns)
    torch.save(ns["build"]().state_dict(), root / "weights.pt")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "zeta", "lambda"]
    texts, labels = [], []
    for i in range(rows):
        x, y = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        if x == y:
            x += 1
        text = " ".join(rng.choice(words, 4)) + " " + "x" * x + " " + "y" * y + (" Grüße" if i % 5 == 0 else "")
        texts.append(text)
        labels.append(0 if x > y else 1)
    pd.DataFrame({"id": [f"t{i:03d}" for i in range(rows)], "label": labels, "text": texts}).to_csv(
        root / "texts.csv", index=False)
    spec = {
        "name": "letters",
        "model": {"factory": "model.py:build", "weights": "weights.pt", "num_classes": 2,
                  "preprocess": "features.py:preprocess"},
        "dataset": {"kind": "text", "path": "texts.csv", "text_column": "text"},
        "handler": "handler.py",
        "export": {"latency_repeats": 20},
        "replay": {"warmup_requests": 5},
        "serving": {"startup_timeout_s": 90},
        "gate": {"metrics": {"accuracy": {"max_drop": 0.01}}},
    }
    for key, value in (spec_overrides or {}).items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return path
