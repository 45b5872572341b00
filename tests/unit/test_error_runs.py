"""Runs that end in an error: the internal error's traceback tail ends at the tool's own frame, an input error
prints what did not run once (not a FAIL line per check never evaluated), and failed rows are quoted."""

import json
from pathlib import Path

import pipeline
from pipeline.report.console import not_run, render_console
from pipeline.run.runner import traceback_tail


def _raised_through_the_tool(fn):
    """An exception raised in ``fn`` (outside pipeline/) called from a frame whose file is in pipeline/."""
    ns = {}
    code = "def tool_call(fn):\n    x = 1\n    return fn(x)\n"
    exec(compile(code, str(Path(pipeline.__file__).parent / "stand_in_tool.py"), "exec"), ns)
    try:
        ns["tool_call"](fn)
    except Exception as e:
        return e
    raise AssertionError("nothing raised")


def test_the_internal_error_tail_ends_at_the_tools_frame_not_inside_the_library():
    e = _raised_through_the_tool(lambda x: json.loads("{"))
    tail = traceback_tail(e)
    assert tail[-1] == "pipeline/stand_in_tool.py:3 in tool_call", tail
    assert tail[0].startswith("raised 4 frame(s) below the tool's call, innermost json/decoder.py:")
    assert tail[0].endswith(
        "in raw_decode: JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")
    assert not any("decoder.py" in ln for ln in tail[1:])


def test_an_error_raised_in_the_tool_itself_ends_there():
    ns = {}
    exec(compile("def own():\n    raise KeyError('k')\n", str(Path(pipeline.__file__).parent / "own.py"), "exec"), ns)
    try:
        ns["own"]()
    except KeyError as e:
        tail = traceback_tail(e)
    assert tail[0] == "KeyError: 'k'" and tail[-1] == "pipeline/own.py:2 in own"


def _error_report(**extra):
    checks = [{"name": f"check {k}", "stage": "served", "value": None, "baseline": None, "limit": "x",
               "passed": False, "detail": "not evaluated: the run stopped before this stage finished",
               "is_gating": True, "evaluated": False} for k in range(30)]
    checks.append({"name": "max abs output difference", "stage": "exported", "value": 0.5, "baseline": 0.0,
                   "limit": "<= 1e-05", "passed": False, "detail": "logits", "is_gating": True, "evaluated": True})
    rep = {"verdict": "ERROR", "exit_code": 2, "status": "error", "complete": False,
           "error": {"type": "ConfigError", "message": "handler.config: key 'batch_size' in both", "details": []},
           "gate": {"checks": checks}, "plan": {"stages": ["baseline", "exported", "handled", "served"]},
           "stage_seconds": {"dataset": 0.1, "baseline": 0.2, "export": 0.3, "archive": 0.1},
           "attribution": {"summary": "nothing to attribute"}, "run_dir": None}
    rep.update(extra)
    return rep


def test_an_input_error_prints_the_error_and_what_did_not_run_once():
    text = render_console(_error_report())
    assert text.count("not evaluated") == 1 and "FAIL served" not in text
    assert ("gate: not evaluated, the run did not complete; did not run: handled, serve, replay; 30 check(s) "
            "without results; 1 failed on the partial results:") in text
    assert "  FAIL exported: max abs output difference: value 0.5000" in text  # measured: still shown
    assert text.index("ConfigError: handler.config") < text.index("gate: not evaluated")


def test_not_run_follows_the_plan():
    assert not_run(_error_report(plan={"stages": ["baseline", "exported"]},
                                 stage_seconds={"dataset": 0.1})) == ["baseline", "export"]
    assert not_run(_error_report(plan=None, stage_seconds={})) == ["dataset", "baseline", "export", "archive",
                                                                     "handled", "serve", "replay"]


def test_the_console_quotes_one_failed_row_per_stage_and_error_class():
    rep = _error_report(stages={
        "handled": {"batch_size": 1, "batch1": {"errors": {"handler_error": 4}, "examples": {"handler_error": {
            "id": "r3", "message": "Prediction failed; the handler raised RuntimeError: boom (at handler.py:9 in "
                                   "preprocess)"}}}, "batched": None},
        "replay": {"errors": {"handler_error": 2}, "examples": {"handler_error": {
            "id": "r5", "message": "Prediction failed; the handler raised RuntimeError: boom (model_log.log)"}}}})
    text = render_console(rep)
    assert ("  handled row r3 (4 like it): handler_error: Prediction failed; the handler raised RuntimeError: boom "
            "(at handler.py:9 in preprocess)") in text
    assert "  served row r5 (2 like it): handler_error: Prediction failed; the handler raised" in text
