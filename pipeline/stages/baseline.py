"""Stage 1, baseline: the eager model, built from the spec, scores every row in-process."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.spec import Spec
from pipeline.stages.dataset import Dataset
from pipeline.errors import ModelError
from pipeline.files import file_sha256
from pipeline.model.forward import Scores, score_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineResult:
    """The eager model's outputs on the dataset: the reference every candidate is held to."""

    scores: Scores
    weights_path: Path
    weights_sha256: str
    weights_size_bytes: int


def _import_factory(factory: str):
    module_name, _, func_name = factory.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ModelError(f"model.factory: file {path} does not exist. Fix the path in the spec.")
            mod_name = f"_pv_model_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"model.factory: cannot import {module_name!r}: {type(e).__name__}: {e}. "
            "Check the import path and that the module is importable from the repo root or the spec's folder."
        ) from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ModelError(f"model.factory: {module_name!r} has no callable {func_name!r}. Fix model.factory.")
    return fn


def _state_dict_mismatch(model: nn.Module, state: dict) -> list[str]:
    own = model.state_dict()
    problems = []
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        problems.append(f"missing in the weights file: {missing[:10]}")
    if unexpected:
        problems.append(f"not in the model: {unexpected[:10]}")
    for k in sorted(set(own) & set(state)):
        a, b = own[k], state[k]
        if hasattr(b, "shape") and tuple(a.shape) != tuple(b.shape):
            problems.append(f"{k}: model has shape {list(a.shape)}, weights file has {list(b.shape)}")
    return problems


def load_model(spec: Spec) -> nn.Module:
    """Build the eager model from the spec's factory and load its weights strictly.

    Args:
        spec: the validated spec.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        ModelError: the factory cannot be imported or called, the weights file is missing
            or unreadable, or its keys or shapes differ from the model's (all listed).
    """
    factory = _import_factory(spec.model.factory)
    try:
        model = factory()
    except Exception as e:
        raise ModelError(f"model.factory {spec.model.factory} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory {spec.model.factory} returned {type(model).__name__}, not a torch.nn.Module.")
    weights = spec.model.weights
    if not weights.is_file():
        raise ModelError(
            f"weights file {weights} does not exist. Train the model first "
            "(for the examples: make examples) or fix model.weights in the spec."
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(
            f"weights file {weights} ({weights.stat().st_size} bytes) could not be loaded: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. It may be truncated or not a torch.save'd state_dict."
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {weights} holds a {type(state).__name__}, expected a state_dict.")
    problems = _state_dict_mismatch(model, state)
    if problems:
        raise ModelError(
            f"weights file {weights} does not match the architecture built by {spec.model.factory}.",
            details=problems,
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def score_baseline(spec: Spec, model: nn.Module, data: Dataset) -> BaselineResult:
    """Score every row with the eager model, one row at a time.

    Args:
        spec: the validated spec.
        model: the eager model from ``load_model``.
        data: the labeled rows.

    Returns:
        Outputs, per-row latency and the weights file's identity.

    Raises:
        ModelError: the model fails on the dataset's tensors or returns the wrong shape.
    """
    try:
        scores = score_rows(model, data.features)
    except Exception as e:
        raise ModelError(
            f"the eager model failed on a [1, {', '.join(map(str, spec.dataset.input_shape))}] input: "
            f"{type(e).__name__}: {e}. Check dataset.input_shape."
        ) from e
    if scores.logits.shape[1] != spec.model.num_classes:
        raise ModelError(
            f"the eager model returns {scores.logits.shape[1]} outputs per row but model.num_classes is "
            f"{spec.model.num_classes}. Fix model.num_classes."
        )
    w = spec.model.weights
    return BaselineResult(
        scores=scores, weights_path=w, weights_sha256=file_sha256(w), weights_size_bytes=w.stat().st_size
    )
