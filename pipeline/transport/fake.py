"""An in-memory transport for replay tests: ``transport.http.Connection``'s interface, answered by a script.

A *script* is a callable from the exact request bytes to one *step*:

    Response                     the answer
    an exception instance        raised from ``request``: HttpConnectionError, HttpProtocolError,
                                 asyncio.TimeoutError (what the real client raises)
    Delay(seconds, then)         wait, then take the step ``then``; a delay longer than the
                                 request's ``timeout_s`` raises asyncio.TimeoutError after
                                 ``timeout_s``, as the real client does
    Until(ready, then)           yield to the event loop until ``ready()`` is true, then take
                                 ``then`` (past ``timeout_s``: asyncio.TimeoutError); how
                                 ``LastFirst`` makes later requests complete first

``FakeTransport(script)`` is a ``ReplayConfig.connect`` function: every connection it opens
answers from the same script and records what it was sent, so a test can inject faults
without a socket::

    transport = FakeTransport(lambda raw: answer(200, b'{"prediction": 0, ...}'))
    replay_dataset(replace(cfg, connect=transport), rows)
"""

from __future__ import annotations

import asyncio
import time
from asyncio import sleep as _sleep  # bound at import: a test may patch asyncio.sleep to watch back-off
from dataclasses import dataclass
from typing import Callable, Iterable, Union

from pipeline.transport.http import Response, Target


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` before taking the step ``then``."""

    seconds: float
    then: "Step"


@dataclass(frozen=True)
class Until:
    """Yield to the event loop until ``ready()`` is true, then take the step ``then``."""

    ready: Callable[[], bool]
    then: "Step"


Step = Union[Response, BaseException, Delay, Until]
Script = Callable[[bytes], Step]


def answer(status: int, body: bytes | str, request_id: str | None = None,
           headers: dict[str, str] | None = None) -> Response:
    """A Response as the real client returns it (lower-case header names)."""
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if request_id is not None:
        hdrs["x-request-id"] = request_id
    return Response(status, hdrs, body.encode() if isinstance(body, str) else body)


def request_body(raw: bytes) -> bytes:
    """The body of a request built by ``transport.http.build_request``."""
    return raw.split(b"\r\n\r\n", 1)[1]


def in_order(steps: Iterable[Step], then: Step | None = None) -> Script:
    """A script that takes ``steps`` one per request, then ``then`` for every later request.

    Raises:
        AssertionError: from ``request``, when the steps run out and no ``then`` is given.
    """
    pending = list(steps)

    def script(raw: bytes) -> Step:
        if pending:
            return pending.pop(0)
        assert then is not None, "the script ran out of steps: the replay sent more requests than expected"
        return then

    return script


class LastFirst:
    """A script whose answers complete out of arrival order, without any clock.

    Requests are numbered as they arrive (warm-up requests included) and taken in groups of
    ``group``; each waits until every later request of its group has been answered, so a
    group completes last-first: with ``group=2``, arrivals 0 1 2 3 complete 1 0 3 2. The last
    group is as large as ``total`` leaves it, so nothing waits for a request that never comes.
    ``group`` must not exceed the number of connections sending at once (``concurrency``),
    or a group can never be in flight together. ``completed`` lists the arrival numbers in
    the order their answers were returned; each answer is ``script(raw)``.
    """

    def __init__(self, script: Script, group: int, total: int) -> None:
        assert group >= 1 and total >= 0, f"group {group} must be >= 1 and total {total} >= 0"
        self.script = script
        self.group = group
        self.total = total
        self.arrived = 0
        self.completed: list[int] = []

    def __call__(self, raw: bytes) -> Step:
        k = self.arrived
        self.arrived += 1
        start = k - k % self.group
        later = range(k + 1, min(start + self.group, self.total))
        done = set()

        def ready() -> bool:
            done.update(j for j in later if j in self.completed)
            if len(done) < len(later):
                return False
            self.completed.append(k)
            return True

        return Until(ready, self.script(raw))


class FakeConnection:
    """One connection: each request is answered by the script; requests and closes are recorded."""

    def __init__(self, target: Target, script: Script, sent: list[tuple[float, bytes]] | None = None) -> None:
        self.target = target
        self.script = script
        self.sent = sent if sent is not None else []  # (time.perf_counter(), raw) per request
        self.closed = 0

    async def request(self, raw: bytes, timeout_s: float) -> Response:
        """The script's answer to ``raw``.

        Raises:
            HttpConnectionError, HttpProtocolError, asyncio.TimeoutError: when the script says so,
                or TimeoutError when its delays add up to more than ``timeout_s``.
        """
        self.sent.append((time.perf_counter(), raw))
        step = self.script(raw)
        waited = 0.0
        while isinstance(step, (Delay, Until)):
            if isinstance(step, Until):
                t0 = time.monotonic()
                while not step.ready():
                    if waited + (time.monotonic() - t0) > timeout_s:
                        raise asyncio.TimeoutError()
                    await _sleep(0)
                waited += time.monotonic() - t0
                step = step.then
                continue
            if waited + step.seconds > timeout_s:
                await _sleep(max(timeout_s - waited, 0.0))
                raise asyncio.TimeoutError()
            await _sleep(step.seconds)
            waited += step.seconds
            step = step.then
        if isinstance(step, BaseException):
            raise step
        return step

    def close(self) -> None:
        self.closed += 1


class FakeTransport:
    """A ``ReplayConfig.connect`` function: connections answered by one script, sharing one request log."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[FakeConnection] = []
        self.sent: list[tuple[float, bytes]] = []

    def __call__(self, target: Target) -> FakeConnection:
        conn = FakeConnection(target, self.script, self.sent)
        self.connections.append(conn)
        return conn

    @property
    def requests(self) -> list[bytes]:
        return [raw for _, raw in self.sent]
