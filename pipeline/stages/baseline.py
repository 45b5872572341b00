"""Stage 1, baseline: the eager model scores every row in-process, through the reference preprocessing.

The reference preprocessing is the one the model was trained and evaluated with (the
user's ``model.preprocess``, or the input kind's default); it gets what TorchServe's worker
would hand the handler for the row. Rows stream through in chunks of
``dataset.chunk_rows``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch import nn

from pipeline.errors import DatasetError, ModelError, UserCodeError
from pipeline.files import file_sha256
from pipeline.inputs.base import Reference, Rows
from pipeline.inputs.stream import StreamFacts, reference_chunks
from pipeline.model.forward import OutputError, Scores, score_chunks
from pipeline.modelinput import Collate, InputSample
from pipeline.spec import Spec
from pipeline.usercode import import_callable, user_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineResult:
    """The eager model's outputs on the dataset: the reference every candidate is held to.

    Attributes:
        scores: logits and per-row forward latency.
        reference: the preprocessing that ran (its name is in every report).
        input_shape, input_dtype: one row's model input.
        input_low, input_high: elementwise range of the inputs over all rows (export probes; one tensor
            of one shape per row).
        sample: the first rows' inputs as float32 (one tensor of one shape per row, else empty).
        inputs: the first rows' inputs of any structure and dtype, ``model.collate``, each tensor's range
            (export examples, probes and latency timing).
        preprocess_ms_p50: median time of the reference preprocessing per row.
    """

    scores: Scores
    reference: Reference
    input_shape: tuple[int, ...]
    input_dtype: str
    input_low: np.ndarray
    input_high: np.ndarray
    sample: np.ndarray
    preprocess_ms_p50: float
    weights_path: object
    weights_sha256: str
    weights_size_bytes: int
    inputs: InputSample = InputSample(rows=())


def preprocess_failure(spec: Spec, reference: Reference, facts: StreamFacts, total: int) -> DatasetError:
    return DatasetError(
        f"the reference preprocessing ({reference.name}) failed on {facts.failed_count} of {total} rows. "
        "Fix those rows (a missing, unreadable or wrongly encoded input) or the preprocessing; no row is skipped.",
        details=[f"id {i}: {why}" for i, why in facts.failures],
    )


def output_encoder(spec: Spec):
    """The task's encoding of model outputs that are not one logits tensor (detection, segmentation), or None."""
    from pipeline.tasks.registry import task_of

    return getattr(task_of(spec), "encode_outputs", None)


def score_baseline(spec: Spec, model: nn.Module, rows: Rows, reference: Reference) -> BaselineResult:
    """Score every row with the eager model, one row at a time.

    Args:
        spec: the validated spec.
        model: the eager model from ``load_model``.
        rows: the labeled rows.
        reference: the reference preprocessing.

    Returns:
        Outputs, per-row latency, the inputs' shape and range, and the weights file's identity.

    Raises:
        DatasetError: the reference preprocessing failed on some rows (all listed).
        UserCodeError: the model raised on its input (a shape the model does not take).
        ModelError: the model returns the wrong number of outputs.
    """
    facts = StreamFacts()
    collate = load_collate(spec)
    try:
        scores = score_chunks(model, reference_chunks(rows, reference, spec.dataset.chunk_rows, facts,
                                                      collate=collate), len(rows), encode=output_encoder(spec))
    except OutputError as e:
        raise ModelError(f"{e}.") from e
    except Exception as e:
        raise UserCodeError(
            f"the eager model raised on a batch-1 input from {reference.name} ({_what_ran(facts, collate)}): "
            f"{type(e).__name__}: {str(e)[:300]}{user_frame(e)}. Check that the preprocessing returns what the "
            "model takes (dataset.input_shape for kind tensor): one tensor for forward(x), a tuple for "
            "forward(*x) (e.g. text and offsets), a dict for forward(**x); where rows are not stacked on a new "
            "first dimension (concatenated ids with offsets, padding), name model.collate: file.py:function."
        ) from e
    if facts.failed_count:
        raise preprocess_failure(spec, reference, facts, len(rows))
    if spec.dataset.input_shape is not None and not facts.is_fixed:
        raise DatasetError(f"the reference preprocessing gives inputs whose shape varies by row (the first "
                           f"{list(facts.shape)}) but dataset.input_shape is {list(spec.dataset.input_shape)}. "
                           "Fix the preprocessing.")
    if spec.dataset.input_shape is not None and facts.shape != tuple(spec.dataset.input_shape):
        raise DatasetError(f"the reference preprocessing gives inputs of shape {list(facts.shape)} but "
                           f"dataset.input_shape is {list(spec.dataset.input_shape)}. Fix one of them.")
    if output_encoder(spec) is None and scores.logits.shape[1] != spec.model.num_classes:
        raise ModelError(
            f"the eager model returns {scores.logits.shape[1]} outputs per row but model.num_classes is "
            f"{spec.model.num_classes}. Fix model.num_classes."
        )
    w = spec.model.weights
    return BaselineResult(
        scores=scores, reference=reference, input_shape=facts.shape, input_dtype=facts.dtype,
        input_low=facts.low, input_high=facts.high, sample=facts.sample_array(),
        preprocess_ms_p50=float(np.median(facts.preprocess_ms)) if facts.preprocess_ms else float("nan"),
        weights_path=w, weights_sha256=file_sha256(w), weights_size_bytes=w.stat().st_size,
        inputs=facts.input_sample(collate),
    )


def load_collate(spec: Spec) -> Collate | None:
    """``model.collate`` imported, or None when the spec names none.

    Raises:
        UserCodeError: the module cannot be imported or has no such function.
    """
    return None if spec.model.collate is None else import_callable(spec.model.collate, "model.collate")


def _what_ran(facts: StreamFacts, collate) -> str:
    """The first row's input as the preprocessing gave it, and how it was batched."""
    if facts.layout is None:
        return "no row preprocessed"
    how = f"batched by {getattr(collate, '__name__', 'model.collate')}" if collate else "given a batch dimension"
    return f"one row gave {facts.description()}, {how}"
