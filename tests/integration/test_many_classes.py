"""A 1000-class model on eval rows of 5 classes, with a TorchServe-style ImageNet label map, through TorchServe's
built-in ``image_classifier`` (its top-5 {label: probability} answers).

The label map is generated here in TorchServe's format ({"0": ["n01440764", "tench"], ...}, synthetic
names), with two pairs of classes sharing a name as ImageNet's 'crane' (134, 517) and 'maillot' (638,
639) do. Rows of class 517 are answered 'crane', which the tool decodes as class 134 and then compares
by name. A correct run passes end to end (real TorchServe); a handler whose label map is shifted by one
and that raises on some rows fails in-process (``--until handled``), with what it raised quoted.
"""

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from tests.imaging import report_of
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

NUM_CLASSES = 1000
SHARED = {134: 517, 638: 639}  # the second class of each pair takes the first one's name
PRESENT = (3, 134, 517, 639, 999)  # (channel, quadrant) patterns below, one per class
PATTERNS = {3: (0, 0), 134: (1, 1), 517: (2, 2), 639: (0, 3), 999: (2, 0)}
PER_CLASS = 4  # 20 rows

MODEL = '''
import torch
from torch import nn


class Head(nn.Module):
    """ImageNet-normalised [N, 3, 224, 224] -> logits [N, 1000]: 2x2 channel means, then one linear layer."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 1000)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


def build():
    return Head()
'''

DEFECTIVE = '''
import torch
from ts.torch_handler.image_classifier import ImageClassifier


class Defective(ImageClassifier):
    """Two defects: the label map read off by one (class k answered with class k+1's name), and a failure on
    images whose blue channel is bright (classes 517 and 999), as a shape bug would raise."""

    def initialize(self, context):
        super().initialize(context)
        n = len(self.mapping)
        self.mapping = {str(k): self.mapping[str((k + 1) % n)] for k in range(n)}

    def inference(self, data, *args, **kwargs):
        if float(data[:, 2].amax()) > 1.0:
            raise RuntimeError(f"expected input{list(data.shape)} to have 1 channels")
        return super().inference(data, *args, **kwargs)
'''


def label_map() -> dict:
    """TorchServe's index_to_name.json format with synthetic names; two names shared, as in ImageNet's."""
    doc = {str(k): [f"n{k:08d}", f"class{k:03d}"] for k in range(NUM_CLASSES)}
    for first, second in SHARED.items():
        doc[str(second)][1] = doc[str(first)][1]
    return doc


def _weights() -> dict:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(NUM_CLASSES, 12, generator=g) * 0.01
    for k, (channel, quadrant) in PATTERNS.items():
        weight[k] = 0.0
        weight[k, channel * 4 + quadrant] = 5.0  # a bright quadrant of one channel: a wide margin
    return {"pool": {}, "fc.weight": weight, "fc.bias": torch.zeros(NUM_CLASSES)}


def _image(rng: np.random.Generator, channel: int, quadrant: int) -> bytes:
    pixels = rng.integers(20, 40, size=(32, 32, 3))
    r, c = divmod(quadrant, 2)
    pixels[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16, channel] = 230
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def make_project(root: Path, handler: str | None = None, gate: dict | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "model.py").write_text(textwrap.dedent(MODEL))
    state = _weights()
    del state["pool"]
    torch.save(state, root / "weights.pt")
    (root / "index_to_name.json").write_text(json.dumps(label_map()))
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows = []
    for k in PRESENT:
        for i in range(PER_CLASS):
            rel = f"img/{k}-{i}.png"
            (root / rel).write_bytes(_image(rng, *PATTERNS[k]))
            rows.append({"id": f"c{k}-{i}", "path": rel, "label": k})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    spec = {
        "name": "many",
        "model": {"factory": "model.py:build", "weights": "weights.pt", "num_classes": NUM_CLASSES},
        "dataset": {"kind": "image", "path": "manifest.csv"},
        "export": {"mode": "eager", "latency_repeats": 10},
        "handler": {"name": "image_classifier", "extra_files": ["index_to_name.json"]},
        "serving": {"workers": 1, "batch_size": 1, "startup_timeout_s": 120, "response_timeout_s": 30},
        "replay": {"concurrency": 1, "warmup_requests": 2},
        "gate": {"probes": False, "metrics": {"accuracy": {"min": 0.9, "max_drop": 0.01},
                                              "f1_macro": {"max_drop": 0.01}, "f1_weighted": {"max_drop": 0.01}},
                 **(gate or {})},
    }
    if handler is not None:
        (root / "handler.py").write_text(textwrap.dedent(handler))
        spec["handler"]["name"] = "handler.py"
        spec["answers"] = {"format": "topk", "top_k": 5}
        spec["model"]["preprocess"] = "builtin:image_classifier"  # the transforms the subclass inherits
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "spec.yaml"


def test_a_1000_class_model_on_5_classes_with_an_imagenet_style_label_map_passes(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "p")
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"),
                  timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = report_of(tmp / "reports")
    plan = rep["plan"]
    assert plan["class_map_source"] == "index_to_name.json" and plan["answers"]["format"] == "topk"
    assert plan["shared_names"] == {"class134": [134, 517], "class638": [638, 639]}
    assert any(n.startswith("warning: index_to_name.json gives 2 name(s) to more than one class")
               for n in plan["notes"])
    for stage in ("baseline", "exported", "handled", "served"):
        m = rep["metrics"][stage]
        assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0 and m["undefined"] == {}, (stage, m["undefined"])
        assert (m["classes_averaged"], m["classes_total"]) == (5, NUM_CLASSES)
    # rows of 517 and 639 were answered by a shared name ('class134', 'class638') and compared by name
    by_name = {f"c{k}-{i}" for k in (134, 517, 639) for i in range(PER_CLASS)}
    assert set(plan["shared_name_rows"]["served"]) == by_name == set(plan["shared_name_rows"]["handled"])
    assert "exported" not in plan["shared_name_rows"]
    assert "average over the 5 class(es) present among the eval labels, of the model's 1000" in (
        Path(rep["run_dir"]) / "report.md").read_text()
    assert len(res.stdout) < 4000, "no console line lists the 1000 classes"


def test_a_defective_handler_fails_in_process_with_its_exception_quoted(no_leftovers):
    """A label map shifted by one fails as a handler problem; the rows it raises on say what it raised."""
    tmp = no_leftovers
    spec = make_project(tmp / "p", handler=DEFECTIVE)
    res = run_cli("run", str(spec), "--until", "handled", "--reports-dir", str(tmp / "reports"), timeout=180)
    assert res.returncode == 1, res.stdout + res.stderr
    rep = report_of(tmp / "reports")
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    failed = {c["name"] for c in rep["gate"]["checks"] if c["stage"] == "handled" and not c["passed"]}
    assert {"prediction agreement", "accuracy drop", "handled error rate"} <= failed, failed
    handled = rep["metrics"]["handled"]
    assert handled["accuracy"] == 0.0 and handled["answered"] == 3 * PER_CLASS  # every answer names the next class
    # classes with rows that no answer names: their precision is 0/0, each named once (no 1000-name list)
    assert handled["undefined"]["precision_macro"] == (
        "handled never predicts class(es) ['class003', 'class134 [134]', 'class134 [517]', 'class638 [639]', "
        "'class999']: their precision is 0/0")
    batch1 = rep["stages"]["handled"]["batch1"]
    assert batch1["errors"] == {"handler_error": 2 * PER_CLASS}, batch1
    cause = ("the handler raised RuntimeError: expected input[1, 3, 224, 224] to have 1 channels "
             "(at handler.py:17 in inference)")
    assert batch1["examples"]["handler_error"]["message"].endswith(cause), batch1["examples"]
    assert cause in res.stdout
    rows = pd.read_parquet(Path(rep["run_dir"]) / "rows.parquet")
    raised = rows[rows["handled_error_class"] == "handler_error"]
    assert sorted(raised["id"]) == sorted(f"c{k}-{i}" for k in (517, 999) for i in range(PER_CLASS))
    assert all(str(m).endswith(cause) for m in raised["handled_message"])
