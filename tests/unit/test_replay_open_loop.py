"""Open-loop replay measures from the scheduled send time, so a server stall is not hidden."""

import asyncio
import json
import threading

import numpy as np

from pipeline.dataset import Dataset
from pipeline.replay import ReplayConfig, replay_dataset


def _start_server(stall_s: float):
    """A loopback HTTP server in a thread: the first answer stalls, the rest are immediate."""
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
                body = json.dumps({"prediction": 0, "probabilities": [1.0, 0.0]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nx-request-id: r%d\r\n\r\n%s"
                             % (len(body), state["count"], body))
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


def _data(n: int) -> Dataset:
    return Dataset(path=None, ids=tuple(f"r{i}" for i in range(n)), labels=np.zeros(n, np.int64),
                   features=np.zeros((n, 2), np.float32), feature_columns=("a", "b"))


def _latencies(rate):
    holder, t = _start_server(0.3)
    try:
        cfg = ReplayConfig(url=f"http://127.0.0.1:{holder['port']}/predictions/m", token=None, num_classes=2,
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
