"""Each answer joined to its own row and class: replay under concurrency, handled batches, class maps, KServe v2.

No server and no handler process: the replay talks to ``transport.fake`` (with ``LastFirst``
its answers complete out of order), the handled stage to a stand-in for the handler process
that records each batch it is sent, and the answer decoders are fed answers naming classes
of a class map that is NOT in sorted order, so a name mapped through a sorted list lands on
the wrong class.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.answers import envelopes
from pipeline.answers.base import ClassMap
from pipeline.answers.classes import class_map_for, read_label_map
from pipeline.evaluate.compare import StageOutputs, compare_stages
from pipeline.inputs.base import labels_of
from pipeline.names import Stage
from pipeline.stages import handled, replay
from pipeline.stages.handled import HandledConfig, run_handled
from pipeline.stages.outcomes import stage_outputs
from pipeline.stages.replay import ReplayConfig, replay_dataset
from pipeline.transport.fake import FakeConnection, FakeTransport, LastFirst, answer, in_order, request_body
from pipeline.transport.http import Target
from tests.unit._support import codec, fast_bootstrap, pv_answer, spec_for, tensor_rows  # noqa: F401 (fixture)

URL = "http://127.0.0.1:9/predictions/m"
NAMES = ["zebra", "apple", "mango"]  # the spec's class order; sorted it would be apple, mango, zebra


@pytest.fixture(autouse=True)
def no_full_collection(monkeypatch):
    """``replay_dataset`` runs a full gc.collect before its timed loop (~60 ms in a big test process)."""
    monkeypatch.setattr(replay.gc, "collect", lambda *a: 0)


def _row_of(payload: bytes) -> int:
    return int(json.loads(payload)["features"][0])


def _answer_for(row: int) -> bytes:
    """Row i's own answer: class i % 3 and probabilities that differ per row."""
    p = [0.1, 0.1, 0.1]
    p[row % 3] = 0.8
    p[(row + 1) % 3] = 0.1 - row * 0.001
    return pv_answer(row % 3, p)


# --- the fake's out-of-order mode -----------------------------------------------------------------------------------

def test_last_first_completes_each_group_last_first_without_a_clock():
    arrivals: list[bytes] = []
    script = LastFirst(lambda raw: arrivals.append(raw) or answer(200, raw), group=3, total=5)

    async def main():
        conns = [FakeConnection(Target.from_url(URL), script) for _ in range(3)]
        got: list[bytes] = []

        async def send(conn, raws):
            for raw in raws:
                got.append((await conn.request(raw, 5.0)).body)

        await asyncio.gather(send(conns[0], [b"0", b"3"]), send(conns[1], [b"1", b"4"]), send(conns[2], [b"2"]))
        return got

    got = asyncio.run(main())
    assert script.completed == [2, 1, 0, 4, 3]  # arrivals 0 1 2 | 3 4 (a short last group does not wait)
    assert got == [arrivals[k] for k in script.completed] and got[:3] == [b"2", b"1", b"0"]


def test_last_first_times_out_a_request_whose_group_never_fills():
    script = LastFirst(lambda raw: answer(200, b"x"), group=2, total=2)
    conn = FakeConnection(Target.from_url(URL), script)
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(conn.request(b"alone", 0.05))  # arrival 0 waits for arrival 1, which never comes


# --- replay: answers joined to their rows, not to the order they complete -------------------------------------------

@pytest.mark.parametrize("concurrency, n", [(2, 6), (3, 7)])
def test_replay_joins_each_answer_to_its_row_when_later_requests_complete_first(concurrency, n):
    script = LastFirst(lambda raw: answer(200, _answer_for(_row_of(request_body(raw))),
                                          request_id=f"id-{_row_of(request_body(raw))}"), group=concurrency, total=n)
    transport = FakeTransport(script)
    cfg = ReplayConfig(url=URL, token=None, codec=codec(3), concurrency=concurrency, warmup_requests=0,
                       connect=transport)
    res = replay_dataset(cfg, tensor_rows(n))
    sent_rows = [_row_of(request_body(raw)) for raw in transport.requests]
    completed_rows = [sent_rows[k] for k in script.completed]
    assert completed_rows != sorted(completed_rows)  # the fake really answered out of order
    assert res.is_complete and res.answered == n
    for i, r in enumerate(res.rows):
        assert (r.index, r.id, r.request_id, r.predicted) == (i, f"r{i}", f"id-{i}", i % 3)
        assert r.prediction.probabilities.tolist() == json.loads(_answer_for(i))["probabilities"]
    served = stage_outputs(Stage.SERVED, res.rows, 3)
    assert served.predictions.tolist() == [i % 3 for i in range(n)]


# --- handled: the batched pass really sends batches of serving.batch_size ------------------------------------------

class FakeHandler:
    """Stands in for ``handled.HandlerProcess``: answers each request from its own row, records each batch."""

    instances: list["FakeHandler"] = []

    def __init__(self, cfg: HandledConfig) -> None:
        self.cfg = cfg
        self.handler = "fake.py"
        self.load_s = 0.0
        self.log_path = cfg.work_dir / "handler.log"
        self.batches: list[list[int]] = []
        FakeHandler.instances.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def predict(self, requests):
        rows = [_row_of(payload) for payload, _ct in requests]
        self.batches.append(rows)
        return [(200, "application/json", _answer_for(r)) for r in rows], 2.0 * len(rows)


@pytest.fixture
def fake_handler(monkeypatch):
    FakeHandler.instances = []
    monkeypatch.setattr(handled, "HandlerProcess", FakeHandler)
    return FakeHandler.instances


def _handled(tmp_path: Path, batch_size: int, n: int):
    cfg = HandledConfig(work_dir=tmp_path / "handled", mar_path=tmp_path / "m.mar", model_name="m",
                        batch_size=batch_size, load_timeout_s=5, response_timeout_s=5)
    return run_handled(cfg, tensor_rows(n), codec(3))


def test_the_batched_handled_pass_sends_consecutive_batches_of_the_served_batch_size(tmp_path, fake_handler):
    res = _handled(tmp_path, 4, 10)
    (proc,) = fake_handler
    batch1, batched = proc.batches[:10], proc.batches[10:]
    assert batch1 == [[i] for i in range(10)]
    assert batched == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert res.batch_size == 4 and len(res.batched) == 10
    for variant in (res.batch1, res.batched):
        assert [(o.index, o.id, o.predicted) for o in variant] == [(i, f"r{i}", i % 3) for i in range(10)]
    assert [o.latency_ms for o in res.batched] == [2.0] * 10  # the batch's time shared by its rows


def test_at_batch_size_1_there_is_no_batched_pass(tmp_path, fake_handler):
    res = _handled(tmp_path, 1, 3)
    assert res.batched is None and fake_handler[0].batches == [[0], [1], [2]]


# --- class maps in the spec's order, not sorted ---------------------------------------------------------------------

def _spec(**sections):
    return spec_for(3, model={"class_names": NAMES}, **sections)


def test_class_names_keep_the_specs_order():
    cm = class_map_for(_spec())
    assert cm.labels == tuple(NAMES)
    assert [cm.index_of(n) for n in ("zebra", "apple", "mango")] == [0, 1, 2]


def test_a_label_map_file_is_read_by_its_indices_not_its_names_or_key_order(tmp_path):
    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps({"2": "mango", "0": "zebra", "1": ["n01", "apple"]}))
    assert read_label_map(path, 3) == tuple(NAMES)
    spec = spec_for(3, handler={"extra_files": [str(path)]})
    cm = class_map_for(spec)
    assert cm.labels == tuple(NAMES) and cm.index_of("zebra") == 0


def test_topk_answers_map_each_name_to_its_index_in_the_specs_order():
    c = codec(3, "topk", model={"class_names": NAMES}, answers={"top_k": "all"})
    pred = c.decode(json.dumps({"mango": 0.7, "zebra": 0.2, "apple": 0.1}).encode())
    assert pred.index == 2 and pred.probabilities.tolist() == [0.2, 0.1, 0.7]


def test_mapping_answers_map_the_label_and_probability_names_in_the_specs_order():
    c = codec(3, "mapping", model={"class_names": NAMES},
              answers={"mapping": {"label": "result.name", "probabilities": "result.scores"}})
    pred = c.decode(json.dumps({"result": {"name": "zebra", "scores": {"apple": 0.3, "zebra": 0.6,
                                                                        "mango": 0.1}}}).encode())
    assert pred.index == 0 and pred.probabilities.tolist() == [0.6, 0.3, 0.1]


def test_dataset_label_names_map_through_the_specs_class_order():
    labels, notes = labels_of(pd.Series(["zebra", "mango", "apple", "2"]), _spec(), Path("d.csv"), ["a", "b", "c", "d"])
    assert labels.tolist() == [0, 2, 1, 2] and "zebra" in notes[0]


def test_image_folder_classes_map_through_the_specs_class_order_not_the_sorted_folders(tmp_path):
    from pipeline.inputs.image import _from_folder

    for name in NAMES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"not decoded here")
    ids, labels, _paths, _notes, _found = _from_folder(_spec(), tmp_path)
    assert dict(zip(ids, labels.tolist())) == {"zebra/x.png": 0, "apple/x.png": 1, "mango/x.png": 2}
    plain_ids, plain, _paths, _notes, _found = _from_folder(spec_for(3), tmp_path)  # no class_names: sorted folders
    assert dict(zip(plain_ids, plain.tolist())) == {"zebra/x.png": 2, "apple/x.png": 0, "mango/x.png": 1}


def test_baseline_and_served_accuracy_from_label_names_on_a_known_fixture():
    """Label names -> indices -> accuracy, with a class order that is not sorted.

    Five rows labeled by name; the baseline's logits are right on 4 of them (row 4 says
    apple for a mango), the served answers name the same classes as the baseline. A name
    mapped through a sorted list would shift the labels and change both accuracies."""
    spec = _spec(answers={"top_k": "all"})
    labels, _ = labels_of(pd.Series(["zebra", "apple", "mango", "zebra", "mango"]), spec, Path("d.csv"),
                          [f"r{i}" for i in range(5)])
    base_pred = np.array([0, 1, 2, 0, 1])
    logits = np.eye(3)[base_pred] * 4.0
    baseline = StageOutputs(Stage.BASELINE, base_pred, np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                            logits, np.ones(5))
    c = codec(3, "topk", model={"class_names": NAMES}, answers={"top_k": "all"})
    answers = [{NAMES[k]: 0.8, NAMES[(k + 1) % 3]: 0.15, NAMES[(k + 2) % 3]: 0.05} for k in base_pred]
    served_preds = [c.decode(json.dumps(a).encode()) for a in answers]
    served = StageOutputs(Stage.SERVED, np.array([p.index for p in served_preds]),
                          np.stack([p.probabilities for p in served_preds]), None, np.ones(5))
    cmp = compare_stages(tuple(f"r{i}" for i in range(5)), labels, tuple(NAMES), [baseline, served])
    assert cmp.stages[Stage.BASELINE].accuracy == pytest.approx(0.8)
    assert cmp.stages[Stage.SERVED].accuracy == pytest.approx(0.8)
    assert served.predictions.tolist() == base_pred.tolist()


# --- KServe v2: the output an answer is read from -------------------------------------------------------------------

V2 = envelopes.ENVELOPES["kserve_v2"]


def test_a_kserve_v2_answer_with_several_outputs_is_read_from_the_first():
    """The documented rule (``answers.envelopes``; TorchServe names one output per input, and this
    tool sends one input): the first output's data, whatever follows it."""
    body = json.dumps({"outputs": [
        {"name": "input-0", "shape": [3], "datatype": "FP32", "data": [0.1, 0.7, 0.2]},
        {"name": "extra", "shape": [3], "datatype": "FP32", "data": [0.9, 0.05, 0.05]},
    ]}).encode()
    assert V2.unwrap(body) == [0.1, 0.7, 0.2]
    c = codec(3, "logits", answers={"envelope": "kserve_v2"})
    assert c.decode(body).index == 1
    doc = json.dumps({"outputs": [{"data": [pv_answer(2, [0.1, 0.2, 0.7]).decode()]},
                                  {"data": [pv_answer(0, [0.9, 0.05, 0.05]).decode()]}]}).encode()
    assert codec(3, "package_validate", answers={"envelope": "kserve_v2"}).decode(doc).index == 2


def test_the_handler_process_is_started_with_the_served_batch_size_and_envelope(tmp_path, monkeypatch):
    """TorchServe's Context carries the batch size the handler is told (``_child`` hands it to
    ``TsModelLoader.load``): the child must get the served one, not 1. The child is replaced by a
    stand-in that only answers "loaded" on the pipe it was given."""
    import zipfile

    from pipeline.torchserve.inprocess import send_message

    mar = tmp_path / "m.mar"
    with zipfile.ZipFile(mar, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"handler": "h.py"}}))
    started = []

    class Child:
        def __init__(self, cmd, **kw):
            started.append(cmd)
            send_message(int(cmd[4]), {"loaded": True, "seconds": 0.25})
            self.pid = -1

        def poll(self):
            return 0

    monkeypatch.setattr(handled.subprocess, "Popen", Child)
    monkeypatch.setattr(handled, "stop_group", lambda proc, grace_s: None)  # the stand-in has no process group
    cfg = HandledConfig(work_dir=tmp_path / "handled", mar_path=mar, model_name="m", batch_size=4,
                        load_timeout_s=5, response_timeout_s=5, service_envelope="kservev2")
    with handled.HandlerProcess(cfg) as proc:
        assert proc.load_s == 0.25 and proc.handler == "h.py"
    (cmd,) = started
    assert cmd[1:3] == ["-m", "pipeline.torchserve.inprocess"]
    assert cmd[5:] == [str(tmp_path / "handled" / "model"), "m", "h.py", "4", "kservev2"]
