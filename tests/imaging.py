"""A tiny image project on disk, and handlers that each carry one defect (for the handled stage's tests).

Three classes, red, green and blue: 12x12 RGB PNGs of noise whose class channel is brighter.
The model averages each normalised channel and scales it: the brightest channel wins. The
reference preprocessing (``transforms.py``) converts to RGB, ToTensor, and normalises with
per-channel statistics, so dropping the normalisation or swapping channels changes answers.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

CLASSES = ("red", "green", "blue")

MODEL = '''
import torch
from torch import nn


class ChannelMeans(nn.Module):
    """[N, 3, H, W] normalised pixels -> logits [N, 3]: a scaled mean of each channel."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.full((3,), 4.0))

    def forward(self, x):
        return x.mean(dim=(2, 3)) * self.scale


def build():
    return ChannelMeans()
'''

TRANSFORMS = '''
import io

import torch
from PIL import Image

MEAN = torch.tensor([0.45, 0.40, 0.35]).view(3, 1, 1)
STD = torch.tensor([0.20, 0.25, 0.30]).view(3, 1, 1)


def to_tensor(image: Image.Image) -> torch.Tensor:
    rgb = image.convert("RGB")
    x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).reshape(rgb.size[1], rgb.size[0], 3)
    return x.permute(2, 0, 1).to(torch.float32) / 255.0


def preprocess(body) -> torch.Tensor:
    """What the model was trained with: RGB, [0, 1], per-channel normalisation."""
    return (to_tensor(Image.open(io.BytesIO(body))) - MEAN) / STD
'''

HANDLER = '''
import io
import json
import os

import torch
from PIL import Image

CLASSES = ["red", "green", "blue"]
MEAN = torch.tensor([0.45, 0.40, 0.35]).view(3, 1, 1)
STD = torch.tensor([0.20, 0.25, 0.30]).view(3, 1, 1)
DEFECT = {defect!r}


def to_tensor(image):
    rgb = image.convert("RGB")
    x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).reshape(rgb.size[1], rgb.size[0], 3)
    x = x.permute(2, 0, 1).to(torch.float32) / 255.0
    if DEFECT == "swap_channels":
        x = x[[2, 1, 0]]  # BGR: the classic OpenCV-vs-PIL mistake
    if DEFECT == "no_normalisation":
        return x
    return (x - MEAN) / STD


class ImageHandler:
    def initialize(self, context):
        d = context.system_properties.get("model_dir")
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"]))
        self.model.eval()
        {init_extra}

    def handle(self, data, context):
        {handle_extra}
        x = torch.stack([to_tensor(Image.open(io.BytesIO(r.get("body") or r.get("data")))) for r in data])
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1)
        if DEFECT == "mixes_rows_in_batches" and len(data) > 1:
            probs = probs.roll(1, dims=0)  # answers row i with row i-1's result, only when batched
        if DEFECT == "flips_when_env" and os.environ.get("PV_TEST_FLIP"):
            probs = probs.flip(1)
        out = []
        for p in probs:
            names = CLASSES[1:] + CLASSES[:1] if DEFECT == "labels_shifted" else CLASSES
            answer = {{names[k]: float(p[k]) for k in range(3)}}
            if DEFECT == "top1_only":
                k = int(p.argmax())
                answer = {{names[k]: float(p[k])}}
            out.append(answer)
        return out
'''


def image_handler(path: Path, defect: str | None = None, init_extra: str = "pass", handle_extra: str = "pass") -> Path:
    """A handler file for the tiny image project, correct or with one defect."""
    path.write_text(HANDLER.format(defect=defect, init_extra=init_extra, handle_extra=handle_extra))
    return path


def _image(rng: np.random.Generator, k: int) -> bytes:
    pixels = rng.integers(0, 90, size=(12, 12, 3))
    pixels[..., k] += rng.integers(60, 160)
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def make_image_project(root: Path, *, per_class: int = 8, handler: Path | None = None,
                       spec_overrides: dict | None = None, seed: int = 0) -> Path:
    """Images (a manifest CSV with paths), model, weights, reference preprocessing and a spec; returns the spec."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.py").write_text(textwrap.dedent(MODEL))
    (root / "transforms.py").write_text(textwrap.dedent(TRANSFORMS))
    ns: dict = {}
    exec(compile(MODEL, str(root / "model.py"), "exec"), ns)
    torch.save(ns["build"]().state_dict(), root / "weights.pt")
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(exist_ok=True)
    rows = []
    for k, name in enumerate(CLASSES):
        for i in range(per_class):
            rel = f"img/{name}-{i:02d}.png"
            (root / rel).write_bytes(_image(rng, k))
            rows.append({"id": f"{name}-{i:02d}", "path": rel, "label": name})
    order = rng.permutation(len(rows))  # classes interleaved, as real manifests are
    pd.DataFrame([rows[i] for i in order]).to_csv(root / "manifest.csv", index=False)
    handler = handler or image_handler(root / "handler.py")
    spec = {
        "name": "colours",
        "model": {"factory": "model.py:build", "weights": "weights.pt", "num_classes": 3,
                  "class_names": list(CLASSES), "preprocess": "transforms.py:preprocess"},
        "dataset": {"kind": "image", "path": "manifest.csv"},
        "handler": {"name": str(handler)},
        "answers": {"top_k": "all"},
        "export": {"latency_repeats": 20},
        "replay": {"warmup_requests": 5},
        "serving": {"startup_timeout_s": 90, "response_timeout_s": 20},
        "gate": {"metrics": {"accuracy": {"max_drop": 0.01}}},
    }
    for key, value in (spec_overrides or {}).items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def report_of(reports: Path) -> dict:
    (path,) = list(reports.glob("*/report.json"))
    return json.loads(path.read_text())
