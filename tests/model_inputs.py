"""Two tiny text projects whose models take several inputs, shapes varying by row (written for these tests).

``make_bag_project``: an EmbeddingBag classifier ``forward(text, offsets)`` over int64 ids of unigrams and
bigrams from a ``source_vocab.pt`` the project writes, served by TorchServe's built-in ``text_classifier``;
the reference preprocessing mimics that handler's tokenisation and returns ``(ids, offsets)``, and
``model.collate`` concatenates rows with their offsets.

``make_encoder_project``: a one-layer ``nn.TransformerEncoder`` built from a config dict, ``forward(input_ids,
attention_mask)``; the reference returns ``{"input_ids", "attention_mask"}`` per row, the collate pads with
a zero mask; the project's own handler tokenises with the same word vocabulary, pads a batch and answers
this project's JSON. It reads nothing from its config: its vocabulary and settings are in the file.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "actor", "story", "the", "a",
         "really", "very", "ending", "music"]

BAG_MODEL = '''
import torch
from torch import nn

VOCAB_SIZE = {vocab_size}


class TextBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.EmbeddingBag(VOCAB_SIZE, 8, mode="mean")
        self.fc = nn.Linear(8, 2)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


def build():
    torch.manual_seed(0)
    return TextBag()
'''

BAG_REFERENCE = '''
import os
import string

import torch

_VOCAB = {}


def vocab():
    # The source_vocab.pt beside this file: the one the model was trained with.
    if not _VOCAB:
        _VOCAB.update(torch.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "source_vocab.pt")))
    return _VOCAB


def tokens(text):
    # What TorchServe's text_classifier does to these texts (no html, contractions or accents in them):
    # lower case, punctuation out, words, then the words' bigrams (ngrams = 2).
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    words = text.lower().translate(str.maketrans("", "", string.punctuation)).split()
    return words + [a + " " + b for a, b in zip(words, words[1:])]


def preprocess(text):
    ids = torch.tensor([vocab()[t] for t in tokens(text)], dtype=torch.int64)
    return ids, torch.tensor([0])


def collate(rows):
    ids = torch.cat([r[0] for r in rows])
    offsets = torch.tensor([0] + [len(r[0]) for r in rows[:-1]], dtype=torch.int64).cumsum(0)
    return ids, offsets
'''

ENCODER_MODEL = '''
import torch
from torch import nn

CONFIG = {{"vocab_size": {vocab_size}, "max_len": 16, "d_model": 16, "heads": 2, "layers": 1, "ff": 32,
          "classes": 3}}


class TinyEncoder(nn.Module):
    def __init__(self, config=CONFIG):
        super().__init__()
        d = config["d_model"]
        self.embed = nn.Embedding(config["vocab_size"], d)
        self.pos = nn.Embedding(config["max_len"], d)
        layer = nn.TransformerEncoderLayer(d, config["heads"], config["ff"], dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config["layers"], enable_nested_tensor=False)
        self.head = nn.Linear(d, config["classes"])

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        h = self.embed(input_ids) + self.pos(pos)
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))


def build():
    torch.manual_seed(0)
    return TinyEncoder(CONFIG)
'''

ENCODER_REFERENCE = '''
import torch

WORDS = {words!r}
VOCAB = {{w: i + 2 for i, w in enumerate(WORDS)}}  # 0: padding, 1: unknown


def preprocess(text):
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    ids = torch.tensor([VOCAB.get(w, 1) for w in text.lower().split()], dtype=torch.int64)
    return {{"input_ids": ids, "attention_mask": torch.ones_like(ids)}}


def collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = r["input_ids"]
        mask[i, : len(r["input_ids"])] = r["attention_mask"]
    return {{"input_ids": ids, "attention_mask": mask}}
'''

ENCODER_HANDLER = '''
import json
import os

import torch

WORDS = {words!r}
VOCAB = {{w: i + 2 for i, w in enumerate(WORDS)}}  # 0: padding, 1: unknown


def encode(texts):
    """Word ids padded to the longest text, and the attention mask (1: a word, 0: padding)."""
    rows = [[VOCAB.get(w, 1) for w in t.lower().split()] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        mask[i, : len(r)] = 1
    return ids, {mask_expr}


class EncoderHandler:
    def initialize(self, context):
        d = context.system_properties.get("model_dir")
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"])).eval()
        # the handler's own settings, from the handler section of its model-config.yaml (as Hugging Face
        # handlers read theirs): a KeyError here when the archive's config lacks them
        self.max_words = int(context.model_yaml_config["handler"]["max_words"])

    def handle(self, data, context):
        texts = []
        for r in data:
            body = r.get("body") if r.get("body") is not None else r.get("data")
            text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else str(body)
            texts.append(" ".join(text.split()[: self.max_words]))
        ids, mask = encode(texts)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask)
        probs = torch.softmax(logits.double(), dim=1)
        return [json.dumps({{"prediction": int(l.argmax()), "probabilities": p.tolist(), "logits": l.tolist()}})
                for l, p in zip(logits, probs)]
'''

CORRECT_MASK = "mask"
IGNORED_MASK = "torch.ones_like(mask)"  # the defect: padding attended to, answers drift in a padded batch


def _texts(rows: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(rows):
        words = list(rng.choice(WORDS, int(rng.integers(2, 9))))
        if i % 3 == 0:
            words[0] = words[0].capitalize()
            words[-1] += "."
        if i % 4 == 1 and len(words) > 2:
            words[1] += ","
        out.append(" ".join(words))
    return out


def _labels(root: Path, model_src: str, rows_inputs, collate) -> list[int]:
    """The eager model's own classes: the tests judge the packaging, not the model."""
    ns: dict = {}
    exec(compile(model_src, str(root / "model.py"), "exec"), ns)
    model = ns["build"]().eval()
    torch.save(model.state_dict(), root / "weights.pt")
    with torch.inference_mode():
        out = []
        for x in rows_inputs:
            b = collate([x])
            out.append(int((model(**b) if isinstance(b, dict) else model(*b)).argmax()))
    return out


def _write(root: Path, name: str, texts: list[str], labels: list[int], spec: dict, overrides: dict | None) -> Path:
    pd.DataFrame({"id": [f"t{i:02d}" for i in range(len(texts))], "label": labels, "text": texts}).to_csv(
        root / "texts.csv", index=False)
    for key, value in (overrides or {}).items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": name, **spec}, sort_keys=False))
    return path


def make_bag_project(root: Path, rows: int = 16, packed_vocab_shift: int = 0,
                     spec_overrides: dict | None = None) -> Path:
    """The EmbeddingBag project; ``packed_vocab_shift`` != 0 packs a ``source_vocab.pt`` whose ids differ
    from the reference's (the defect: the archive's vocabulary is not the one the model was trained with)."""
    root.mkdir(parents=True, exist_ok=True)
    texts = _texts(rows, seed=1)
    (root / "reference.py").write_text(textwrap.dedent(BAG_REFERENCE))
    ref_ns: dict = {"__file__": str(root / "reference.py")}
    exec(compile(BAG_REFERENCE, str(root / "reference.py"), "exec"), ref_ns)
    grams = sorted({t for text in texts for t in ref_ns["tokens"](text)})
    vocab = {g: i for i, g in enumerate(grams)}
    torch.save(vocab, root / "source_vocab.pt")
    model_src = textwrap.dedent(BAG_MODEL.format(vocab_size=len(vocab)))
    (root / "model.py").write_text(model_src)
    packed = "source_vocab.pt"
    if packed_vocab_shift:
        (root / "packed").mkdir(exist_ok=True)
        torch.save({g: (i + packed_vocab_shift) % len(vocab) for g, i in vocab.items()},
                   root / "packed" / "source_vocab.pt")
        packed = "packed/source_vocab.pt"
    labels = _labels(root, model_src, [ref_ns["preprocess"](t) for t in texts], ref_ns["collate"])
    spec = {
        "model": {"factory": "model.py:build", "weights": "weights.pt", "num_classes": 2,
                  "preprocess": "reference.py:preprocess", "collate": "reference.py:collate"},
        "dataset": {"kind": "text", "path": "texts.csv", "text_column": "text"},
        "handler": {"name": "text_classifier", "extra_files": [packed], "probes": False},
        "export": {"mode": "script", "latency_repeats": 20, "latency_budget_s": 1.0},
        "replay": {"warmup_requests": 2},
        "serving": {"startup_timeout_s": 90},
        "gate": {"metrics": {"accuracy": {"max_drop": 0.01}}},
    }
    return _write(root, "bag", texts, labels, spec, spec_overrides)


def make_encoder_project(root: Path, rows: int = 16, mask_expr: str = CORRECT_MASK,
                         spec_overrides: dict | None = None) -> Path:
    """The two-input transformer project; ``mask_expr`` is the mask the handler hands the model."""
    root.mkdir(parents=True, exist_ok=True)
    texts = _texts(rows, seed=2)
    model_src = textwrap.dedent(ENCODER_MODEL.format(vocab_size=len(WORDS) + 2))
    (root / "model.py").write_text(model_src)
    ref_src = textwrap.dedent(ENCODER_REFERENCE.format(words=WORDS))
    (root / "reference.py").write_text(ref_src)
    (root / "handler.py").write_text(textwrap.dedent(ENCODER_HANDLER.format(words=WORDS, mask_expr=mask_expr)))
    ref_ns: dict = {}
    exec(compile(ref_src, str(root / "reference.py"), "exec"), ref_ns)
    labels = _labels(root, model_src, [ref_ns["preprocess"](t) for t in texts], ref_ns["collate"])
    (root / "model-config.yaml").write_text("handler:\n  max_words: 64\n")  # longer than any text: no cut
    spec = {
        "model": {"factory": "model.py:build", "weights": "weights.pt", "num_classes": 3,
                  "preprocess": "reference.py:preprocess", "collate": "reference.py:collate"},
        "dataset": {"kind": "text", "path": "texts.csv", "text_column": "text"},
        "handler": {"name": "handler.py", "probes": False, "config": "model-config.yaml"},
        "export": {"mode": "script", "latency_repeats": 20, "latency_budget_s": 1.0},
        "replay": {"warmup_requests": 2},
        "serving": {"startup_timeout_s": 90, "batch_size": 4},
        "gate": {"metrics": {"accuracy": {"max_drop": 0.01}}},
    }
    return _write(root, "encoder", texts, labels, spec, spec_overrides)
