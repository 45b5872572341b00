"""Helpers for the verdict tests (gate, compare, attribution, answers, replay), without torch.

``tests/helpers.py`` imports torch at module level; these tests need none of it, so they
stay quick to import (and safe to fork under the mutation tester).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate import compare as _compare
from pipeline.evaluate.compare import Comparison, StageOutputs, compare_stages
from pipeline.evaluate.gate import GateInputs, GatePlan, StageFacts, evaluate_gate

LABELS = ("a", "b", "c")


@pytest.fixture(autouse=True)
def fast_bootstrap(monkeypatch):
    """Fewer bootstrap resamples: the gate tests read the intervals, never their precision.
    Import it into a test module (``from tests.unit._support import fast_bootstrap``) to use it."""
    monkeypatch.setattr(_compare, "BOOTSTRAP_RESAMPLES", 3)


def spec_for(num_classes: int = 2, **sections):
    """A validated spec without files on disk (for unit tests of codecs, gates, replay; also ``tests.helpers.tiny_spec``)."""
    from pipeline.spec import parse_spec

    data = {"name": "m", "model": {"factory": "m.py:build", "weights": "w.pt", "num_classes": num_classes},
            "dataset": {"path": "d.csv", "input_shape": [2]}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_spec(data, base_dir=Path("/nonexistent"))


def codec(num_classes: int = 2, fmt: str = "package_validate", builtin_top_k: int | None = None, **sections):
    """An answer codec of a format, as the plan builds it."""
    from pipeline.answers.classes import class_map_for
    from pipeline.answers.registry import codec_for

    spec = spec_for(num_classes, **sections)
    return codec_for(spec, class_map_for(spec), fmt, "the test", builtin_top_k)


def pv_answer(pred: int, probs, logits=None) -> bytes:
    """A ``package_validate`` answer body."""
    doc = {"prediction": pred, "probabilities": list(probs)}
    if logits is not None:
        doc["logits"] = list(logits)
    return json.dumps(doc).encode()


def tensor_rows(n: int, width: int = 2, labels=None):
    """n rows of the tensor kind (row i is [i, i, ...]), ids r0..r{n-1}."""
    from pipeline.inputs import tensor
    from pipeline.inputs.base import MemoryBodies, Rows

    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], width, axis=1)
    return Rows(kind="tensor", source=Path("mem"), ids=tuple(f"r{i}" for i in range(n)),
                labels=np.asarray(labels if labels is not None else np.zeros(n), np.int64),
                content_type=tensor.CONTENT_TYPE, bodies=MemoryBodies(tuple(tensor.body_of(r) for r in x)),
                features=x)


def ids(n: int) -> tuple[str, ...]:
    return tuple(f"r{i}" for i in range(n))


def one_hot(pred: np.ndarray, c: int) -> np.ndarray:
    """Probabilities of predictions (NaN rows where the prediction is -1)."""
    out = np.eye(c)[np.maximum(pred, 0)].astype(np.float64)
    out[pred < 0] = np.nan
    return out


def outputs(name: str, pred, c: int = 3, *, logits=None, probabilities="one-hot", latencies=None) -> StageOutputs:
    pred = np.asarray(pred, dtype=np.int64)
    probs = one_hot(pred, c) if isinstance(probabilities, str) else probabilities
    lat = np.ones(len(pred)) if latencies is None else np.asarray(latencies, dtype=np.float64)
    return StageOutputs(name, pred, probs, logits, lat)


# A 3-class fixture whose baseline is NOT always right: 100 rows, baseline accuracy 0.90.
def truth_and_baseline() -> tuple[np.ndarray, np.ndarray]:
    y = np.array([0] * 40 + [1] * 35 + [2] * 25)
    base = y.copy()
    base[[0, 1, 2, 3]] = 1  # four class-0 rows called 1
    base[[40, 41, 42]] = 2  # three class-1 rows called 2
    base[[75, 76, 77]] = 0  # three class-2 rows called 0
    return y, base


def comparison(y, stages: list[StageOutputs], labels=LABELS, **kw) -> Comparison:
    return compare_stages(ids(len(y)), y, labels, stages, **kw)


def gate_plan(*stages: str, labels=LABELS, quantity: str = "probabilities", **kw) -> GatePlan:
    stages = stages or ("served",)
    return GatePlan(candidates=tuple(stages), labels=labels, output_quantity={s: quantity for s in stages}, **kw)


def all_answered(*stages: str, error_rate: float = 0.0) -> dict[str, StageFacts]:
    return {s: StageFacts(error_rate=error_rate, errors={}, complete=True) for s in stages}


def gate(spec, plan, cmp, inputs: GateInputs | None = None):
    return evaluate_gate(spec, plan, cmp, inputs or GateInputs(answered=all_answered(*plan.candidates)))


def check(result, name: str, stage: str | None = None):
    """The one check of that name (and stage)."""
    found = [c for c in result.checks if c.name == name and (stage is None or c.stage == stage)]
    assert len(found) == 1, f"expected one check {name!r} at {stage}, found {[(c.stage, c.name) for c in found]}"
    return found[0]


def with_test(cmp: Comparison, stage: str, **changes) -> Comparison:
    """The comparison with some figures of one candidate's paired test replaced."""
    return replace(cmp, tests={**cmp.tests, stage: replace(cmp.tests[stage], **changes)})
