"""What a run prints: stage lines with their key figure, progress on a terminal only, --quiet and --json."""

import io
import json
import signal

import pytest

from pipeline.cli import main
from pipeline.console import Console
from pipeline.torchserve.logs import clean, explain_failure
from tests.helpers import make_project


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_ci_log_gets_one_plain_line_per_stage_and_no_progress():
    out = io.StringIO()
    c = Console.for_stream(out)
    c.stage_event("serve", "start", {})
    c.progress("replay", 100, 540)
    c.stage_event("serve", "end", {"seconds": 3.21, "startup_s": 3.1})
    c.stage_event("replay", "end", {"seconds": 5.0, "answered": 540, "rows": 540, "rps": 301.2})
    assert out.getvalue().splitlines() == ["  serve             3.21 s  TorchServe ready in 3.1 s",
                                           "  replay            5.00 s  540/540 rows answered, 301 rows/s"]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_terminal_shows_the_stage_as_it_starts_and_the_replay_progress():
    out = _Tty()
    c = Console.for_stream(out)
    c.stage_event("baseline", "start", {})
    assert out.getvalue().endswith("baseline        ...")
    c.stage_event("baseline", "end", {"seconds": 0.5, "accuracy": 0.98, "reference": "builtin:tensor"})
    c.progress("warmup", 50, 1000)
    c.progress("replay", 270, 540)
    assert "replay          270/540 (50%)" in out.getvalue() and "warm-up" in out.getvalue()
    c.finish()
    assert out.getvalue().endswith("\r\x1b[2K")


def test_quiet_console_prints_nothing():
    out = _Tty()
    c = Console.for_stream(out, quiet=True)
    c.stage_event("dataset", "start", {})
    c.progress("replay", 50, 100)
    c.stage_event("dataset", "end", {"seconds": 1.0, "rows": 3})
    assert out.getvalue() == ""


@pytest.fixture(autouse=True)
def _restore_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def test_json_and_quiet_print_only_the_verdict(tmp_path, capsys):
    spec = make_project(tmp_path / "p")
    args = ["run", str(spec), "--until", "export", "--reports-dir", str(tmp_path / "r")]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    verdict = json.loads(captured.out)
    assert verdict["verdict"] == "PASS" and verdict["exit_code"] == 0 and verdict["failed_checks"] == []
    assert captured.err == ""
    assert main([*args, "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("VERDICT: PASS (exit 0)")


def test_log_lines_reach_the_user_without_ansi_escapes_or_truncation(tmp_path):
    long_message = "x" * 900
    assert clean("2026-01-01T00:00:00,000 [INFO ] W-9000 MODEL_LOG - \x1b[31mValueError: bad\x1b[0m") == \
        "ValueError: bad"
    (tmp_path / "model_log.log").write_text(
        "Traceback (most recent call last):\n  File \"/m/handler.py\", line 3, in handle\n    raise X\n"
        f"\x1b[1mRuntimeError: {long_message}\x1b[0m\n")
    lines = explain_failure(tmp_path)
    assert f"RuntimeError: {long_message}" in lines
    assert any(ln.startswith('at File "/m/handler.py", line 3') for ln in lines)


def test_stage_table_columns_never_run_together_however_many_rows():
    from pipeline.report.console import render_console

    stage = {"accuracy": 0.98, "precision_macro": 0.98, "recall_macro": 0.98, "f1_macro": 0.98,
             "answered": 100000, "rows": 100000, "latency": {"p50": 0.4, "p99": 0.7}}
    rep = {"verdict": "PASS", "exit_code": 0, "complete": True, "status": "passed", "run_dir": "r",
           "metrics": {n: dict(stage) for n in ("baseline", "exported", "handled@batch16", "served")}}
    lines = render_console(rep).splitlines()
    header = next(ln for ln in lines if ln.startswith("metric"))
    answered = next(ln for ln in lines if ln.startswith("rows answered"))
    assert header.split() == ["metric", "baseline", "exported", "handled@batch16", "served"]
    assert answered.split() == ["rows", "answered"] + ["100000/100000"] * 4
    assert len({len(ln) for ln in lines if ln.startswith(("metric", "accuracy", "rows answered", "latency"))}) == 1


def test_two_runs_of_one_process_in_one_second_get_two_run_folders(tmp_path, monkeypatch):
    """The flake of test_json_and_quiet_print_only_the_verdict: name-stamp-pid alone collides ("File exists")."""
    from datetime import datetime, timezone

    import pipeline.run.runner as runner

    class _Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    monkeypatch.setattr(runner, "datetime", _Frozen)
    dirs = [runner._make_run_dir(tmp_path / "r", "tiny") for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert [d.name for d in dirs] == sorted(d.name for d in dirs), "names sort in start order"
    assert dirs[0].name.startswith("tiny-20260102T030405Z-")


def _spin(seconds: float = 0.3) -> None:
    """Bytecode boundaries for a pending signal's handler to run at."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


def test_a_ctrl_c_taken_by_another_thread_waits_until_the_stop_is_done():
    """Why the stop swaps handlers: a main-thread signal mask does not hold a signal another thread takes."""
    import os
    import threading

    from pipeline.torchserve.process import signals_deferred

    stopped = []
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the handler a CLI has (the fixture restores)
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
            sender.start()
            sender.join()
            _spin()
            stopped.append(True)
    assert stopped == [True], "the stop ran to its end; the Ctrl-C came after it"


def test_once_the_run_stops_ctrl_c_only_logs_and_the_callers_handler_comes_back(caplog):
    from pathlib import Path

    from pipeline.run import runner
    from pipeline.run.options import RunOptions

    before = signal.getsignal(signal.SIGINT)
    run = runner._Run(RunOptions(spec_path=Path("unused.yaml")), None)
    with pytest.raises(KeyboardInterrupt), runner._guarded(run):  # a first Ctrl-C while the stages run
        signal.raise_signal(signal.SIGINT)
        _spin()
    try:
        with runner._guarded(run):
            runner._disarm()  # the run is stopping and writes its report: nothing may cut it short
            signal.raise_signal(signal.SIGINT)
            _spin()
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C after _disarm raised: it would cut the partial report short")
    assert signal.getsignal(signal.SIGINT) is before
    assert "still stopping" in caplog.text


def test_the_verdict_block_says_why_each_warning_and_counts_those_not_shown():
    from pipeline.report.console import MAX_WARNED_SHOWN, render_console

    warned = [{"stage": "served", "name": f"probe {k}", "value": 0.5, "baseline": None, "limit": "== 1",
               "detail": f"row r{k} answered in its stored frame", "passed": False, "is_gating": False}
              for k in range(MAX_WARNED_SHOWN + 2)]
    passed = {"stage": "served", "name": "accuracy", "value": 1.0, "baseline": 1.0, "limit": ">= 0.9",
              "detail": "", "passed": True, "is_gating": True}
    text = render_console({"verdict": "PASS", "exit_code": 0, "complete": True, "run_dir": "/r",
                           "gate": {"checks": [passed, *warned]}})
    lines = text.splitlines()
    assert lines[0] == f"VERDICT: PASS (exit 0)   1/{len(warned) + 1} checks passed, {len(warned)} warning(s)"
    assert "  WARN served: probe 0: value 0.5000, limit == 1 (row r0 answered in its stored frame)" in lines
    assert not any("probe 5" in ln for ln in lines)
    assert "  ... and 2 more warnings in the report" in lines
