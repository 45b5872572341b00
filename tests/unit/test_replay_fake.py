"""Replay against an in-memory transport: the abort paths, every error class, retries, warm-up, server times.

No socket is opened: ``pipeline.transport.fake.FakeTransport`` answers each request from a
script, through ``ReplayConfig.connect``.
"""

import asyncio
import json

import pytest

from pipeline.stages import replay
from pipeline.stages.replay import MAX_FATAL_STREAK, ReplayConfig, _Breaker, _Answer, decode_answers, replay_dataset
from pipeline.stages.outcomes import failed
from pipeline.torchserve import logs
from pipeline.torchserve.errors import ERROR_CLASSES, answer_message, classify_status
from pipeline.transport.fake import Delay, FakeConnection, FakeTransport, answer, in_order, request_body
from pipeline.transport.http import HttpConnectionError, HttpProtocolError, Target
from tests.unit._support import codec, pv_answer, tensor_rows

URL = "http://127.0.0.1:9/predictions/m"


@pytest.fixture(autouse=True)
def no_full_collection(monkeypatch):
    """``replay_dataset`` collects garbage before its timed loop, so GC pauses stay out of the measured
    latencies; in a test process full of modules that costs ~60 ms a call and is not what these tests judge."""
    monkeypatch.setattr(replay.gc, "collect", lambda *a: 0)
OK = answer(200, pv_answer(0, [1.0, 0.0]))
NO_WORKER = answer(503, '{"code": 503, "message": "Model \\"m\\" has no worker to serve inference request."}')
PREDICTION_FAILED = answer(503, '{"code": 503, "type": "InternalServerException", "message": "Prediction failed"}')
WORKER_DIED = answer(500, '{"code": 500, "message": "Worker died."}')


def _replay(script, n=3, **kw):
    transport = FakeTransport(script)
    kw.setdefault("warmup_requests", 0)
    cfg = ReplayConfig(url=URL, token=kw.pop("token", None), codec=kw.pop("codec", None) or codec(2),
                       connect=transport, **kw)
    return replay_dataset(cfg, tensor_rows(n)), transport


def _row_of(raw: bytes) -> int:
    return int(json.loads(request_body(raw))["features"][0])


# --- the in-memory transport itself ---------------------------------------------------------------------------------

def test_fake_connection_answers_raises_and_times_out_from_its_script():
    async def main():
        target = Target.from_url(URL)
        conn = FakeConnection(target, in_order([OK, HttpConnectionError("refused"), Delay(0.01, OK),
                                                Delay(0.01, Delay(5.0, OK))]))
        first = await conn.request(b"a", 1.0)
        with pytest.raises(HttpConnectionError, match="refused"):
            await conn.request(b"b", 1.0)
        delayed = await conn.request(b"c", 1.0)
        with pytest.raises(asyncio.TimeoutError):
            await conn.request(b"d", 0.05)
        conn.close()
        return first, delayed, conn

    first, delayed, conn = asyncio.run(main())
    assert first is OK and delayed is OK and conn.closed == 1
    assert [raw for _, raw in conn.sent] == [b"a", b"b", b"c", b"d"]
    with pytest.raises(AssertionError, match="ran out of steps"):
        in_order([])(b"x")


def test_fake_answers_look_like_the_real_clients():
    r = answer(200, "{}", request_id="r-1", headers={"Content-Type": "application/json"})
    assert (r.status, r.body, r.headers) == (200, b"{}", {"content-type": "application/json", "x-request-id": "r-1"})
    assert request_body(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n{\"a\": 1}") == b'{"a": 1}'


# --- answered rows, the request sent, the token ---------------------------------------------------------------------

def test_every_row_is_sent_once_with_the_token_and_answered_in_dataset_order():
    res, transport = _replay(lambda raw: answer(200, pv_answer(_row_of(raw) % 2, [0.5, 0.5]),
                                                request_id=f"id-{_row_of(raw)}"), n=5, concurrency=2, token="t0k")
    assert res.is_complete and res.abort_reason is None and res.answered == 5 and res.error_rate == 0.0
    assert [r.index for r in res.rows] == [0, 1, 2, 3, 4] and [r.id for r in res.rows] == [f"r{i}" for i in range(5)]
    assert [r.predicted for r in res.rows] == [0, 1, 0, 1, 0]
    assert [r.request_id for r in res.rows] == [f"id-{i}" for i in range(5)]
    assert all(r.attempts == 1 and r.status == 200 and r.latency_ms >= 0 for r in res.rows)
    assert sorted(_row_of(raw) for raw in transport.requests) == [0, 1, 2, 3, 4]
    assert all(b"Authorization: Bearer t0k\r\n" in raw and raw.startswith(b"POST /predictions/m HTTP/1.1\r\n")
               for raw in transport.requests)
    assert len(transport.connections) == 2 and all(c.closed == 1 for c in transport.connections)
    assert res.concurrency == 2 and res.codec.format == "package_validate"


def test_no_token_sends_no_authorization_header():
    res, transport = _replay(lambda raw: OK, n=1)
    assert b"Authorization" not in transport.requests[0] and res.answered == 1


def test_an_auto_codec_is_settled_by_the_first_answer():
    res, _ = _replay(lambda raw: answer(200, "[0.1, 2.0]"), n=2, codec=codec(2, "auto"))
    assert res.codec.format == "logits" and res.answered == 2 and res.rows[1].predicted == 1


def test_an_invalid_url_is_a_replay_error():
    from pipeline.errors import ReplayError

    cfg = ReplayConfig(url="ftp://x/y", token=None, codec=codec(2), connect=FakeTransport(lambda raw: OK))
    with pytest.raises(ReplayError, match="cannot replay to ftp://x/y"):
        replay_dataset(cfg, tensor_rows(1))


# --- warm-up ----------------------------------------------------------------------------------------------------------

def test_warmup_requests_are_sent_first_and_never_measured():
    calls = {"n": 0}

    def script(raw):
        calls["n"] += 1
        return WORKER_DIED if calls["n"] <= 7 else OK  # a warm-up answer counted would fail a row

    res, transport = _replay(script, n=3, warmup_requests=7)
    assert len(transport.requests) == 10
    assert [_row_of(raw) for raw in transport.requests[:7]] == [0, 1, 2, 0, 1, 2, 0]
    assert res.answered == 3 and res.is_complete and res.warmup_requests == 7
    assert all(r.attempts == 1 for r in res.rows)


def test_warmup_is_split_over_the_connections():
    res, transport = _replay(lambda raw: OK, n=2, warmup_requests=5, concurrency=2)
    assert len(transport.requests) == 2 * 3 + 2, "ceil(5 / 2) warm-up requests per connection, then the rows"
    assert res.answered == 2


def test_a_warmup_failure_ends_that_connections_warmup_not_the_replay():
    script = in_order([HttpConnectionError("reset")], then=OK)
    res, transport = _replay(script, n=2, warmup_requests=4)
    assert len(transport.requests) == 1 + 2 and res.answered == 2 and res.is_complete


# --- abort paths: a server that is gone, a handler that hangs ----------------------------------------------------

def test_consecutive_fatal_errors_end_the_replay_and_the_rest_are_not_sent():
    res, transport = _replay(lambda raw: HttpConnectionError("connection refused"), n=20)
    assert not res.is_complete
    assert res.abort_reason == (f"{MAX_FATAL_STREAK} consecutive 'connection_error' failures (connection refused): "
                                "the server is gone")
    assert len(transport.requests) == MAX_FATAL_STREAK == 8
    sent, rest = res.rows[:8], res.rows[8:]
    assert all(r.error_class == "connection_error" and r.message == "connection refused" for r in sent)
    assert all(r.error_class == "not_sent" and r.message == res.abort_reason and r.attempts == 0 for r in rest)
    assert res.error_counts() == {"connection_error": 8, "not_sent": 12} and res.error_rate == 1.0


def test_worker_deaths_and_refusals_count_in_one_streak():
    script = in_order([WORKER_DIED, HttpConnectionError("refused")] * 4, then=OK)
    res, transport = _replay(script, n=12)
    assert not res.is_complete and len(transport.requests) == 8
    assert res.abort_reason.startswith("8 consecutive 'connection_error' failures (refused)")
    assert res.rows[0].error_class == "worker_died" and res.rows[0].message == "Worker died."


def test_a_fatal_streak_one_short_of_the_limit_is_forgiven_by_an_answer():
    fatal = [HttpConnectionError("refused")] * (MAX_FATAL_STREAK - 1)
    res, transport = _replay(in_order(fatal + [OK] + fatal + [OK]), n=2 * MAX_FATAL_STREAK)
    assert res.is_complete and res.abort_reason is None and res.answered == 2
    assert res.error_counts() == {"connection_error": 2 * (MAX_FATAL_STREAK - 1)}


def test_consecutive_timeouts_trip_the_breaker_naming_the_setting():
    res, transport = _replay(lambda raw: Delay(10.0, OK), n=6, request_timeout_s=0.02, max_consecutive_timeouts=2)
    assert not res.is_complete and len(transport.requests) == 2
    assert res.abort_reason == (
        "2 consecutive requests got no answer within replay.request_timeout_s=0.02 s "
        "(replay.max_consecutive_timeouts=2): the handler hangs. Raise replay.request_timeout_s if it is only slow")
    timed_out = res.rows[:2]
    assert all(r.error_class == "timeout" and r.message == "no answer within replay.request_timeout_s=0.02 s"
               for r in timed_out)
    assert all(r.latency_ms >= 15 for r in timed_out), "a timeout's latency is the time waited"
    assert [r.error_class for r in res.rows[2:]] == ["not_sent"] * 4


def test_timeouts_one_short_of_the_limit_do_not_abort():
    script = in_order([asyncio.TimeoutError(), asyncio.TimeoutError(), OK, asyncio.TimeoutError(), OK])
    res, _ = _replay(script, n=5, max_consecutive_timeouts=3)
    assert res.is_complete and [r.error_class for r in res.rows] == ["timeout", "timeout", None, "timeout", None]


def test_a_timeout_breaks_a_fatal_streak_and_a_fatal_error_breaks_a_timeout_streak():
    b = _Breaker(ReplayConfig(url=URL, token=None, codec=codec(2), max_consecutive_timeouts=2))
    refused = failed(0, "r0", "connection_error", "refused")
    timeout = failed(0, "r0", "timeout", "slow")
    for _ in range(MAX_FATAL_STREAK - 1):
        b.record(refused)
    b.record(timeout)
    assert (b.fatal, b.timeouts, b.reason) == (0, 1, None)
    b.record(refused)
    assert (b.fatal, b.timeouts, b.reason) == (1, 0, None)
    b.record(_Answer(0, b"{}", None, 1.0, 1))
    assert (b.fatal, b.timeouts) == (0, 0)
    b.record(timeout)
    b.record(timeout)
    first = b.reason
    assert first.startswith("2 consecutive requests got no answer")
    for _ in range(MAX_FATAL_STREAK):
        b.record(refused)
    assert b.reason == first, "the first reason stands"


def test_other_failures_never_trip_the_breaker():
    res, _ = _replay(lambda raw: PREDICTION_FAILED, n=MAX_FATAL_STREAK + 2)
    assert res.is_complete and res.error_counts() == {"handler_error": MAX_FATAL_STREAK + 2}


# --- every error class ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status, body, cls, message", [
    (503, '{"code": 503, "type": "InternalServerException", "message": "Prediction failed"}', "handler_error",
     "Prediction failed"),
    (507, '{"message": "Out of resources"}', "handler_error", "Out of resources"),
    (400, '{"code": 400, "message": "expected 4 features, got 3"}', "bad_input", "expected 4 features, got 3"),
    (503, '{"message": "number of batch response mismatched"}', "batch_mismatch", "number of batch response mismatched"),
    (500, '{"code": 500, "message": "Worker died."}', "worker_died", "Worker died."),
    (413, "request too large", "too_large", "request too large"),
    (401, "Token Authorization failed", "unauthorized", "Token Authorization failed"),
    (403, '{"message": "forbidden"}', "unauthorized", "forbidden"),
    (400, '{"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed. Token either '
     'incorrect, expired, or not provided correctly"}', "unauthorized",
     "Token Authorization failed. Token either incorrect, expired, or not provided correctly"),
    (400, "Token Authentication failed", "unauthorized", "Token Authentication failed"),
    (404, '{"code": 404, "message": "Model not found: m"}', "not_found", "Model not found: m"),
    (503, '{"message": "Invalid model predict output"}', "bad_response", "Invalid model predict output"),
    (503, '{"message": "Unsupported model output data type."}', "bad_response", "Unsupported model output data type."),
    (408, "", "timeout", ""),
    (504, "gateway timeout", "timeout", "gateway timeout"),
    (500, '{"message": "Internal error"}', "http_error", "HTTP 500: Internal error"),
    (502, "<html>bad gateway</html>", "http_error", "HTTP 502: <html>bad gateway</html>"),
    (418, "[1, 2]", "http_error", "HTTP 418: [1, 2]"),
])
def test_each_error_answer_is_classified_with_its_message(status, body, cls, message):
    assert classify_status(status, body) == (cls, message)
    assert cls in ERROR_CLASSES
    res, transport = _replay(lambda raw: answer(status, body, request_id="rid"), n=1)
    row = res.rows[0]
    assert (row.is_ok, row.error_class, row.message, row.status) == (False, cls, message, status)
    assert row.request_id == "rid" and row.attempts == 1 and row.latency_ms is not None


def test_answer_message_reads_torchserves_json_or_keeps_the_text():
    assert answer_message('{"code": 400, "message": " bad row "}') == "bad row"
    assert answer_message('{"code": 400}') == '{"code": 400}'
    assert answer_message('["message"]') == '["message"]'
    assert answer_message("  plain text \n") == "plain text"
    assert answer_message('{"message": 7}') == "7"


def test_queue_full_is_retried_with_backoff_until_max_retries_then_failed(monkeypatch):
    waits = []
    real_sleep = asyncio.sleep

    async def watch(delay, *a, **kw):
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", watch)
    res, transport = _replay(lambda raw: NO_WORKER, n=1, max_retries=3)
    row = res.rows[0]
    assert row.error_class == "queue_full" and row.attempts == 4 and len(transport.requests) == 4
    assert row.message == 'Model "m" has no worker to serve inference request.' and row.status == 503
    assert waits == [replay.BACKOFF_BASE_S, 2 * replay.BACKOFF_BASE_S, 4 * replay.BACKOFF_BASE_S]
    assert replay.BACKOFF_BASE_S == 0.05


def test_queue_full_then_an_answer_is_answered_with_its_attempts(monkeypatch):
    monkeypatch.setattr(replay, "BACKOFF_BASE_S", 0.001)
    res, transport = _replay(in_order([NO_WORKER, NO_WORKER, OK, PREDICTION_FAILED, OK]), n=3, max_retries=2)
    first, second, third = res.rows
    assert first.is_ok and first.attempts == 3
    assert second.error_class == "handler_error" and second.attempts == 1, "handler errors are never retried"
    assert third.is_ok and len(transport.requests) == 5


def test_no_retries_when_max_retries_is_zero():
    res, transport = _replay(lambda raw: NO_WORKER, n=1, max_retries=0)
    assert res.rows[0].error_class == "queue_full" and res.rows[0].attempts == 1 and len(transport.requests) == 1


@pytest.mark.parametrize("body, why", [
    (b"<html>oops</html>", "the answer is not JSON"),
    (b'{"prediction": 7, "probabilities": [0.5, 0.5]}', r"'prediction' must be a class index in 0..1, got 7"),
    (b'{"prediction": 0, "probabilities": [0.9, 0.9]}', "more than 1"),
])
def test_a_malformed_answer_is_a_bad_response_quoting_the_body(body, why):
    res, _ = _replay(lambda raw: answer(200, body, request_id="x1"), n=1)
    row = res.rows[0]
    assert not row.is_ok and row.error_class == "bad_response" and row.status == 200 and row.request_id == "x1"
    assert __import__("re").search(why, row.message)
    assert row.message.endswith(f"; body: {body.decode()!r}")


def test_a_long_malformed_body_is_quoted_in_part():
    body = b"x" * 500
    res, _ = _replay(lambda raw: answer(200, body), n=1)
    assert res.rows[0].message.endswith("; body: " + repr("x" * 300) + "...")


def test_a_protocol_error_is_a_bad_response():
    res, _ = _replay(lambda raw: HttpProtocolError("bad status line b'SSH-2.0'"), n=2)
    assert [r.error_class for r in res.rows] == ["bad_response"] * 2
    assert res.rows[0].message == "bad status line b'SSH-2.0'" and res.is_complete


# --- decode_answers ----------------------------------------------------------------------------------------------------

def test_decode_answers_decodes_raw_answers_and_marks_unsent_rows():
    rows = tensor_rows(4)
    results = [_Answer(0, pv_answer(1, [0.2, 0.8]), "a", 2.5, 2), failed(1, "r1", "timeout", "slow"),
               None, _Answer(3, b"not json", "d", 1.0, 1)]
    out, c = decode_answers(results, rows, codec(2, "auto"), "the server is gone")
    assert c.format == "package_validate"
    assert [(r.index, r.id, r.is_ok, r.error_class) for r in out] == [
        (0, "r0", True, None), (1, "r1", False, "timeout"), (2, "r2", False, "not_sent"),
        (3, "r3", False, "bad_response")]
    assert (out[0].predicted, out[0].latency_ms, out[0].request_id, out[0].attempts) == (1, 2.5, "a", 2)
    assert out[2].message == "the server is gone" and out[2].attempts == 0
    assert out[1] is results[1]
    plain, _ = decode_answers([None], tensor_rows(1), codec(2), None)
    assert plain[0].message == "replay stopped"


def test_decode_answers_with_no_answer_keeps_the_codec():
    auto = codec(2, "auto")
    out, c = decode_answers([failed(0, "r0", "timeout", "slow")], tensor_rows(1), auto, None)
    assert c is auto and out[0].error_class == "timeout"


# --- server times joined by request id -------------------------------------------------------------------------------

LINE = "2026-11-22T11:00:35,141 - PredictionTime.ms:{ms}|#ModelName:m,Level:Model|#hostname:vm,requestID:{ids},timestamp:1\n"


def test_server_times_are_joined_by_request_id(tmp_path):
    metrics = tmp_path / "model_metrics.log"
    metrics.write_text(LINE.format(ms=1.5, ids="id-0") + LINE.format(ms=2.25, ids="id-1,id-2") +
                       "2026-11-22T11:00:35,161 - WorkerThreadTime.ms:3.0|#Level:Host|#hostname:vm,timestamp:1\n")
    res, _ = _replay(lambda raw: answer(200, pv_answer(0, [1.0, 0.0]), request_id=f"id-{_row_of(raw)}"), n=3,
                     metrics_log=metrics)
    assert [r.server_ms for r in res.rows] == [1.5, 2.25, 2.25]


def test_rows_without_a_server_time_keep_none(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "METRICS_WAIT_S", 0.05)
    metrics = tmp_path / "model_metrics.log"
    metrics.write_text(LINE.format(ms=4.0, ids="id-0"))
    res, _ = _replay(in_order([answer(200, pv_answer(0, [1.0, 0.0]), request_id="id-0"),
                               answer(200, pv_answer(0, [1.0, 0.0]), request_id="id-9"), OK, PREDICTION_FAILED]),
                     n=4, metrics_log=metrics)
    assert [r.server_ms for r in res.rows] == [4.0, None, None, None]


def test_read_server_times_without_a_log(tmp_path):
    assert logs.read_server_times(None) == {} and logs.read_server_times(tmp_path / "absent.log") == {}
    assert logs.await_server_times(None, {"a"}) == {}


def test_await_server_times_gives_up_after_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "METRICS_WAIT_S", 1.0)
    metrics = tmp_path / "model_metrics.log"
    metrics.write_text(LINE.format(ms=1.0, ids="a"))
    import time

    t0 = time.monotonic()
    assert logs.await_server_times(metrics, {"a", "never"}) == {"a": 1.0}
    assert 0.99 <= time.monotonic() - t0 < 4.0
    monkeypatch.setattr(logs, "METRICS_WAIT_S", 60.0)  # a wait would show as a minute, never as a busy machine
    t0 = time.monotonic()
    assert logs.await_server_times(metrics, {"a"}) == {"a": 1.0}
    assert time.monotonic() - t0 < 30, "no wait when every id is there"


# --- what each failed row records ---------------------------------------------------------------------------------

@pytest.mark.parametrize("step, cls", [
    (HttpConnectionError("reset"), "connection_error"),
    (HttpProtocolError("bad status line"), "bad_response"),
    (asyncio.TimeoutError(), "timeout"),
    (PREDICTION_FAILED, "handler_error"),
])
def test_a_failed_row_keeps_its_index_id_and_attempts(step, cls):
    res, _ = _replay(in_order([OK, step, OK]), n=3)
    row = res.rows[1]
    assert (row.index, row.id, row.error_class, row.attempts, row.is_ok) == (1, "r1", cls, 1, False)
    assert [r.error_class for r in res.rows] == [None, cls, None]


def test_latencies_are_milliseconds_from_the_send():
    res, _ = _replay(in_order([Delay(0.03, OK), OK, Delay(0.03, asyncio.TimeoutError())]), n=3)
    slow, fast, timed_out = res.rows
    assert 25 <= slow.latency_ms < 3000 and 0 <= fast.latency_ms < 25
    assert timed_out.error_class == "timeout" and 25 <= timed_out.latency_ms < 3000


def test_open_loop_latency_runs_from_the_scheduled_send_time():
    res, _ = _replay(in_order([Delay(0.12, OK)], then=OK), n=3, rate=100.0)
    first, second, third = (r.latency_ms for r in res.rows)
    assert first >= 115 and second >= 95 and third >= 85, "queued behind the stall, as a client would wait"
    assert res.rate == 100.0
    closed, _ = _replay(in_order([Delay(0.12, OK)], then=OK), n=3)
    assert closed.rows[1].latency_ms < 60


def test_an_error_body_that_is_not_utf8_is_quoted_with_replacements():
    res, _ = _replay(lambda raw: answer(500, b"\xff broken"), n=1)
    assert res.rows[0].error_class == "http_error" and res.rows[0].message == "HTTP 500: \ufffd broken"


def test_401_and_403_are_unauthorized_whatever_they_say():
    for status in (401, 403):
        assert classify_status(status, '{"message": "nope"}') == ("unauthorized", "nope")


@pytest.mark.parametrize("step, cls", [
    (HttpConnectionError("reset"), "connection_error"),
    (HttpProtocolError("bad status line"), "bad_response"),
    (asyncio.TimeoutError(), "timeout"),
])
def test_a_failure_after_a_retry_counts_both_attempts(step, cls, monkeypatch):
    monkeypatch.setattr(replay, "BACKOFF_BASE_S", 0.001)
    res, _ = _replay(in_order([NO_WORKER, step]), n=1)
    assert (res.rows[0].error_class, res.rows[0].attempts) == (cls, 2)
