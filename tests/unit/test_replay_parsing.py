import asyncio

import pytest

from pipeline.transport.http import Connection, HttpConnectionError, Target, build_request
from pipeline.answers.base import AnswerError
from pipeline.torchserve.errors import classify_status
from pipeline.torchserve.logs import await_server_times, read_server_times
from tests.helpers import codec_for_tests


@pytest.mark.parametrize("status, body, cls", [
    (503, '{"code":503,"type":"InternalServerException","message":"Prediction failed"}', "handler_error"),
    (503, '{"message":"number of batch response mismatched"}', "batch_mismatch"),
    (503, '{"message":"Model \\"m\\" has no worker to serve inference request."}', "queue_full"),
    (500, '{"message":"Worker died."}', "worker_died"),
    (400, '{"message":"expected 4 features"}', "bad_input"),
    (401, "Token Authorization failed", "unauthorized"),
    (400, '{"code": 400, "message": "Token Authorization failed. Token either incorrect, expired"}', "unauthorized"),
    (404, '{"message":"Model not found: m"}', "not_found"),
    (502, "<html>bad gateway</html>", "http_error"),
])
def test_classify_status(status, body, cls):
    assert classify_status(status, body)[0] == cls


def test_project_answer_checks_shape_and_range():
    codec = codec_for_tests(2)
    pred = codec.decode(b'{"prediction": 1, "probabilities": [0.2, 0.8], "logits": [0, 1]}')
    assert pred.index == 1 and pred.probabilities.tolist() == [0.2, 0.8] and pred.logits.tolist() == [0.0, 1.0]
    with pytest.raises(AnswerError, match="class index"):
        codec.decode(b'{"prediction": 5, "probabilities": [0.2, 0.8]}')
    with pytest.raises(AnswerError, match="hold 2 numbers"):
        codec.decode(b'{"prediction": 1, "probabilities": [1.0]}')
    with pytest.raises(AnswerError, match="not JSON"):
        codec.decode(b"not json")


def test_read_server_times_single_and_batched(tmp_path):
    log = tmp_path / "model_metrics.log"
    log.write_text(
        "2026-11-22T11:00:35,141 - PredictionTime.ms:1.5|#ModelName:m,Level:Model|#hostname:vm,requestID:a-1,timestamp:1\n"
        "2026-11-22T11:00:35,141 - PredictionTime.ms:2.25|#ModelName:m,Level:Model|#hostname:vm,requestID:b-1,b-2,timestamp:1\n"
        "2026-11-22T11:00:35,161 - WorkerThreadTime.Milliseconds:3.0|#Level:Host|#hostname:vm,timestamp:1\n")
    assert read_server_times(log) == {"a-1": 1.5, "b-1": 2.25, "b-2": 2.25}


async def _serve_once(responses: list[bytes]):
    async def handle(reader, writer):
        for resp in responses:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(resp)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_http_client_content_length_and_chunked_on_one_connection():
    async def main():
        server, port = await _serve_once([
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-request-id: r1\r\n\r\nhello",
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        ])
        target = Target.from_url(f"http://127.0.0.1:{port}/predictions/m")
        conn = Connection(target)
        raw = build_request(target, b"{}", {"Content-Type": "application/json"})
        r1 = await conn.request(raw, 5)
        r2 = await conn.request(raw, 5)
        conn.close()
        server.close()
        await server.wait_closed()
        return r1, r2

    r1, r2 = asyncio.run(main())
    assert (r1.status, r1.body, r1.headers["x-request-id"]) == (200, b"hello", "r1")
    assert (r2.status, r2.body) == (503, b"abcde")


def test_http_client_refused_connection():
    async def main():
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        conn = Connection(Target.from_url(f"http://127.0.0.1:{port}/x"))
        await conn.request(b"GET / HTTP/1.1\r\n\r\n", 2)

    with pytest.raises(HttpConnectionError, match="cannot connect"):
        asyncio.run(main())


def test_http_client_times_out_a_silent_server_and_reconnects():
    async def main():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(5)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        target = Target.from_url(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x")
        conn = Connection(target)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await conn.request(build_request(target, b"{}", {}), 0.3)
        elapsed = loop.time() - t0
        assert conn._proto is None, "a timed-out connection is closed, never reused"
        server.close()
        return elapsed

    elapsed = asyncio.run(main())
    assert 0.25 <= elapsed < 4.5  # the 0.3 s timeout, not the server's 5 s silence, on a busy machine


def test_server_times_wait_for_lines_written_after_the_answer(tmp_path):
    import threading
    import time

    log = tmp_path / "model_metrics.log"
    line = "x - PredictionTime.ms:{}|#ModelName:m,Level:Model|#hostname:vm,requestID:{},timestamp:1\n"
    log.write_text(line.format(1.0, "a"))

    def late():
        time.sleep(0.3)
        with open(log, "a") as f:
            f.write(line.format(2.0, "b"))

    threading.Thread(target=late).start()
    assert await_server_times(log, {"a", "b"}) == {"a": 1.0, "b": 2.0}
    assert await_server_times(None, {"a"}) == {}
