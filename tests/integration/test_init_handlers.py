"""``package-validate init`` on the handlers TorchServe users write; each spec it writes runs unchanged.

(a) an image folder with an ImageClassifier subclass that sets its own ``image_processing``
and keeps an ``index_to_name.json`` beside it (as ``examples/image_classifier/mnist`` does);
(b) JSON records (``--kind json``) through a BaseHandler subclass. The correct handler of each
gets PASS, the defective one FAIL: a correct JSON-records handler runs to the end with a real
TorchServe; the others run ``--until handled`` (no server), where their defects already show.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import make_project
from tests.imaging import CLASSES, MODEL, _image, report_of
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

IMAGE_HANDLER = '''
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier

MEAN = [0.45, 0.40, 0.35]
STD = [0.20, 0.25, 0.30]


class ColourClassifier(ImageClassifier):
    topk = 3
    image_processing = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
'''
REVERSED = '''
    def postprocess(self, data):
        return super().postprocess(data.flip(1))  # the defect: each answer names the classes in reverse
'''

RECORDS_HANDLER = '''
import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

FIELDS = ["f0", "f1", "f2", "f3"]


class RecordsHandler(BaseHandler):
    def preprocess(self, data):
        records = [r.get("body") or r.get("data") for r in data]
        missing = sorted({k for rec in records for k in FIELDS if k not in rec})
        if missing:
            raise PredictionException(f"a record lacks {missing}", 400)
        return torch.tensor([[float(rec[k]) for k in FIELDS] for rec in records])

    def postprocess(self, data):
        probs = torch.softmax(data, dim=1)
        return [{"prediction": int(p.argmax()), "probabilities": p.tolist()} for p in probs]
'''


def _image_project(root: Path, defect: bool) -> None:
    root.mkdir(parents=True)
    (root / "model.py").write_text(MODEL)
    ns: dict = {}
    exec(MODEL, ns)
    torch.save(ns["build"]().state_dict(), root / "weights.pt")
    rng = np.random.default_rng(0)
    for k, c in enumerate(CLASSES):
        (root / "images" / c).mkdir(parents=True)
        for i in range(4):
            (root / "images" / c / f"{i}.png").write_bytes(_image(rng, k))
    (root / "serve").mkdir()
    (root / "serve" / "handler.py").write_text(IMAGE_HANDLER + (REVERSED if defect else ""))
    (root / "serve" / "index_to_name.json").write_text(json.dumps({str(i): c for i, c in enumerate(CLASSES)}))


def _init(root: Path, *args: str) -> tuple[dict, str]:
    res = run_cli("init", *args, cwd=root, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (root / "spec.yaml").read_text()
    return yaml.safe_load(text), res.stdout


def _run(root: Path, *until: str):
    return run_cli("run", "spec.yaml", *until, "--reports-dir", str(root / "reports"), cwd=root, timeout=180)


@pytest.mark.parametrize("defect", [False, True], ids=["correct", "reversed_labels"])
def test_image_classifier_subclass_with_its_transforms_and_label_map(no_leftovers, defect):
    root = no_leftovers / "proj"
    _image_project(root, defect)
    spec, said = _init(root, "--factory", "model.py:build", "--weights", "weights.pt", "--data", "images",
                       "--handler", "serve/handler.py")
    assert spec["model"]["preprocess"] == "reference.py:preprocess"
    assert "transforms.Normalize(MEAN, STD)" in (root / "reference.py").read_text()
    assert spec["handler"]["extra_files"] == ["serve/index_to_name.json"]
    assert spec["model"]["class_names"] == list(CLASSES) and spec["export"]["mode"] == "eager"
    assert spec["answers"]["format"] == "topk"  # seen on the first row, in-process
    assert ("answered '{ \"blue\"" if not defect else "answered '{ \"red\"") in said  # blue/0.png, reversed or not
    res = _run(root, "--until", "handled")
    rep = report_of(root / "reports")
    assert res.returncode == (1 if defect else 0), res.stdout + res.stderr
    assert rep["plan"]["answers"]["format"] == "topk"
    if defect:
        assert "FAIL handled: prediction agreement" in res.stdout
    else:
        assert rep["stages"]["handled"]["batch1"]["answered"] == 12


@pytest.mark.parametrize("defect", [False, True], ids=["correct", "crashes"])
def test_json_records_handler_with_kind_json(no_leftovers, defect):
    root = no_leftovers / "proj"
    make_project(root, rows=16)
    (root / "spec.yaml").unlink()
    body = RECORDS_HANDLER if not defect else RECORDS_HANDLER.replace(
        '"probabilities": p.tolist()}', '"probabilities": p.tolist(), "label": LABELS[int(p.argmax())]}')
    (root / "records_handler.py").write_text(body)
    spec, said = _init(root, "--factory", "tiny_model.py:build", "--weights", "weights.pt", "--data", "data.csv",
                       "--handler", "records_handler.py", "--kind", "json")
    assert spec["dataset"]["kind"] == "json" and spec["dataset"]["feature_columns"] == ["f0", "f1", "f2", "f3"]
    text = (root / "spec.yaml").read_text()
    if defect:  # the spec is written, quoting the failure; it is not worked around
        assert "answers" not in spec and "NameError: name 'LABELS' is not defined" in said
        assert "it FAILED" in text
        res = _run(root, "--until", "handled")
        assert res.returncode == 1 and "FAIL handled" in res.stdout, res.stdout + res.stderr
        return
    assert spec["answers"]["format"] == "package_validate"
    res = _run(root)  # to the end: a real TorchServe serves the archive
    assert res.returncode == 0, res.stdout + res.stderr
    rep = report_of(root / "reports")
    assert rep["verdict"] == "PASS" and "served" in rep["plan"]["stages"]
    assert rep["stages"]["replay"]["answered"] == 16 and rep["stages"]["replay"]["failed"] == 0
