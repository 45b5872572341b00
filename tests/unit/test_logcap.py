"""Logs capped on disk while they are written, and still read whole: ``torchserve.logcap``.

A writer appends with O_APPEND, as log4j and the handler's child do, far beyond the cap; the
tests wait on what the follower has read (never a fixed sleep) and check the disk blocks the
file holds while it is written, that every line reached the parsers, and the compacted file.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.torchserve import logcap as logcap_module
from pipeline.torchserve.logcap import CAP_ENV, DEFAULT_CAP_BYTES, LogCap, cap_from_env, read_cuts
from pipeline.torchserve.logs import handler_exceptions, read_server_times, tail, worker_recoveries

CAP = 256 << 10
PREFIX = "2026-12-01T21:22:20,341 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - "
TRACEBACK = [
    "2026-12-01T21:22:20,341 [WARN ] W-9000-tiny_1.0-stderr MODEL_LOG - Traceback (most recent call last):",
    '2026-12-01T21:22:20,341 [WARN ] W-9000-tiny_1.0-stderr MODEL_LOG -   File "/m/handler.py", line 7, in handle',
    "2026-12-01T21:22:20,341 [WARN ] W-9000-tiny_1.0-stderr MODEL_LOG -     raise ValueError('early boom')",
    "2026-12-01T21:22:20,341 [WARN ] W-9000-tiny_1.0-stderr MODEL_LOG - ValueError: early boom",
]


def blocks(path: Path) -> int:
    return os.stat(path).st_blocks * 512


class Writer:
    """Appends lines with O_APPEND and, every ``pace`` bytes, waits until the follower has read them all."""

    def __init__(self, path: Path, cap: LogCap, pace: int = 64 << 10) -> None:
        self.path, self.cap, self.pace = path, cap, pace
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines = 0
        self.unpaced = 0
        self.peak_blocks = 0

    def write(self, *lines: str) -> None:
        data = "".join(ln + "\n" for ln in lines).encode()
        os.write(self.fd, data)
        self.lines += len(lines)
        self.unpaced += len(data)
        self.peak_blocks = max(self.peak_blocks, blocks(self.path))
        if self.unpaced >= self.pace:
            self.unpaced = 0
            self.caught_up()

    def caught_up(self) -> None:
        size = os.fstat(self.fd).st_size
        deadline = time.monotonic() + 20
        while self.cap.consumed(self.path.name) < size:
            assert time.monotonic() < deadline, "the follower did not read the log"
            time.sleep(0.002)

    def close(self) -> None:
        os.close(self.fd)


def filler(i: int) -> str:
    return f"{PREFIX}row {i} " + "x" * 900


@pytest.fixture
def logs(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    return d


def test_a_log_written_far_past_the_cap_stays_under_it_on_disk_and_every_line_is_read(logs):
    cap = LogCap(logs, cap_bytes=CAP, interval_s=0.002).start()
    w = Writer(logs / "model_log.log", cap)
    for i in range(9000):  # ~8 MiB: 32 times the cap
        w.write(filler(i))
    written = os.fstat(w.fd).st_size
    w.close()
    cap.close()
    # While it was written: the cap, plus one punching step, one pace of unread lines and a few blocks.
    assert w.peak_blocks <= CAP + cap.step + w.pace + 4 * 4096, w.peak_blocks
    text = (logs / "model_log.log").read_text()
    assert os.path.getsize(logs / "model_log.log") <= CAP and "\0" not in text
    lines = text.splitlines()
    assert lines[0] == filler(0) and lines[-1] == filler(8999), "head and tail kept whole"
    (cut,) = [ln for ln in lines if "cut here" in ln]
    kept = [ln for ln in lines if ln != cut]
    cut_lines = 9000 - len(kept)
    assert cut == (f"[package-validate: {written - len(text.encode()) + len(cut) + 1} bytes ({cut_lines} lines) cut "
                   f"here; logs are capped at 256 KiB per file per run (${CAP_ENV} sets it)]")
    i = lines.index(cut)
    assert lines[i - 1] == filler(i - 1) and lines[i + 1] == filler(i - 1 + cut_lines + 1), "no line is split"
    assert read_cuts(logs) == {"model_log.log": {"cut_bytes": written - len(text.encode()) + len(cut) + 1,
                                                 "cut_lines": cut_lines, "kept_bytes": len(text.encode()),
                                                 "cap_bytes": CAP}}
    from pipeline.torchserve.logs import read_captured

    assert read_captured(logs)["files"]["model_log.log"]["lines"] == w.lines == 9000, "every line was read"


def test_a_handler_exception_cut_from_the_middle_is_still_reported(logs):
    cap = LogCap(logs, cap_bytes=CAP, interval_s=0.002).start()
    w = Writer(logs / "model_log.log", cap)
    for i in range(2000):
        w.write(filler(i))
        if i == 500:  # after the kept head, long before the kept tail
            w.write(*TRACEBACK)
    w.caught_up()
    assert "early boom" not in "\n".join(tail(logs / "model_log.log", 4000)), "the fixture must cut it"
    while_running = handler_exceptions(logs)
    w.close()
    cap.close()
    assert "early boom" not in (logs / "model_log.log").read_text()
    expected = [["ValueError: early boom", "at File \"/m/handler.py\", line 7, in handle: raise ValueError('early boom')"]]
    assert while_running == expected and handler_exceptions(logs) == expected


def test_a_worker_recovery_cut_from_the_middle_is_still_counted_from_its_offset(logs):
    cap = LogCap(logs, cap_bytes=CAP, interval_s=0.002).start()
    w = Writer(logs / "ts_log.log", cap)
    for i in range(2000):
        w.write(filler(i))
        if i == 600:
            at = os.fstat(w.fd).st_size
            w.write("2026-12-01T21:22:23,658 [INFO ] W-9000-tiny_1.0 org.pytorch.serve.wlm.WorkerThread - "
                    "Auto recovery start timestamp: 1796160143658")
            after = os.fstat(w.fd).st_size
    w.caught_up()
    assert "Auto recovery" not in "\n".join(tail(logs / "ts_log.log", 4000)), "the fixture must cut it"
    assert worker_recoveries(logs, since=at) == 1 and worker_recoveries(logs, since=after) == 0
    w.close()
    cap.close()


def test_worker_recoveries_are_read_from_the_log_itself_where_nothing_was_cut(logs):
    line = "2026-12-01T21:22:23,658 [INFO ] W-9000-tiny_1.0 org.pytorch.serve.wlm.WorkerThread - " \
           "Auto recovery start timestamp: {}\n"
    (logs / "ts_log.log").write_text(line.format(1) + filler(0) + "\n" + line.format(2) + line.format(2))
    assert worker_recoveries(logs, since=0) == 2 and worker_recoveries(logs, since=len(line.format(1))) == 1


def test_model_metrics_is_never_cut_and_a_warning_says_it_outgrew_the_cap(logs, caplog):
    cap = LogCap(logs, cap_bytes=CAP, interval_s=0.002).start()
    w = Writer(logs / "model_metrics.log", cap)
    for i in range(3000):
        w.write(f"2026-12-01T21:22:20,502 - PredictionTime.ms:{i % 50}.5|#ModelName:tiny,Level:Model|#hostname:vm,"
                f"requestID:req-{i:05d},timestamp:1796160140")
    w.close()
    with caplog.at_level(logging.WARNING, logger="pipeline.torchserve.logcap"):
        cap.close()
    times = read_server_times(logs / "model_metrics.log")
    assert len(times) == 3000 and times["req-01234"] == 34.5
    assert os.path.getsize(logs / "model_metrics.log") > CAP and read_cuts(logs) == {}
    assert "model_metrics.log passed the log cap (256 KiB): it is kept whole" in caplog.text


def test_where_holes_cannot_be_punched_the_log_is_cut_when_its_writer_stops(logs, monkeypatch, caplog):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(logcap_module, "_punch", unsupported)
    cap = LogCap(logs, cap_bytes=CAP, interval_s=0.002)
    with caplog.at_level(logging.INFO, logger="pipeline.torchserve.logcap"):
        cap.start()
        w = Writer(logs / "handler.log", cap)
        for i in range(2000):
            w.write(filler(i))
        w.caught_up()
        assert blocks(logs / "handler.log") > 4 * CAP, "nothing is punched"
        w.close()
        cap.close()
    assert "cannot punch holes into the logs under" in caplog.text and "only when their writers stop" in caplog.text
    lines = (logs / "handler.log").read_text().splitlines()
    assert os.path.getsize(logs / "handler.log") <= CAP and lines[0] == filler(0) and lines[-1] == filler(1999)
    assert sum("cut here" in ln for ln in lines) == 1 and read_cuts(logs)["handler.log"]["cut_lines"] == 2000 - (
        len(lines) - 1)


def test_logs_under_the_cap_are_left_as_written(logs, caplog):
    cap = LogCap(logs, cap_bytes=CAP, interval_s=0.002).start()
    w = Writer(logs / "ts_log.log", cap)
    for i in range(100):
        w.write(filler(i))
    w.write("a last line without its end")  # the writer stopped mid-line
    os.ftruncate(w.fd, os.fstat(w.fd).st_size - 1)
    before = (logs / "ts_log.log").read_bytes()
    w.close()
    with caplog.at_level(logging.INFO, logger="pipeline.torchserve.logcap"):
        cap.close()
    assert not caplog.records, caplog.text
    assert (logs / "ts_log.log").read_bytes() == before and read_cuts(logs) == {}
    from pipeline.torchserve.logs import read_captured

    assert read_captured(logs)["files"]["ts_log.log"]["bytes"] == len(before), "the unfinished last line is read too"


def test_a_log_renamed_away_is_read_to_its_end_and_the_new_one_followed(logs):
    cap = LogCap(logs, cap_bytes=CAP, interval_s=0.002).start()
    w = Writer(logs / "model_log.log", cap)
    for i in range(400):
        w.write(filler(i))
    w.write(*TRACEBACK)
    w.close()
    os.rename(logs / "model_log.log", logs / "model_log.01-Dec.log")  # log4j's rollover: it gzips this one
    rolled = os.path.getsize(logs / "model_log.01-Dec.log")
    w2 = Writer(logs / "model_log.log", cap)
    for i in range(50):
        w2.write(filler(i))
    w2.caught_up()
    w2.close()
    cap.close()
    from pipeline.torchserve.logs import read_captured

    assert read_captured(logs)["files"]["model_log.log"]["lines"] == 454
    assert set(read_captured(logs)["files"]) == {"model_log.log"}, "the rolled-over file is not followed"
    assert os.path.getsize(logs / "model_log.01-Dec.log") == rolled, "nor rewritten (log4j gzips it)"
    assert handler_exceptions(logs)[0][0] == "ValueError: early boom"


def test_tail_reads_the_end_only_and_never_across_a_punched_hole(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i} {'y' * 100}\n" for i in range(20000)))
    fd = os.open(path, os.O_RDWR)
    logcap_module._punch(fd, 4096, 1 << 20)
    os.close(fd)
    assert tail(path, 3) == [f"line {i} {'y' * 100}" for i in (19997, 19998, 19999)]
    whole = tail(path, 100000)
    first = int(whole[0].split()[1])
    assert 9000 < first < 10000 and whole == [f"line {i} {'y' * 100}" for i in range(first, 20000)], \
        "whole lines from the hole's end on, no zeros"
    few = tail(path, 100000, max_bytes=1100)  # 9.8 lines of 112 bytes: the 9 whole ones
    assert [ln.split()[1] for ln in few] == [str(i) for i in range(19991, 20000)]


@pytest.mark.parametrize("value, expected", [(None, DEFAULT_CAP_BYTES), ("", DEFAULT_CAP_BYTES), ("16M", 16 << 20),
                                             ("512k", 512 << 10), ("1G", 1 << 30), ("2MiB", 2 << 20),
                                             ("65536", 65536)])
def test_the_cap_comes_from_the_environment(value, expected):
    assert cap_from_env({} if value is None else {CAP_ENV: value}) == expected


@pytest.mark.parametrize("value, why", [("lots", "is not a size"), ("1k", "under the least cap"),
                                        ("-5M", "is not a size")])
def test_a_bad_cap_is_a_config_error_naming_the_setting(value, why):
    with pytest.raises(ConfigError, match=rf"\${CAP_ENV}=.*{why}") as e:
        cap_from_env({CAP_ENV: value})
    assert e.value.exit_code == 2
