"""Open-loop replay measures from the scheduled send time, so a server stall is not hidden."""

import asyncio
import json
import threading

import numpy as np

from pipeline.stages.replay import ReplayConfig, replay_dataset
from tests.helpers import codec_for_tests, tensor_rows


def _start_server(stall_s: float, script: list[tuple[int, bytes] | None] | None = None):
    """A loopback HTTP server in a thread: the first answer stalls, the rest are immediate;
    ``script`` replaces the first answers with (status, body)."""
    ready = threading.Event()
    state = {"count": 0}

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
                await reader.readexactly(length)
                state["count"] += 1
                if state["count"] == 1:
                    await asyncio.sleep(stall_s)
                status, body = 200, json.dumps({"prediction": 0, "probabilities": [1.0, 0.0]}).encode()
                if script and state["count"] <= len(script) and script[state["count"] - 1]:
                    status, body = script[state["count"] - 1]
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nx-request-id: r%d\r\n\r\n%s"
                             % (status, len(body), state["count"], body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    holder = {}

    def run():
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        holder.update(loop=loop, server=server, port=server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(5)
    return holder, t


def _data(n: int):
    return tensor_rows(n)


def _latencies(rate):
    holder, t = _start_server(0.3)
    try:
        cfg = ReplayConfig(url=f"http://127.0.0.1:{holder['port']}/predictions/m", token=None, codec=codec_for_tests(2),
                           concurrency=1, warmup_requests=0, rate=rate)
        res = replay_dataset(cfg, _data(20))
    finally:
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        t.join(5)
    assert res.answered == 20 and res.is_complete
    return [r.latency_ms for r in res.rows]


def test_open_loop_charges_the_stall_to_the_requests_queued_behind_it():
    closed = _latencies(rate=None)
    opened = _latencies(rate=100.0)
    assert closed[0] >= 290 and opened[0] >= 290
    # Closed loop: the second request is sent after the stall and looks fast.
    assert closed[1] < 100
    # Open loop: it was due 10 ms after the first, so it waited ~290 ms for its turn.
    assert opened[1] >= 250
    assert np.median(opened) > np.median(closed)


def test_queue_full_is_retried_and_handler_errors_are_not():
    no_worker = b'{"code": 503, "message": "Model \\"m\\" has no worker to serve inference request."}'
    failed = b'{"code": 503, "type": "InternalServerException", "message": "Prediction failed"}'
    holder, t = _start_server(0.0, script=[(503, no_worker), (503, no_worker), None, (503, failed)])
    try:
        cfg = ReplayConfig(url=f"http://127.0.0.1:{holder['port']}/predictions/m", token=None, codec=codec_for_tests(2),
                           concurrency=1, warmup_requests=0, max_retries=5)
        res = replay_dataset(cfg, _data(3))
    finally:
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        t.join(5)
    first, second, third = res.rows
    assert first.is_ok and first.attempts == 3, "two 'no worker' answers retried, then answered"
    assert not second.is_ok and second.error_class == "handler_error" and second.attempts == 1
    assert second.message == "Prediction failed" and third.is_ok
