"""Reading TorchServe's logs: why a worker died, what a handler raised, each request's server time."""

from __future__ import annotations

import errno
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt)\b:?")
_PREFIX = re.compile(r"^\S+ \[\w+ *\] \S+ \S+ - ")
_FRONTEND = re.compile(r"(ERROR|Address already in use|BindException|java not found|responseTimeout|"
                       r"Worker died|Backend worker)")
METRICS_WAIT_S = 3.0
TAIL_MAX_BYTES = 16 << 20
# What ``logcap`` saw in a run's logs while they streamed: the cut of each file, every distinct handler
# exception and worker recovery, also those whose lines were cut from the middle of the file.
CAPTURED_FILE = "logcap.json"
TRACEBACK_HEADER = "Traceback (most recent call last)"
TRACEBACK_MAX_LINES = 80


def clean(line: str) -> str:
    """A log line without ANSI escapes, TorchServe's timestamp prefix or trailing blanks."""
    return _PREFIX.sub("", ANSI.sub("", line)).rstrip()


def tail(path: Path, n: int = 400, max_bytes: int = TAIL_MAX_BYTES) -> list[str]:
    """The last ``n`` lines of a log, read from at most its last ``max_bytes`` and never from
    across a hole that ``logcap`` punched into it while it was written (those bytes read as zeros)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = _after_last_hole(f.fileno(), max(0, size - max_bytes), size)
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return []
    if start > 0:  # the first line read is cut at its start
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    return data.decode("utf-8", errors="replace").splitlines()[-n:]


def _after_last_hole(fd: int, start: int, end: int) -> int:
    """Where the last stretch of data of ``fd`` between ``start`` and ``end`` begins."""
    regions = data_regions(fd, start, end)
    return regions[-1][0] if regions else end


def data_regions(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The [from, to) byte ranges of ``fd`` between ``start`` and ``end`` that hold data, not holes."""
    out, pos = [], start
    while pos < end:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole from pos to the end
                break
            return [(start, end)]  # no SEEK_DATA on this file system: all of it is data
        if pos >= end:
            break
        out.append((pos, hole))
        pos = hole
    return out


def read_captured(log_dir: Path | None) -> dict:
    """What ``logcap`` recorded while the logs of ``log_dir`` streamed ({} if it did not run there)."""
    if log_dir is None:
        return {}
    try:
        data = json.loads((log_dir / CAPTURED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tracebacks(lines: list[str]) -> list[list[str]]:
    """Each traceback block in ``lines``: from its header to its exception line."""
    blocks = []
    for i, ln in enumerate(lines):
        if TRACEBACK_HEADER in ln:
            block = lines[i : i + TRACEBACK_MAX_LINES]
            stop = next((j for j, b in enumerate(block[1:], 1) if _ERROR_LINE.match(b.strip())), len(block) - 1)
            blocks.append(block[: stop + 1])
    return blocks


class TracebackCollector:
    """The distinct exceptions of a log read line by line, as ``handler_exceptions`` summarizes them.

    Bounded: at most ``limit`` distinct summaries are kept (the first ones), the rest only counted.
    """

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self.summaries: list[list[str]] = []
        self.more = 0
        self._seen: set[str] = set()
        self._block: list[str] | None = None

    @property
    def in_block(self) -> bool:
        return self._block is not None

    def feed(self, line: str) -> bool:
        """Read one raw log line; True when it completed a new distinct exception."""
        ln = clean(line)
        if TRACEBACK_HEADER in ln:
            done = self._finish() if self._block else False
            self._block = [ln]
            return done
        if self._block is None:
            return False
        self._block.append(ln)
        if _ERROR_LINE.match(ln.strip()) or len(self._block) >= TRACEBACK_MAX_LINES:
            return self._finish()
        return False

    def _finish(self) -> bool:
        block, self._block = self._block, None
        summary = _summarize(block)
        if summary[0] in self._seen:
            return False
        self._seen.add(summary[0])
        if len(self.summaries) < self.limit:
            self.summaries.append(summary)
        else:
            self.more += 1
        return True

    def close(self) -> bool:
        """End of the log: a block still open is kept as it stands."""
        return self._finish() if self._block else False


def _summarize(block: list[str]) -> list[str]:
    """The exception line of a traceback, then its innermost frames (file, line, code)."""
    out = [block[-1].strip()]
    frames = [i for i, ln in enumerate(block) if ln.strip().startswith("File ")]
    for i in frames[-3:][::-1]:
        code = block[i + 1].strip() if i + 1 < len(block) and not block[i + 1].strip().startswith("File ") else ""
        out.append(f"at {block[i].strip()}" + (f": {code}" if code else ""))
    return out


def explain_failure(log_dir: Path, focus: str | None = None) -> list[str]:
    """The log lines that explain a failure: lines matching ``focus`` first, then the worker's
    exception lines, the innermost frames of its first traceback, and the frontend's errors."""
    model_log = [clean(ln) for ln in tail(log_dir / "model_log.log")]
    lines = [ln.strip() for ln in model_log if _ERROR_LINE.match(ln.strip())]
    blocks = _tracebacks(model_log)
    if blocks:
        lines += _summarize(blocks[0])[1:]
    for src in (log_dir / "ts_log.log", log_dir / "torchserve.out"):
        for ln in tail(src, 3000):
            if _FRONTEND.search(ln):
                lines.append(clean(ln).strip())
    if focus:
        lines.sort(key=lambda ln: 0 if re.search(focus, ln) else 1)
    seen, out = set(), []
    for ln in lines:
        if ln and ln not in seen:
            seen.add(ln)
            out.append(ln)
    return out[:20]


def handler_exceptions(log_dir: Path, limit: int = 5) -> list[list[str]]:
    """The distinct exceptions handlers raised while serving (from ``model_log.log``), newest last.

    Each is the exception line followed by its innermost frames, quoted whole.
    """
    model_log = [clean(ln) for ln in tail(log_dir / "model_log.log", 4000)]
    seen, out = set(), []
    # Those seen while the log streamed come first (older): their lines may be cut from the file since.
    streamed = read_captured(log_dir).get("handler_exceptions", {}).get("model_log.log", [])
    for summary in streamed:
        if summary and summary[0] not in seen:
            seen.add(summary[0])
            out.append(list(summary))
    for block in _tracebacks(model_log):
        summary = _summarize(block)
        if summary[0] not in seen:
            seen.add(summary[0])
            out.append(summary)
    return out[-limit:]


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)')
_LIBRARY = re.compile(r"/(site-packages|dist-packages)/|/lib/python3[.\d]*/")


def _short(path: str) -> str:
    if "/site-packages/" in path:
        return path.rsplit("/site-packages/", 1)[1]
    return "/".join(path.split("/")[-2:]) if _LIBRARY.search(path) else path.rsplit("/", 1)[-1]


def quote_traceback(block: list[str]) -> str:
    """One logged traceback as a row's cause: "Type: message (at handler.py:12 in handle; raised in torch/...)".

    "at" is the innermost frame outside installed libraries and Python itself (the handler and
    model files TorchServe extracted), "raised in" the innermost frame when it lies elsewhere.
    """
    frames = [m for m in (_FRAME.search(ln) for ln in block) if m]
    own = [m for m in frames if not _LIBRARY.search(m["file"])]
    where = []
    if own:
        where.append(f"at {_short(own[-1]['file'])}:{own[-1]['line']} in {own[-1]['fn']}")
    if frames and (not own or frames[-1] is not own[-1]):
        inner = frames[-1]
        where.append(f"{'raised in' if own else 'at'} {_short(inner['file'])}:{inner['line']} in {inner['fn']}")
    msg = block[-1].strip()
    msg = msg[:400] + "..." if len(msg) > 400 else msg
    return msg + (f" ({'; '.join(where)})" if where else "")


def logged_causes(log_dir: Path | None, since: int = 0) -> list[str]:
    """Every handler exception model_log.log records after byte ``since``, quoted (``quote_traceback``), in order.

    TorchServe's worker logs each failed batch's traceback ("Invoking custom service failed.") but
    no request id with it, so the caller matches them to rows by their quotes, not by id.
    """
    if log_dir is None:
        return []
    try:
        with open(log_dir / "model_log.log", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = _after_last_hole(f.fileno(), min(since, size), size)
            f.seek(start)
            data = f.read(min(size - start, TAIL_MAX_BYTES))
    except OSError:
        return []
    lines = [clean(ln) for ln in data.decode("utf-8", errors="replace").splitlines()]
    return [quote_traceback(b) for b in _tracebacks(lines)]


def model_log_offset(log_dir: Path | None) -> int:
    """The current end of model_log.log, to read only the tracebacks logged after it."""
    try:
        return (log_dir / "model_log.log").stat().st_size if log_dir is not None else 0
    except OSError:
        return 0


RECOVERY = re.compile(rb"Auto recovery start timestamp: (\d+)")


def log_offset(log_dir: Path | None) -> int:
    """The current end of ts_log.log, to read only what is logged after it."""
    try:
        return (log_dir / "ts_log.log").stat().st_size if log_dir is not None else 0
    except OSError:
        return 0


def worker_recoveries(log_dir: Path | None, since: int = 0) -> int:
    """Worker restarts TorchServe logged after byte ``since`` of ts_log.log (each 'Auto recovery start' once)."""
    if log_dir is None:
        return 0
    # Those whose lines logcap cut from the file (it kept each one's offset); offsets hold while the
    # server runs: punched holes keep the file's size.
    found = {str(ts) for offset, ts in read_captured(log_dir).get("recoveries", []) if offset >= since}
    try:
        with open(log_dir / "ts_log.log", "rb") as f:
            for start, end in data_regions(f.fileno(), since, os.fstat(f.fileno()).st_size):
                f.seek(start)
                found |= {m.group(1).decode() for m in RECOVERY.finditer(f.read(end - start))}
    except OSError:
        pass
    return len(found)


_METRIC = re.compile(r" - (?P<name>\w+)\.(?P<unit>\w+):(?P<value>-?[0-9.]+(?:[eE][-+]?\d+)?)\|#(?P<dims>[^|]*)"
                     r"\|#(?P<host>.*)$")
_REQUEST_ID = re.compile(r"(?:^|,)requestID:(.*?),timestamp:")
# The metrics TorchServe 0.12's worker writes with the request ids of the batch they timed (ts/service.py
# PredictionTime around the handler's entry point, ts/torch_handler/base_handler.py HandlerTime around
# BaseHandler.handle; both only when the batch succeeded, every id of the batch comma-joined on one line).
REQUEST_METRICS = ("PredictionTime", "HandlerTime")
# The frontend's per-request metrics (RestJob.responseInference, answered requests only), in ts_metrics.log
# without any request id in 0.12; and WorkerThreadTime, one per batch the worker thread ran (WorkerThread).
FRONTEND_METRICS = {"ts_inference_latency_microseconds": ("frontend_ms", 1e-3),
                    "ts_queue_latency_microseconds": ("queue_ms", 1e-3),
                    "QueueTime": ("queue_gauge_ms", 1.0),
                    "WorkerThreadTime": ("worker_thread_ms", 1.0)}
FRONTEND_PER_REQUEST = "ts_inference_latency_microseconds"  # one line per answered request: counts them
FRONTEND_WAIT_S = 3.0


def parse_metric(line: str) -> tuple[str, float, tuple[str, ...]] | None:
    """One TorchServe metrics-log line as (name, value, request ids); None for any other line.

    The value is in the unit the line names (``PredictionTime.ms``, ``..._microseconds.Microseconds``);
    the ids are those of its ``requestID`` dimension (a batch's ids comma-joined), () without one.
    """
    m = _METRIC.search(line.rstrip())
    if not m:
        return None
    rid = _REQUEST_ID.search(m["host"])
    ids = tuple(x.strip() for x in rid.group(1).split(",") if x.strip()) if rid else ()
    return m["name"], float(m["value"]), ids


@dataclass(frozen=True)
class RequestTime:
    """What the worker logged for one request id: its batch's PredictionTime and HandlerTime (ms),
    and how many requests that batch held (each of them gets the batch's times)."""

    prediction_ms: float | None = None
    handler_ms: float | None = None
    batch: int = 1


def read_request_times(metrics_log: Path | None) -> dict[str, RequestTime]:
    """requestID -> PredictionTime, HandlerTime and batch size from TorchServe's model_metrics.log.

    A batch logs one line per metric for all its request ids; each id gets the batch's time.
    A handler that overrides ``handle`` (or is a function) logs no HandlerTime: ``handler_ms`` is None.
    """
    found: dict[str, dict] = {}
    if not metrics_log or not metrics_log.is_file():
        return {}
    for line in metrics_log.read_text(errors="replace").splitlines():
        if "requestID:" not in line:
            continue
        parsed = parse_metric(line)
        if parsed is None or parsed[0] not in REQUEST_METRICS:
            continue
        name, value, ids = parsed
        for rid in ids:
            entry = found.setdefault(rid, {"batch": len(ids)})
            entry["prediction_ms" if name == "PredictionTime" else "handler_ms"] = value
            entry["batch"] = len(ids)
    return {rid: RequestTime(**v) for rid, v in found.items()}


def read_server_times(metrics_log: Path | None) -> dict[str, float]:
    """requestID -> PredictionTime (ms) from TorchServe's model_metrics.log.

    A batch logs one PredictionTime for all its request ids; each id gets the batch's time.
    """
    return {rid: t.prediction_ms for rid, t in read_request_times(metrics_log).items() if t.prediction_ms is not None}


def await_request_times(metrics_log: Path | None, wanted: set[str]) -> dict[str, RequestTime]:
    """Request times once every answered request's PredictionTime is in the log: TorchServe writes it
    a moment after the response is sent (bounded wait)."""
    if metrics_log is None:
        return {}
    deadline = time.monotonic() + METRICS_WAIT_S
    times = read_request_times(metrics_log)

    def missing() -> bool:
        return any(times.get(r) is None or times[r].prediction_ms is None for r in wanted)

    while missing() and time.monotonic() < deadline:
        time.sleep(0.05)
        times = read_request_times(metrics_log)
    return times


def await_server_times(metrics_log: Path | None, wanted: set[str]) -> dict[str, float]:
    """Server times once every answered request's line is in the log: TorchServe writes a
    request's PredictionTime a moment after its response is sent (bounded wait)."""
    return {rid: t.prediction_ms for rid, t in await_request_times(metrics_log, wanted).items()
            if t.prediction_ms is not None}


def metrics_offset(frontend_log: Path | None) -> int:
    """The current end of ts_metrics.log, to read only the requests logged after it."""
    try:
        return frontend_log.stat().st_size if frontend_log is not None else 0
    except OSError:
        return 0


def read_frontend_times(frontend_log: Path | None, since: int = 0, skip: int = 0) -> dict[str, list[float]]:
    """The frontend's own figures (ms) for the answered requests logged in ts_metrics.log after byte ``since``,
    the first ``skip`` answered requests left out (the replay's warm-up).

    Keys: ``frontend_ms`` (ts_inference_latency_microseconds: from the request's arrival to its answer),
    ``queue_ms`` (ts_queue_latency_microseconds: arrival to the worker taking it), ``queue_gauge_ms``
    (QueueTime: the same in whole ms), each one value per answered request; ``worker_thread_ms``
    (WorkerThreadTime: the worker thread's own time per batch). None carries a request id in 0.12, so
    these are distributions, never joined to rows. Lines that ``logcap`` cut from the file are missing
    (the caller compares ``len(frontend_ms)`` with the requests answered).
    """
    out: dict[str, list[float]] = {key: [] for key, _ in FRONTEND_METRICS.values()}
    if frontend_log is None:
        return out
    seen = {name: 0 for name in FRONTEND_METRICS}
    try:
        with open(frontend_log, "rb") as f:
            for start, end in data_regions(f.fileno(), since, os.fstat(f.fileno()).st_size):
                f.seek(start)
                for raw in f.read(end - start).decode("utf-8", errors="replace").splitlines():
                    parsed = parse_metric(raw)
                    if parsed is None or parsed[0] not in FRONTEND_METRICS:
                        continue
                    name, value, _ = parsed
                    seen[name] += 1
                    key, scale = FRONTEND_METRICS[name]
                    # Per-request metrics: the k-th of each name is the k-th answered request's (one
                    # responseInference call logs the three together). WorkerThreadTime: once the replay's
                    # first request is logged (a batch's line follows its answers).
                    if name == "WorkerThreadTime":
                        if seen[FRONTEND_PER_REQUEST] > skip:
                            out[key].append(value * scale)
                    elif seen[name] > skip:
                        out[key].append(value * scale)
    except OSError:
        return out
    return out


def await_frontend_times(frontend_log: Path | None, since: int, skip: int, wanted: int) -> dict[str, list[float]]:
    """``read_frontend_times`` once ``wanted`` answered requests are logged: the frontend updates its metrics
    after sending the answer (bounded wait; fewer may come when logcap cut lines)."""
    deadline = time.monotonic() + FRONTEND_WAIT_S
    times = read_frontend_times(frontend_log, since, skip)
    while frontend_log is not None and len(times["frontend_ms"]) < wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        times = read_frontend_times(frontend_log, since, skip)
    return times
