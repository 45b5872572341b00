"""Where the served time goes (evaluate.latency): the join by request id, every row accounted for."""

import numpy as np
import pytest

from pipeline.evaluate import latency
from pipeline.stages.outcomes import RowOutcome, failed
from pipeline.stages.replay import with_server_times
from pipeline.torchserve.logs import RequestTime


def ok(i, client, rid, server=None, handler=None, batch=None):
    return RowOutcome(i, f"r{i}", True, 200, None, client, rid, server, None, None, 1, handler, batch)


def test_batched_rows_are_joined_by_request_id_each_with_its_batch_times():
    rows = [ok(i, 10.0 + i, f"id-{i}") for i in range(5)] + [failed(5, "r5", "handler_error", "Prediction failed")]
    times = {"id-0": RequestTime(4.0, 3.0, 4), "id-1": RequestTime(4.0, 3.0, 4), "id-2": RequestTime(4.0, 3.0, 4),
             "id-3": RequestTime(4.0, 3.0, 4), "id-4": RequestTime(2.0, 1.5, 1)}
    joined = with_server_times(rows, times)
    assert [(r.server_ms, r.handler_ms, r.server_batch) for r in joined[:5]] == [(4.0, 3.0, 4)] * 4 + [(2.0, 1.5, 1)]
    split = latency.split_latency(joined, logs_read=True)
    assert split.rows == {"joined": 5, "prediction_only": 0, "no_server_time": 0, "no_request_id": 0, "failed": 1}
    assert split.batched_rows == 4
    assert any("batches of more than one" in n and n.startswith("4 row(s)") for n in split.notes)
    c = split.components
    assert c["handler_ms"].count == 5 and c["handler_ms"].max == 3.0
    assert c["worker_other_ms"].p50 == pytest.approx(1.0) and c["worker_other_ms"].count == 5
    # client - PredictionTime: 10-4, 11-4, 12-4, 13-4, 14-2
    assert sorted([10 - 4, 11 - 4, 12 - 4, 13 - 4, 14 - 2])[2] == c["client_overhead_ms"].p50
    assert c["client_overhead_ms"].max == 12.0
    assert c["client_ms"].count == 5  # the failed row has no latency to split
    assert "1 failed row(s) are not split" in " ".join(split.notes)


def test_every_row_is_accounted_for_and_each_missing_kind_is_said():
    rows = [ok(0, 5.0, "a", 2.0, 1.0), ok(1, 5.0, "b", 2.0, None), ok(2, 5.0, "c"), ok(3, 5.0, None),
            failed(4, "r4", "timeout", "no answer"), ok(5, 6.0, "f", 3.0, 2.0)]
    split = latency.split_latency(rows, {"frontend_ms": [1.0, 2.0]}, logs_read=True)
    assert split.rows == {"joined": 2, "prediction_only": 1, "no_server_time": 1, "no_request_id": 1, "failed": 1}
    assert sum(split.rows.values()) == split.replayed == 6
    text = " ".join(split.notes)
    assert "1 answered row(s) have a PredictionTime but no HandlerTime" in text
    assert "1 answered row(s) have no PredictionTime line" in text
    assert "1 answered row(s) came back without an x-request-id" in text
    assert "for 2 of the 5 request(s) answered with 200" in text
    assert split.components["prediction_ms"].count == 3 and split.components["handler_ms"].count == 2
    assert split.frontend_logged == 2


def test_no_note_for_kinds_that_did_not_happen():
    split = latency.split_latency([ok(0, 5.0, "a", 2.0, 1.0)], {"frontend_ms": [1.0]}, logs_read=True)
    assert split.notes == (latency.QUEUE_NOTE,)
    assert split.negative == {"worker_other_ms": 0, "client_overhead_ms": 0}


def test_percentiles_of_each_part():
    client = np.arange(1, 101, dtype=float)  # 1..100 ms
    rows = [ok(i, float(c), f"id{i}", 0.5, 0.25) for i, c in enumerate(client)]
    split = latency.split_latency(rows, {"queue_ms": list(client / 10)}, logs_read=True)
    s = split.components["client_ms"]
    assert (s.p50, s.p90, s.p99, s.max) == pytest.approx(tuple(np.percentile(client, [50, 90, 99])) + (100.0,))
    assert split.components["client_overhead_ms"].p90 == pytest.approx(np.percentile(client, 90) - 0.5)
    assert split.frontend["queue_ms"].p99 == pytest.approx(np.percentile(client / 10, 99))
    assert split.frontend["frontend_ms"] is None  # none logged: no figure, never 0
    d = split.to_dict()
    assert set(d["components"]) == set(latency.COMPONENTS) and set(d["frontend"]) == set(latency.FRONTEND)
    assert d["components"]["handler_ms"]["p50"] == 0.25


def test_a_negative_client_overhead_is_kept_counted_and_explained():
    rows = [ok(0, 1.0, "a", 1.3, 1.0), ok(1, 5.0, "b", 2.0, 2.01)]
    split = latency.split_latency(rows, None, logs_read=True)
    assert split.negative == {"client_overhead_ms": 1, "worker_other_ms": 1}
    assert split.components["client_overhead_ms"].p50 == pytest.approx((-0.3 + 3.0) / 2)  # kept as measured
    text = " ".join(split.notes)
    assert "1 row(s) have a PredictionTime above the client's latency (by up to 0.3 ms)" in text
    assert "wall clock" in text
    assert "1 row(s) have a HandlerTime above their PredictionTime" in text


def test_without_logs_nothing_is_joined_and_it_is_said():
    split = latency.split_latency([ok(0, 5.0, "a"), ok(1, 4.0, "b")], None, logs_read=False)
    assert split.rows["no_server_time"] == 2 and split.frontend is None and split.frontend_logged is None
    assert split.notes[0].startswith("No TorchServe log could be read")
    assert not any("no PredictionTime line" in n for n in split.notes)


def test_stacked_rows_add_up_to_the_client_latency_sorted():
    parts = latency.stacked_rows([9.0, 3.0, np.nan, 6.0], [4.0, 2.0, 1.0, np.nan], [3.0, 1.5, 1.0, 1.0])
    assert parts["client_ms"].tolist() == [3.0, 9.0]
    total = sum(parts[k] for k in latency.STACKED)
    assert total.tolist() == pytest.approx([3.0, 9.0])
    assert parts["client_overhead_ms"].tolist() == [1.0, 5.0]


def test_report_md_and_html_show_the_split_its_accounting_and_notes():
    import pandas as pd

    from pipeline.report import html, markdown

    rows = [ok(0, 5.0, "a", 2.0, 1.0), ok(1, 7.0, "b", 2.0, None), failed(2, "r2", "timeout", "no answer")]
    b = latency.split_latency(rows, {"frontend_ms": [4.0, 6.0], "queue_ms": [0.5, 1.0]}, logs_read=True).to_dict()
    rep = {"served_latency_split": {"breakdown": b}}
    md = markdown.render_markdown({**rep, "verdict": "PASS", "complete": True})
    assert "## Where the time goes" in md and "3 replayed rows: 1 joined" in md and "1 failed (not split)" in md
    assert "| handler (HandlerTime) | 1.000 | 1.000 | 1.000 | 1.000 | 1 |" in md
    assert "no request id in 0.12" in md and "PredictionTime but no HandlerTime" in md
    frame = pd.DataFrame({"served_latency_ms": pd.array([5.0, 7.0, None], dtype="Float64"),
                          "served_server_ms": pd.array([2.0, 2.0, None], dtype="Float64"),
                          "served_handler_ms": pd.array([1.0, None, None], dtype="Float64")})
    page = html.render_html({**rep, "verdict": "PASS", "complete": True}, frame)
    assert "<h2>Where the time goes</h2><img alt='Where the time goes' src='data:image/png;base64," in page
    assert "PredictionTime but no HandlerTime" in page
    assert markdown._where_time_goes({"served_latency_split": {}}) == []
