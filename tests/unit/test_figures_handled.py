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

    def __init__(self, crash=None, ms_per_call: float = 12.0, hang_on: bytes | None = None, drop_last: bool = False):
        self.crash, self.ms, self.hang_on, self.calls = crash or {}, ms_per_call, hang_on, []
        self.drop_last, self.content_types = drop_last, []
        self.handler, self.load_s, self.log_path = "h.py", 0.1, Path("handler.log")
        self.last_inner = (None, "a fake handler")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def predict(self, requests):
        self.calls.append(len(requests))
        out = []
        for body, ct in requests:
            self.content_types.append(ct)
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
        return (out[:-1] if self.drop_last else out), self.ms


def test_each_row_gets_its_own_answer_and_a_share_of_its_batch_time():
    rows = tensor_rows(7)
    proc = FakeProcess(ms_per_call=12.0)
    out, _, _ = _run_variant(proc, rows, C, 4)
    assert proc.calls == [4, 3]
    assert [o.predicted for o in out] == [i % 3 for i in range(7)]
    assert [o.id for o in out] == list(rows.ids) and [o.index for o in out] == list(range(7))
    assert [o.latency_ms for o in out] == [3.0] * 4 + [4.0] * 3


def test_batched_outcomes_are_those_of_the_batched_calls(monkeypatch, tmp_path, caplog):
    proc = FakeProcess(crash={4: {1, 5}})  # rows 1 and 5 crash only when batched
    given = []
    monkeypatch.setattr(handled, "HandlerProcess", lambda cfg: given.append(cfg) or proc)
    cfg = SimpleNamespace(work_dir=tmp_path / "run" / "handled", batch_size=4)
    probe = _probe("row 3 again", json.dumps({"features": [3.0, 3.0]}).encode(), SAME, index=3)
    with caplog.at_level("INFO", logger="pipeline.stages.handled"):
        res = run_handled(cfg, tensor_rows(8), C, probes=[probe])
    assert given == [cfg] and cfg.work_dir.is_dir()
    assert proc.calls == [1] * 8 + [4, 4, 1]
    assert all(o.is_ok for o in res.batch1)
    assert [o.is_ok for o in res.batched] == [True, False, True, True, True, False, True, True]
    assert res.batched[1].error_class == "handler_error" and res.batch_size == 4
    assert (res.codec, res.handler, res.load_s, res.log_path) == (C, "h.py", 0.1, Path("handler.log"))
    assert [(p.probe, p.stage, p.outcome, p.original) for p in res.probes] == [("row 3 again", "handled", "same", 0)]
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("handled 8 rows in ")]
    assert len(logged) == 1 and 0 <= float(logged[0].split()[4]) < 60, "the stage's own wall time"
    # The work folder may exist already; batch size 2 is batched, 1 is not.
    res2 = run_handled(SimpleNamespace(work_dir=cfg.work_dir, batch_size=2), tensor_rows(3), C)
    assert [o.predicted for o in res2.batched] == [0, 1, 2]
    assert run_handled(SimpleNamespace(work_dir=tmp_path / "h1", batch_size=1), tensor_rows(3), C).batched is None


def test_a_row_the_handler_gave_no_answer_for_is_not_sent_and_named():
    proc = FakeProcess(drop_last=True)
    rows = tensor_rows(5)
    out, _, _ = _run_variant(proc, rows, C, 5)
    assert [o.is_ok for o in out] == [True] * 4 + [False]
    last = out[4]
    assert (last.index, last.id, last.error_class, last.message, last.status) == (4, "r4", "not_sent", "no answer", None)
    assert set(proc.content_types) == {rows.content_type}


def _probe(name, body, expect, index=0, stages=("handled", "served")):
    return HandlerProbe(name, body, "application/json", expect, index, stages)


def test_probes_are_judged_against_the_original_rows_batch_1_class():
    proc = FakeProcess()
    batch1, _, _ = _run_variant(proc, tensor_rows(3), C, 1)
    probes = [_probe("row 2 again", json.dumps({"features": [2.0, 2.0]}).encode(), SAME, index=2),
              _probe("row 1's body for row 2", json.dumps({"features": [1.0, 1.0]}).encode(), SAME, index=2),
              _probe("one feature missing", json.dumps({"features": [2.0]}).encode(), REFUSE, index=2),
              _probe("served only", b"{}", REFUSE, stages=("served",))]
    probes.insert(0, probes.pop())  # a probe the stage does not send, first: the others still go
    got = _run_probes(proc, probes, C, batch1)
    assert [(g.probe, g.stage, g.outcome, g.passed, g.original, g.status) for g in got] == [
        ("served only", "handled", "not run", True, 0, None),
        ("row 2 again", "handled", "same", True, 2, 200), ("row 1's body for row 2", "handled", "different", False, 2, 200),
        ("one feature missing", "handled", "refused", True, 2, 400)]
    assert got[3].message == "bad_input: expected 2 features"
    assert set(proc.content_types) == {"application/json"}


def test_a_probe_that_hangs_the_handler_fails_and_the_later_ones_are_not_sent():
    hang = json.dumps({"features": [9.0, 9.0], "x": 1}).encode()
    proc = FakeProcess(hang_on=hang)
    batch1, _, _ = _run_variant(proc, tensor_rows(2), C, 1)
    probes = [_probe("hangs", hang, ANSWER), _probe("after", json.dumps({"features": [0.0, 0.0]}).encode(), SAME)]
    first, after = _run_probes(proc, probes, C, batch1)
    assert (first.probe, first.stage, first.outcome, first.passed, first.original) == ("hangs", "handled", "crashed", False, 0)
    assert first.message == "timeout: the handler did not answer in 20 s"
    assert (after.probe, after.stage, after.outcome, after.passed) == ("after", "handled", "crashed", False)
    assert after.message == "not_sent: the handler stopped answering at probe 'hangs'"
    assert proc.calls == [1, 1, 1], "the probe after the hang was not sent"


class ReadingProcess(FakeProcess):
    """Also hands back what the real child reads beside each batch's answers: the model's outputs inside the
    handler (row i gives [i, 10 i]; none for a batch holding row ``opaque``) and what the handler raised."""

    def __init__(self, opaque=None, **kw):
        super().__init__(**kw)
        self.opaque = opaque
        self.last_inner, self.last_cause = (None, "nothing yet"), None

    def predict(self, requests):
        out, ms = super().predict(requests)
        ids = [int(json.loads(body)["features"][0]) for body, _ in requests]
        self.last_inner = ((None, f"batch of row {self.opaque}") if self.opaque in ids
                           else ([[float(i), 10.0 * i] for i in ids], None))
        self.last_cause = "RuntimeError: boom (at h.py:3 in handle)" if any(o == CRASH for o in out) else None
        return out, ms


def test_each_batch_s_inner_outputs_land_on_its_rows_and_its_cause_on_its_failed_rows():
    proc = ReadingProcess(opaque=4, crash={3: {1}})
    out, _, inner = _run_variant(proc, tensor_rows(6), C, 3)
    assert inner.why == "batch of row 4"
    assert inner.values[:3].tolist() == [[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]]
    assert all(v != v for v in inner.values[3:].ravel()), "the batch without outputs stays NaN"
    assert not out[1].is_ok and out[1].message.endswith("; the handler raised RuntimeError: boom (at h.py:3 in handle)")
    assert out[0].is_ok and out[0].message is None and all(o.message is None for o in out[3:])
    whole, _, all_read = _run_variant(ReadingProcess(), tensor_rows(2), C, 1)
    assert all_read.why is None and all_read.values.tolist() == [[0.0, 0.0], [1.0, 10.0]]


def test_the_inner_outputs_of_each_variant_reach_the_result(monkeypatch, tmp_path):
    proc = ReadingProcess()
    monkeypatch.setattr(handled, "HandlerProcess", lambda cfg: proc)
    res = run_handled(SimpleNamespace(work_dir=tmp_path / "h", batch_size=2), tensor_rows(3), C)
    assert res.inner_batch1.values.tolist() == [[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]]
    assert res.inner_batched.values.tolist() == res.inner_batch1.values.tolist()
    one = run_handled(SimpleNamespace(work_dir=tmp_path / "h1", batch_size=1), tensor_rows(2), C)
    assert one.inner_batched is None and one.inner_batch1.values.shape == (2, 2)
