"""The handled stage's figures, tested where they are built (``stages.handled``), with a stand-in for the
handler process: which outcomes are the batch-1 ones and which the batched ones, each row's answer and
latency, and each probe judged against the original row's batch-1 class.

The stand-in answers each request from its body (row i of ``tensor_rows`` is ``[i, i]``), crashes the
rows it is told to at a batch size, and records the batch sizes it was sent, so a batched variant
built from batch-1 outcomes, or rows shifted across a batch boundary, show.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.inputs.probes import ANSWER, REFUSE, SAME, HandlerProbe
from pipeline.stages import handled
from pipeline.stages.handled import HandledError, _run_probes, _run_variant, run_handled
from tests.unit._support import codec, pv_answer, tensor_rows

C = codec(3)
CRASH = (503, "application/json", b'{"message": "Prediction failed"}')


class FakeProcess:
    """Answers row i with class i % 3; ``crash`` maps a batch size to the rows that crash at it."""

    def __init__(self, crash=None, ms_per_call: float = 12.0, hang_on: bytes | None = None):
        self.crash, self.ms, self.hang_on, self.calls = crash or {}, ms_per_call, hang_on, []
        self.handler, self.load_s, self.log_path = "h.py", 0.1, Path("handler.log")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def predict(self, requests):
        self.calls.append(len(requests))
        out = []
        for body, _ct in requests:
            if self.hang_on is not None and body == self.hang_on:
                raise HandledError("the handler did not answer in 20 s")
            doc = json.loads(body)
            if "features" not in doc or len(doc["features"]) != 2:
                out.append((400, "application/json", b'{"message": "expected 2 features"}'))
                continue
            i = int(doc["features"][0])
            if i in self.crash.get(len(requests), ()):
                out.append(CRASH)
                continue
            p = [0.1, 0.1, 0.1]
            p[i % 3] = 0.8
            out.append((200, "application/json", pv_answer(i % 3, p)))
        return out, self.ms


def test_each_row_gets_its_own_answer_and_a_share_of_its_batch_time():
    rows = tensor_rows(7)
    proc = FakeProcess(ms_per_call=12.0)
    out, _ = _run_variant(proc, rows, C, 4)
    assert proc.calls == [4, 3]
    assert [o.predicted for o in out] == [i % 3 for i in range(7)]
    assert [o.id for o in out] == list(rows.ids) and [o.index for o in out] == list(range(7))
    assert [o.latency_ms for o in out] == [3.0] * 4 + [4.0] * 3


def test_batched_outcomes_are_those_of_the_batched_calls(monkeypatch, tmp_path):
    proc = FakeProcess(crash={4: {1, 5}})  # rows 1 and 5 crash only when batched
    monkeypatch.setattr(handled, "HandlerProcess", lambda cfg: proc)
    cfg = SimpleNamespace(work_dir=tmp_path / "h", batch_size=4)
    res = run_handled(cfg, tensor_rows(8), C)
    assert proc.calls == [1] * 8 + [4, 4]
    assert all(o.is_ok for o in res.batch1)
    assert [o.is_ok for o in res.batched] == [True, False, True, True, True, False, True, True]
    assert res.batched[1].error_class == "handler_error" and res.batch_size == 4
    assert run_handled(SimpleNamespace(work_dir=tmp_path / "h1", batch_size=1), tensor_rows(3), C).batched is None


def _probe(name, body, expect, index=0, stages=("handled", "served")):
    return HandlerProbe(name, body, "application/json", expect, index, stages)


def test_probes_are_judged_against_the_original_rows_batch_1_class():
    proc = FakeProcess()
    batch1, _ = _run_variant(proc, tensor_rows(3), C, 1)
    probes = [_probe("row 2 again", json.dumps({"features": [2.0, 2.0]}).encode(), SAME, index=2),
              _probe("row 1's body for row 2", json.dumps({"features": [1.0, 1.0]}).encode(), SAME, index=2),
              _probe("one feature missing", json.dumps({"features": [2.0]}).encode(), REFUSE, index=2),
              _probe("served only", b"{}", REFUSE, stages=("served",))]
    got = _run_probes(proc, probes, C, batch1)
    assert [(g.outcome, g.passed, g.original) for g in got] == [
        ("same", True, 2), ("different", False, 2), ("refused", True, 2), ("not run", True, 0)]


def test_a_probe_that_hangs_the_handler_fails_and_the_later_ones_are_not_sent():
    hang = json.dumps({"features": [9.0, 9.0], "x": 1}).encode()
    proc = FakeProcess(hang_on=hang)
    batch1, _ = _run_variant(proc, tensor_rows(2), C, 1)
    probes = [_probe("hangs", hang, ANSWER), _probe("after", json.dumps({"features": [0.0, 0.0]}).encode(), SAME)]
    first, after = _run_probes(proc, probes, C, batch1)
    assert (first.outcome, first.passed) == ("crashed", False)
    assert (after.outcome, after.passed) == ("crashed", False) and "stopped answering at probe 'hangs'" in after.message
    assert proc.calls == [1, 1, 1], "the probe after the hang was not sent"
