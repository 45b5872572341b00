"""Handlers that answer only a class, as TorchServe users write them, validated with the default answers settings.

A BaseHandler subclass answering ``argmax(1).tolist()`` (a body of ``2``: TorchServe's MNIST
example's shape) on the tiny image project (tests/imaging.py), and a text handler answering
a label string (sent unquoted: ``why``, as a Hugging Face handler answers ``"business"``) on
the tiny text project (tests/texts.py). The correct version passes; a defective one fails in
the handled stage (no server) with the blame on the handler.
"""

import textwrap

import pytest

from tests.imaging import make_image_project, report_of
from tests.integration.conftest import run_cli
from tests.texts import make_text_project

pytestmark = pytest.mark.integration

INDEX_HANDLER = '''
import io

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

MEAN = torch.tensor([0.45, 0.40, 0.35]).view(3, 1, 1)
STD = torch.tensor([0.20, 0.25, 0.30]).view(3, 1, 1)
SHIFT = {shift}
DRIFT = {drift}  # 1.0: the reference's normalisation; else the numbers drift, mostly without flipping a class


class ColourClassifier(BaseHandler):
    """BaseHandler loads the TorchScript file and runs inference; only pre- and postprocess are ours."""

    def preprocess(self, data):
        rows = []
        for row in data:
            rgb = Image.open(io.BytesIO(row.get("data") or row.get("body"))).convert("RGB")
            x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).reshape(rgb.size[1], rgb.size[0], 3)
            rows.append((x.permute(2, 0, 1).to(torch.float32) / 255.0 - MEAN) / (STD * DRIFT))
        return torch.stack(rows)

    def postprocess(self, data):
        return ((data.argmax(1) + SHIFT) % 3).tolist()
'''

LABEL_HANDLER = '''
import os

import torch

LABELS = {labels!r}


def letters(text):
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    counts = torch.zeros(26)
    for ch in text.lower():
        if "a" <= ch <= "z":
            counts[ord(ch) - 97] += 1
    return counts


class LetterHandler:
    def initialize(self, context):
        d = context.system_properties.get("model_dir")
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"])).eval()

    def handle(self, data, context):
        x = torch.stack([letters(r.get("body") if r.get("body") is not None else r.get("data")) for r in data])
        with torch.inference_mode():
            winners = self.model(x).argmax(1)
        return [LABELS[int(k)] for k in winners]
'''

CLASS_NAMES = ["ex", "why"]


def _checks(rep, stage):
    return {c["name"]: c for c in rep["gate"]["checks"] if c["stage"] == stage}


def _image_spec(tmp, shift, drift=1.0):
    handler = tmp / f"index_handler_{shift}.py"
    handler.write_text(textwrap.dedent(INDEX_HANDLER.format(shift=shift, drift=drift)))
    # the defaults: no answers.top_k, format auto (tests/imaging.py asks for every class)
    return make_image_project(tmp / "proj", per_class=6, handler=handler,
                              spec_overrides={"answers": {"top_k": None}, "replay": {"warmup_requests": 2},
                                              "export": {"latency_repeats": 10}})


def _text_spec(tmp, labels):
    spec = make_text_project(tmp / "proj", rows=20, spec_overrides={
        "model": {"class_names": CLASS_NAMES}, "export": {"latency_repeats": 10}})
    (tmp / "proj" / "handler.py").write_text(textwrap.dedent(LABEL_HANDLER.format(labels=labels)))
    return spec


def _run(tmp, spec, *extra):
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"),
                  *extra, timeout=180)
    return res, report_of(tmp / "reports")


def test_a_bare_index_handler_passes_end_to_end(no_leftovers):
    res, rep = _run(no_leftovers, _image_spec(no_leftovers, 0))
    assert res.returncode == 0, res.stdout + res.stderr
    answers = rep["plan"]["answers"]
    assert answers["format"] == "index" and answers["chosen_by"] == "the first answer's shape (answers.format: auto)"
    assert answers["carries"] == "only the predicted class"
    assert rep["metrics"]["served"]["accuracy"] == rep["metrics"]["baseline"]["accuracy"]
    assert rep["stages"]["replay"]["answered"] == 18
    # in-process the model's outputs inside the handler (BaseHandler's inference result) are compared;
    # a client sees only the class, so the served stage compares classes only
    inner = _checks(rep, "handled")["max abs output difference"]
    assert inner["is_gating"] and inner["passed"] and "inside the handler" in inner["detail"], inner
    served = _checks(rep, "served")["max abs output difference"]
    assert not served["is_gating"] and served["value"] == "compares classes only", served
    for stage in ("handled", "served"):
        assert _checks(rep, stage)["prediction agreement"]["passed"]
    assert any("carries 0 of the model's 3 classes" in n for n in rep["plan"]["notes"]), rep["plan"]["notes"]
    assert "WARN served: max abs output difference: value compares classes only" in res.stdout


def test_a_bare_index_handler_whose_numbers_drift_is_caught_in_process(no_leftovers):
    res, rep = _run(no_leftovers, _image_spec(no_leftovers, 0, drift=1.02), "--until", "handled")
    assert res.returncode == 1, res.stdout + res.stderr
    out = _checks(rep, "handled")["max abs output difference"]
    assert out["is_gating"] and not out["passed"] and "inside the handler" in out["detail"], out
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]


def test_a_bare_index_handler_off_by_one_is_a_handler_problem(no_leftovers):
    res, rep = _run(no_leftovers, _image_spec(no_leftovers, 1), "--until", "handled")
    assert res.returncode == 1, res.stdout + res.stderr
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    checks = _checks(rep, "handled")
    assert not checks["prediction agreement"]["passed"] and checks["prediction agreement"]["value"] == 0.0
    assert rep["plan"]["answers"]["format"] == "index"


def test_a_bare_label_handler_passes_in_process(no_leftovers):
    res, rep = _run(no_leftovers, _text_spec(no_leftovers, CLASS_NAMES), "--until", "handled")
    assert res.returncode == 0, res.stdout + res.stderr
    assert rep["plan"]["answers"]["format"] == "label"
    assert rep["stages"]["handled"]["batch1"]["answered"] == 20
    assert rep["metrics"]["handled"]["accuracy"] == rep["metrics"]["baseline"]["accuracy"] == 1.0
    assert not _checks(rep, "handled")["max abs output difference"]["is_gating"]


def test_a_bare_label_handler_with_its_labels_swapped_is_a_handler_problem(no_leftovers):
    res, rep = _run(no_leftovers, _text_spec(no_leftovers, CLASS_NAMES[::-1]), "--until", "handled")
    assert res.returncode == 1, res.stdout + res.stderr
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    checks = _checks(rep, "handled")
    assert not checks["prediction agreement"]["passed"] and not checks["accuracy drop"]["passed"]
