"""The model's outputs inside the handler: read without changing it, lined up by row, compared when
the answers carry only a class."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.evaluate.compare import StageOutputs, output_diff
from pipeline.stages.handled import INNER_QUANTITY, InnerOutputs, _collect_inner, with_inner
from pipeline.torchserve.inprocess import capture_inference, inner_rows


class Handler:
    def inference(self, x):
        return x * 2

    def handle(self, data, context):
        return self.inference(torch.tensor(data, dtype=torch.float32)).argmax(1).tolist()


class Service:
    def __init__(self, entry):
        self._entry_point = entry


class Envelope:
    def __init__(self, fn):
        self._handle_fn = fn

    def handle(self, data, context):
        return self._handle_fn(data, context)


def test_the_handler_gets_what_its_inference_returned_and_the_output_is_kept():
    h = Handler()
    seen = capture_inference(Service(h.handle))
    assert h.handle([[1.0, 3.0], [4.0, 0.0]], None) == [1, 0]
    assert len(seen) == 1 and torch.equal(seen[0], torch.tensor([[2.0, 6.0], [8.0, 0.0]]))
    arr, why = inner_rows(seen, 2)
    assert why is None and arr.dtype == np.float32 and arr.tolist() == [[2.0, 6.0], [8.0, 0.0]]


def test_a_kserve_envelope_is_looked_through():
    h = Handler()
    seen = capture_inference(Service(Envelope(h.handle).handle))
    h.handle([[0.0, 1.0]], None)
    assert len(seen) == 1


def test_a_function_handler_has_nothing_to_read_and_says_so():
    assert capture_inference(Service(lambda data, ctx: [0])) is None
    arr, why = inner_rows(None, 1)
    assert arr is None and "no inference method" in why


def test_outputs_that_do_not_line_up_with_the_batch_are_not_read():
    assert inner_rows([], 2)[1] == "the handler called inference 0 time(s) for one batch"
    assert "2 time(s)" in inner_rows([torch.zeros(2, 3), torch.zeros(2, 3)], 2)[1]
    assert "shape [3, 4] for a batch of 2" in inner_rows([torch.zeros(3, 4)], 2)[1]
    assert "returns a tuple" in inner_rows([(torch.zeros(2, 3),)], 2)[1]
    assert inner_rows([torch.zeros(2, 1, 3)], 2)[0].shape == (2, 3)


def test_batches_are_placed_at_their_rows_and_a_missing_batch_is_explained():
    got = _collect_inner(4, [([0, 1], [[1, 2], [3, 4]], None), ([2], None, "no inference"), ([3], [[7, 8]], None)])
    assert got.why == "no inference"
    assert got.values[[0, 1, 3]].tolist() == [[1, 2], [3, 4], [7, 8]] and np.isnan(got.values[2]).all()
    assert _collect_inner(2, [([0], None, "a"), ([1], None, "b")]) == InnerOutputs(None, "a")
    odd = _collect_inner(2, [([0], [[1, 2]], None), ([1], [[1, 2, 3]], None)])
    assert "3 outputs per row, before 2" in odd.why and np.isnan(odd.values[1]).all()


def _bare(preds) -> StageOutputs:
    return StageOutputs("handled", np.array(preds), None, None, None)


def test_bare_answers_are_compared_through_the_inner_outputs():
    base = StageOutputs("baseline", np.array([1, 0]), None, np.array([[0.0, 1.0], [1.0, 0.0]]), None)
    inner = InnerOutputs(np.array([[0.0, 1.0], [1.0, 0.25]], np.float32))
    out = with_inner(_bare([1, 0]), inner, 2)
    assert out.logits_from == INNER_QUANTITY
    d = output_diff(base, out)[0]
    assert d.quantity == INNER_QUANTITY and d.max_abs == 0.25 and d.rows_compared == 2


def test_answers_with_numbers_keep_their_own_and_gaps_are_explained():
    probs = StageOutputs("handled", np.array([0]), np.array([[0.9, 0.1]]), None, None)
    assert with_inner(probs, InnerOutputs(np.zeros((1, 2), np.float32)), 2) is probs
    assert with_inner(_bare([0]), None, 2).no_outputs_why is None
    assert "cannot be read: no inference" in with_inner(_bare([0]), InnerOutputs(None, "no inference"), 2).no_outputs_why
    assert "3 numbers per row, not one per class (2)" in with_inner(
        _bare([0]), InnerOutputs(np.zeros((1, 3), np.float32)), 2).no_outputs_why
    gap = with_inner(_bare([0, 1]), InnerOutputs(np.array([[0, 1], [np.nan, np.nan]], np.float32), "x"), 2)
    assert gap.logits is None and "missing for some answered rows: x" in gap.no_outputs_why
    failed_row = with_inner(_bare([0, -1]), InnerOutputs(np.array([[0, 1], [np.nan, np.nan]], np.float32)), 2)
    assert failed_row.logits is not None
    base = StageOutputs("baseline", np.array([0]), None, np.array([[1.0, 0.0]]), None)
    reason = output_diff(base, with_inner(_bare([0]), InnerOutputs(None, "no inference"), 2))[0].reason
    assert reason.startswith("the handled answers carry no logits or probabilities, and the model's outputs")
