"""Handler failures quoted: what the handler raised (type, message, file:line) reaches each failed handled row
and probe, and the served rows from TorchServe's model_log.log."""

import importlib.util
import json
from pathlib import Path

from pipeline.inputs.probes import SAME, HandlerProbe
from pipeline.stages.handled import _run_probes, _run_variant, with_cause
from pipeline.stages.outcomes import failed
from pipeline.torchserve.inprocess import _capture_entry_point, quote_exception
from tests.unit._support import codec, pv_answer, tensor_rows

C = codec(3)


def _raise_from_user_file(tmp_path: Path, body: str) -> BaseException:
    (tmp_path / "handler.py").write_text(body)
    spec = importlib.util.spec_from_file_location("q_handler", tmp_path / "handler.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        mod.handle()
    except Exception as e:
        return e
    raise AssertionError("the handler did not raise")


def test_a_handlers_exception_names_its_own_line_and_the_librarys(tmp_path):
    e = _raise_from_user_file(tmp_path, "import json\n\n\ndef handle():\n    return json.loads('{')\n")
    q = quote_exception(e, str(tmp_path))
    assert q.startswith("JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2")
    assert "(at handler.py:5 in handle; raised in json/decoder.py:" in q and " in raw_decode)" in q


def test_an_exception_raised_in_the_handlers_own_line_names_it_once(tmp_path):
    e = _raise_from_user_file(tmp_path, "def handle():\n    raise ValueError('expected 1 channels\\nmore')\n")
    assert quote_exception(e, str(tmp_path)) == "ValueError: expected 1 channels (at handler.py:2 in handle)"


def test_an_exception_outside_the_users_files_names_the_innermost_frame(tmp_path):
    try:
        json.loads("[")
    except ValueError as e:
        q = quote_exception(e, str(tmp_path / "elsewhere"))
    assert q.startswith("JSONDecodeError: Expecting value") and "(at json/decoder.py:" in q


def test_the_entry_point_is_wrapped_and_the_exception_still_raised():
    class Service:
        def _entry_point(self, data, context):  # noqa: D401 (stands in for the handler's handle)
            raise RuntimeError(f"bad {data}")

    svc, captured = Service(), []
    svc._entry_point = svc._entry_point  # bound, as TorchServe stores it
    _capture_entry_point(svc, captured)
    try:
        svc._entry_point([1], None)
    except RuntimeError as e:
        assert captured == [e] and str(e) == "bad [1]"
    else:
        raise AssertionError("the wrapper swallowed the exception")


class CausingProcess:
    """Row 1 crashes; the child then reports what the handler raised."""

    def __init__(self):
        self.last_cause = None

    def predict(self, requests):
        out, self.last_cause = [], None
        for body, _ct in requests:
            i = int(json.loads(body)["features"][0])
            if i == 1:
                out.append((503, "application/json", b'{"code": 503, "message": "Prediction failed"}'))
                self.last_cause = "RuntimeError: expected 1 channels (at handler.py:7 in preprocess)"
            else:
                out.append((200, "application/json", pv_answer(0, [1.0, 0.0, 0.0])))
        return out, 1.0


def test_failed_handled_rows_and_probes_carry_the_quoted_cause():
    proc = CausingProcess()
    out, _, _ = _run_variant(proc, tensor_rows(3), C, 1)
    assert out[0].is_ok and out[0].message is None and out[2].message is None
    assert out[1].error_class == "handler_error"
    assert out[1].message.endswith("; the handler raised RuntimeError: expected 1 channels (at handler.py:7 in "
                                   "preprocess)")
    probe = HandlerProbe(name="row 1 again", body=json.dumps({"features": [1.0, 1.0]}).encode(),
                         content_type="application/json", expect=SAME, source_index=0, stages=("handled",))
    (p,) = _run_probes(proc, [probe], C, out)
    assert not p.passed and "the handler raised RuntimeError: expected 1 channels (at handler.py:7" in p.message


def test_with_cause_leaves_answered_rows_and_rows_without_a_cause_alone():
    row = failed(0, "r0", "handler_error", "Prediction failed")
    assert with_cause(row, None) is row
    assert with_cause(row, "E: x").message == "Prediction failed; the handler raised E: x"


PREFIX = "2026-01-01T00:00:00,000 [INFO ] W-9000-m_1.0-stdout MODEL_LOG - "


def _traceback(exc: str, user_line: int = 12) -> list[str]:
    return [PREFIX + ln for ln in (
        "Invoking custom service failed.",
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/site-packages/ts/service.py", line 134, in predict',
        "    ret = self._entry_point(input_batch, self.context)",
        f'  File "/tmp/models/abc123/handler.py", line {user_line}, in preprocess',
        "    return self.model(x)",
        '  File "/venv/lib/python3.11/site-packages/torch/nn/modules/conv.py", line 454, in _conv_forward',
        "    return F.conv2d(input, weight)",
        exc)]


def test_a_logged_traceback_is_quoted_with_the_handlers_line_and_the_librarys():
    from pipeline.torchserve.logs import clean, quote_traceback

    block = [clean(ln) for ln in _traceback("RuntimeError: expected input[1, 4, 28, 28] to have 1 channels")[1:]]
    assert quote_traceback(block) == ("RuntimeError: expected input[1, 4, 28, 28] to have 1 channels (at handler.py:12 "
                                      "in preprocess; raised in torch/nn/modules/conv.py:454 in _conv_forward)")


def test_logged_causes_reads_only_what_was_logged_after_the_offset(tmp_path):
    from pipeline.torchserve.logs import logged_causes, model_log_offset

    log = tmp_path / "model_log.log"
    log.write_text("\n".join(_traceback("ValueError: old", 3)) + "\n")
    since = model_log_offset(tmp_path)
    with log.open("a") as f:
        f.write("\n".join(_traceback("KeyError: 'save_mode'", 20) + _traceback("KeyError: 'save_mode'", 20)) + "\n")
    causes = logged_causes(tmp_path, since)
    assert causes == ["KeyError: 'save_mode' (at handler.py:20 in preprocess; raised in torch/nn/modules/conv.py:454 "
                      "in _conv_forward)"] * 2
    assert logged_causes(tmp_path, 0)[0].startswith("ValueError: old") and logged_causes(None) == []
    assert model_log_offset(tmp_path / "none") == 0


def test_served_rows_get_the_cause_when_one_was_logged_and_all_causes_when_several():
    from dataclasses import dataclass, replace

    from pipeline.stages.probing import ProbeOutcome
    from pipeline.stages.replay import served_cause, with_served_causes

    assert served_cause([]) is None
    assert served_cause(["E: a", "E: a"]) == "the handler raised E: a (model_log.log)"
    assert served_cause(["E: a", "E: b", "E: a"]) == ("the handler raised one of 2 exceptions in model_log.log: "
                                                      "E: a | E: b")
    assert served_cause([f"E: {k}" for k in range(5)]).endswith("E: 0 | E: 1 | E: 2 | ... 2 more")
    @dataclass(frozen=True)
    class Result:
        rows: tuple

    ok = failed(0, "r0", "handler_error", "Prediction failed")
    ok = replace(ok, is_ok=True, error_class=None, message=None)
    rows = (ok, failed(1, "r1", "handler_error", "Prediction failed"), failed(2, "r2", "timeout", "no answer"))
    probe = ProbeOutcome("p", "same", "served", "crashed", 503, None, 0, "handler_error: Prediction failed", False)
    other = replace(probe, probe="q", message="")
    res, probes = with_served_causes(Result(rows), (probe, other, probe), ["E: a"], ["E: p1", "E: p2"])
    assert [r.message for r in res.rows] == [None, "Prediction failed; the handler raised E: a (model_log.log)",
                                             "no answer"]
    # as many tracebacks as failed probes, sent one at a time: each probe its own
    assert [p.message for p in probes] == ["handler_error: Prediction failed; the handler raised E: p1 (model_log.log)",
                                           "", "handler_error: Prediction failed; the handler raised E: p2 "
                                               "(model_log.log)"]
    _, probes = with_served_causes(Result(rows), (probe, probe), [], ["E: p1"])
    assert all(p.message.endswith("; the handler raised E: p1 (model_log.log)") for p in probes)
    # a row whose in-process run quoted a cause that the log holds gets that one, not the list
    handled = (rows[0], failed(1, "r1", "handler_error", "Prediction failed; the handler raised E: b"))
    res, _ = with_served_causes(Result(rows), (), ["E: a", "E: b"], [], handled)
    assert res.rows[1].message == "Prediction failed; the handler raised E: b (model_log.log)"
    res, _ = with_served_causes(Result(rows), (), ["E: a", "E: c"], [], handled)  # not logged: the list
    assert res.rows[1].message.endswith("one of 2 exceptions in model_log.log: E: a | E: c")
    same, unchanged = with_served_causes(Result(rows), (probe,), [], [])
    assert same.rows == rows and unchanged == (probe,)
