"""TorchServe's and the handler's logs, capped on disk per run and still read whole as they stream.

A handler that prints a lot fills the run folder: TorchServe writes every line a worker prints
three times (``model_log.log``, and through log4j's root logger ``ts_log.log`` and
``torchserve.out``), so a handler printing 256 KB a request grew one run folder to 232 MB for
171 rows. ``LogCap`` follows a folder's logs while their writers run: one thread reads each
file's new lines from its offset, hands them to the parsers that need every line (the distinct
handler exceptions of ``model_log.log``, the worker recoveries of ``ts_log.log``, the line
counts), and keeps each file's disk use under the cap by punching the lines already read out
of its middle (``fallocate(PUNCH_HOLE | KEEP_SIZE)``). The writers append with ``O_APPEND``,
so they go on writing at the end, and the file's size and every offset stay as they were.
Once the writers have stopped, ``close`` rewrites each cut file as its head, one line that
states the cut, and its tail; what the parsers saw is kept in ``logcap.json`` next to the logs
(``logs.read_captured``), so ``handler_exceptions`` and ``worker_recoveries`` still count what
was cut. Where holes cannot be punched, files are cut only at ``close`` (disk use grows until then).

``model_metrics.log`` is never cut: the replay joins every request's PredictionTime from it
(one short line a request); it is followed, and a warning says when it outgrows the cap.
Files log4j rolls over (at 100 MB written, into ``*.log.gz``) are read to their end, not rewritten.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline.errors import ConfigError
from pipeline.torchserve.logs import CAPTURED_FILE, RECOVERY, TRACEBACK_HEADER, TracebackCollector
from pipeline.torchserve.process import signals_deferred

log = logging.getLogger(__name__)

CAP_ENV = "PACKAGE_VALIDATE_LOG_CAP"
DEFAULT_CAP_BYTES = 16 << 20
MIN_CAP_BYTES = 64 << 10
UNCAPPED = frozenset({"model_metrics.log"})
POLL_INTERVAL_S = 0.1
READ_CHUNK = 4 << 20
MAX_LINE = 1 << 20  # a longer line is read in pieces: the reader never holds more of one line than this
MAX_RECOVERIES = 1000
_MARKER_ROOM = 256  # the cut line is shorter
_BLOCK = 4096  # holes are punched in whole blocks: a partial one would be zeroed, not freed
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_FOLLOWED = re.compile(r"^[\w-]+\.(log|out)$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)


def cap_from_env(environ: dict[str, str] | None = None) -> int:
    """The per-file cap in bytes: ``$PACKAGE_VALIDATE_LOG_CAP`` (``16M``, ``512k``, ``1G`` or bytes), else 16 MiB.

    Raises:
        ConfigError: the value is not a size, or is under 64 KiB.
    """
    raw = (environ if environ is not None else os.environ).get(CAP_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_CAP_BYTES
    m = _SIZE.match(raw)
    if not m:
        raise ConfigError(f"${CAP_ENV}={raw!r} is not a size. Give bytes or a number with k, M or G "
                          f"(binary units), e.g. {CAP_ENV}=64M; unset, logs are capped at 16 MiB per file per run.")
    value = int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
    if value < MIN_CAP_BYTES:
        raise ConfigError(f"${CAP_ENV}={raw!r} is {value} bytes, under the least cap of {MIN_CAP_BYTES} bytes "
                          "(64k): a log cut that short keeps no useful head or tail. Raise it.")
    return value


def human_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def cut_line(cut_bytes: int, cut_lines: int | None, cap: int) -> bytes:
    """The line a compacted log carries where its middle was cut."""
    lines = f" ({cut_lines} lines)" if cut_lines is not None else ""
    return (f"[package-validate: {cut_bytes} bytes{lines} cut here; logs are capped at "
            f"{human_size(cap)} per file per run (${CAP_ENV} sets it)]\n").encode()


_libc = None


def _punch(fd: int, offset: int, length: int) -> None:
    """Free [offset, offset + length) of ``fd``; the file keeps its size (the range reads as zeros)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class _Followed:
    """One generation (inode) of one log file, read from ``offset`` on."""

    name: str
    fd: int
    inode: int
    capped: bool
    offset: int = 0  # bytes read: always the end of a line, or of a MAX_LINE piece
    lines: int = 0  # newlines read
    head_end: int | None = None  # the kept head ends here, at a line's end
    head_lines: int = 0
    punched_to: int = 0  # [align_up(head_end), punched_to) is a hole
    traceback: TracebackCollector | None = None
    warned: bool = False
    rolled: bool = False  # renamed away: no longer punched or compacted


def _holes_from(f: _Followed) -> int:
    """Where the hole of ``f`` begins: the first whole block after its kept head."""
    return -(-f.head_end // _BLOCK) * _BLOCK


@dataclass
class _Totals:
    """Per file name, over all its generations."""

    bytes: int = 0
    lines: int = 0
    cut_bytes: int = 0
    cut_lines: int | None = 0  # None: bytes were cut from a rolled-over generation, lines not counted
    kept_bytes: int = 0


class LogCap:
    """Follows the logs of ``folder`` while their writers run; caps each on disk; ``close`` compacts them.

    Args:
        folder: the folder of the logs (created by the writers; may not exist yet).
        names: the files to follow; None: every ``*.log`` and ``*.out`` that appears in ``folder``.
        cap_bytes: the most disk each file may use; None: ``cap_from_env()``.

    Raises:
        ConfigError: ``$PACKAGE_VALIDATE_LOG_CAP`` is not a valid size.
    """

    def __init__(self, folder: Path, names: Iterable[str] | None = None, cap_bytes: int | None = None,
                 interval_s: float = POLL_INTERVAL_S) -> None:
        self.folder = Path(folder)
        self.names = frozenset(names) if names is not None else None
        self.cap = cap_bytes if cap_bytes is not None else cap_from_env()
        self.head_bytes = self.cap // 4
        self.step = max(_BLOCK, min(1 << 20, self.cap // 8))  # punch in steps: fewer system calls
        self.interval_s = interval_s
        self.can_punch = True
        self._files: dict[str, _Followed] = {}
        self._totals: dict[str, _Totals] = {}
        self._recoveries: list[tuple[int, str]] = []
        self._exceptions: dict[str, list[list[str]]] = {}
        self._dirty = self._stale = False
        self._written_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: str | None = None

    def start(self) -> "LogCap":
        self._thread = threading.Thread(target=self._run, name=f"logcap {self.folder.name}", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "LogCap":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def consumed(self, name: str) -> int:
        """Bytes of ``name``'s current generation read so far."""
        with self._lock:
            f = self._files.get(name)
            return f.offset if f is not None else 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    busy = self._poll(final=False)
            except Exception as e:  # the cap must never break a run: the logs only stop being cut
                self._failed = f"{type(e).__name__}: {e}"
                log.warning("logs under %s are no longer capped: following them failed: %s", self.folder, e)
                return
            if not busy:
                self._stop.wait(self.interval_s)

    def close(self) -> None:
        """Once the writers stopped: read every file to its end, cut each over the cap to head,
        cut line and tail, and write ``logcap.json``. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with signals_deferred(), self._lock:  # a file half rewritten would lose its tail
            if self._failed is None:
                try:
                    self._poll(final=True)
                except OSError as e:
                    log.warning("could not read the logs under %s to their end: %s", self.folder, e)
            for f in list(self._files.values()):
                try:
                    if f.capped:
                        self._compact(f)
                except OSError as e:
                    log.warning("could not cut %s to the log cap: %s", self.folder / f.name, e)
                finally:
                    self._finish(f)
            self._files.clear()
            self._write_captured(force=True)

    # -- following -------------------------------------------------------------------------------

    def _candidates(self) -> list[str]:
        if self.names is not None:
            return sorted(self.names)
        try:
            # Not the files log4j rolls over into (model_log.01-Dec.log, then .gz): it compresses them.
            listed = {n for n in os.listdir(self.folder) if _FOLLOWED.match(n)}
        except OSError:
            listed = set()
        return sorted(listed | set(self._files))  # a followed file gone from the folder is read to its end

    def _poll(self, final: bool) -> bool:
        busy = False
        for name in self._candidates():
            path = self.folder / name
            try:
                inode = os.stat(path).st_ino
            except OSError:
                inode = None
            f = self._files.get(name)
            if f is not None and f.inode != inode:  # renamed away (log4j's rollover, a retried start)
                f.rolled = True  # read to its end, left as it is: log4j may be compressing it
                self._drain(f, final=True)
                self._finish(f, detached=True)
                f = None
            if f is None and inode is not None:
                f = self._open(name, path)
            if f is not None:
                busy |= self._drain(f, final)
        self._write_captured()
        return busy

    def _drain(self, f: _Followed, final: bool) -> bool:
        """Read and punch in turns until caught up (at most 16 chunks a poll while the writers run)."""
        for _ in range(1 << 30 if final else 16):
            more = self._read(f, final)
            if f.capped and self.can_punch and not f.rolled:
                self._punch_consumed(f)
            if not more:
                return False
        return True

    def _open(self, name: str, path: Path) -> _Followed | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        f = _Followed(name=name, fd=fd, inode=os.fstat(fd).st_ino, capped=name not in UNCAPPED,
                      traceback=TracebackCollector() if name == "model_log.log" else None)
        self._files[name] = f
        self._totals.setdefault(name, _Totals())
        return f

    def _read(self, f: _Followed, final: bool) -> bool:
        """Read what was appended since the last call; True if a full chunk was read (more may wait)."""
        size = os.fstat(f.fd).st_size
        if f.offset >= size:
            return False
        start = f.offset
        data = os.pread(f.fd, min(READ_CHUNK, size - start), start)
        if not final:
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) < MAX_LINE:
                return False  # half a line: wait for its end
            data = data[:end] if end else data
        self._consume(f, start, data)
        return f.offset < size and (final or len(data) >= READ_CHUNK // 2)

    def _consume(self, f: _Followed, start: int, data: bytes) -> None:
        nl = data.count(b"\n")
        if f.capped and f.head_end is None and start + len(data) > self.head_bytes:
            at = max(0, self.head_bytes - start)
            cut = data.find(b"\n", at, at + self.cap // 8)  # else the head ends mid-line
            f.head_end = start + (cut + 1 if cut >= 0 else at)
            f.head_lines = f.lines + data.count(b"\n", 0, f.head_end - start)
        if f.traceback is not None:
            self._exceptions_in(f, data)
        if f.name == "ts_log.log":
            for m in RECOVERY.finditer(data):
                if len(self._recoveries) < MAX_RECOVERIES:
                    self._recoveries.append((start + m.start(), m.group(1).decode()))
                    self._dirty = True
        f.lines += nl
        f.offset = start + len(data)
        t = self._totals[f.name]
        t.bytes += len(data)
        t.lines += nl
        if not f.capped and not f.warned and f.offset > self.cap:
            f.warned = True
            log.warning("%s passed the log cap (%s): it is kept whole, since the replay joins every request's "
                        "PredictionTime from it", self.folder / f.name, human_size(self.cap))

    def _exceptions_in(self, f: _Followed, data: bytes) -> None:
        header = TRACEBACK_HEADER.encode()
        if f.traceback.in_block:
            first = 0
        else:
            at = data.find(header)
            if at < 0:
                return
            first = data.rfind(b"\n", 0, at) + 1
        for raw in data[first:].split(b"\n"):
            if not f.traceback.in_block and header not in raw:
                continue
            if f.traceback.feed(raw.decode("utf-8", errors="replace")):
                self._exceptions[f.name] = list(f.traceback.summaries)
                self._dirty = True

    def _tail_room(self, f: _Followed) -> int:
        """The tail a cut keeps: head, cut line and tail within the cap."""
        return self.cap - f.head_end - _MARKER_ROOM

    def _punch_consumed(self, f: _Followed) -> None:
        if f.head_end is None:
            return
        start = max(f.punched_to, _holes_from(f))
        end = (f.offset - self._tail_room(f)) // _BLOCK * _BLOCK
        if end - start < self.step:
            return
        try:
            _punch(f.fd, start, end - start)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY):
                raise
            self.can_punch = False
            log.info("cannot punch holes into the logs under %s (%s): they are cut to %s per file only when "
                     "their writers stop, and use more disk until then", self.folder, e.strerror, human_size(self.cap))
            return
        f.punched_to = end
        self._stale = True  # written at most once a second: only the bytes punched changed

    # -- cutting ---------------------------------------------------------------------------------

    def _compact(self, f: _Followed) -> None:
        """Rewrite a file over the cap, in place, as its head, the cut line and its tail."""
        size = os.fstat(f.fd).st_size
        if f.head_end is None or size <= self.cap:
            return
        tail_from = size - self._tail_room(f)  # never inside a hole: punching left this much
        tail = os.pread(f.fd, size - tail_from, tail_from)
        nl = tail.find(b"\n", 0, MAX_LINE)
        if nl >= 0:  # the tail starts with a whole line
            tail, tail_from = tail[nl + 1:], tail_from + nl + 1
        cut_bytes = tail_from - f.head_end
        # Lines are counted only if every one was read (not after following failed).
        cut_lines = f.lines - f.head_lines - tail.count(b"\n") if self._failed is None else None
        head_ends_line = f.head_end == 0 or os.pread(f.fd, 1, f.head_end - 1) == b"\n"
        marker = (b"" if head_ends_line else b"\n") + cut_line(cut_bytes, cut_lines, self.cap)
        os.pwrite(f.fd, marker + tail, f.head_end)
        os.ftruncate(f.fd, f.head_end + len(marker) + len(tail))
        t = self._totals[f.name]
        t.cut_bytes += cut_bytes
        t.cut_lines = t.cut_lines + cut_lines if t.cut_lines is not None and cut_lines is not None else None

    def _finish(self, f: _Followed, detached: bool = False) -> None:
        if f.traceback is not None and f.traceback.close():
            self._exceptions[f.name] = list(f.traceback.summaries)
            self._dirty = True
        if detached and f.punched_to:
            t = self._totals[f.name]
            t.cut_bytes += f.punched_to - _holes_from(f)
            t.cut_lines = None
        try:
            if not detached:
                self._totals[f.name].kept_bytes = os.fstat(f.fd).st_size
            os.close(f.fd)
        except OSError:
            pass
        if detached:
            del self._files[f.name]

    def summary(self) -> dict:
        """What ``logcap.json`` holds: the cap, each file's bytes, lines and cut, the streamed parsers' findings."""
        files = {}
        for name, t in sorted(self._totals.items()):
            f = self._files.get(name)
            files[name] = {"bytes": t.bytes, "lines": t.lines, "cut_bytes": t.cut_bytes, "cut_lines": t.cut_lines,
                           "kept_bytes": t.kept_bytes or (f.offset if f else None),
                           "punched_bytes": (f.punched_to - _holes_from(f))
                           if f is not None and f.punched_to else 0,
                           "capped": name not in UNCAPPED}
        return {"cap_bytes": self.cap, "punches_holes": self.can_punch, "failed": self._failed, "files": files,
                "handler_exceptions": self._exceptions, "recoveries": [list(r) for r in self._recoveries]}

    def _write_captured(self, force: bool = False) -> None:
        # A new exception or recovery is written at once: its lines may be punched out soon after.
        due = self._dirty or (self._stale and time.monotonic() - self._written_at >= 1.0)
        if not (due or force) or not self.folder.is_dir():
            return
        self._dirty = self._stale = False
        self._written_at = time.monotonic()
        path = self.folder / CAPTURED_FILE
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.summary(), indent=1))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not write %s: %s", path, e)


def read_cuts(folder: Path | None) -> dict[str, dict]:
    """The files of ``folder`` that ``LogCap`` cut: name -> bytes and lines cut, bytes kept, the cap."""
    from pipeline.torchserve.logs import read_captured

    data = read_captured(folder)
    cap = data.get("cap_bytes")
    return {name: {"cut_bytes": f["cut_bytes"], "cut_lines": f["cut_lines"], "kept_bytes": f["kept_bytes"],
                   "cap_bytes": cap}
            for name, f in (data.get("files") or {}).items() if f.get("cut_bytes")}
