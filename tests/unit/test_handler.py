"""The shipped handler's tensor functions and its batch wiring, without a server."""

import json

import pytest
import torch

from handlers import tensor_classifier as h


class _Metrics:
    def add_time(self, *args, **kwargs):
        pass


class FakeContext:
    """What BaseHandler.handle reads of a context: request headers, metrics, response setters."""

    def __init__(self):
        self.status, self.headers = {}, {}
        self.metrics = _Metrics()

    def get_request_header(self, idx, key):
        return None

    def set_response_status(self, code, phrase="", idx=0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.headers[idx] = value


def test_parse_row_accepts_flat_nested_and_bytes():
    a = h.parse_row(h.decode_body(b'{"features": [1, 2, 3, 4]}'), [2, 2])
    b = h.parse_row([[1, 2], [3, 4]], [2, 2])
    assert a.shape == (2, 2) and torch.equal(a, b) and a.dtype == torch.float32


@pytest.mark.parametrize("payload, msg", [
    ({"x": [1]}, "key 'features'"),
    ({"features": [1, 2, 3]}, "expected 4 features"),
    ({"features": [1, "a", 3, 4]}, "feature 1 is 'a'"),
    ({"features": [1, float("nan"), 3, 4]}, "finite"),
    ("text", "list of numbers"),
])
def test_parse_row_rejects_with_reason(payload, msg):
    with pytest.raises(ValueError, match=msg):
        h.parse_row(payload, [4])


def test_logits_to_results_softmax_and_labels():
    out = h.logits_to_results(torch.tensor([[0.0, 2.0], [3.0, 1.0]]), ["neg", "pos"])
    assert [r["prediction"] for r in out] == [1, 0] and out[0]["label"] == "pos"
    assert abs(sum(out[0]["probabilities"]) - 1) < 1e-12 and out[1]["logits"] == [3.0, 1.0]


def test_handle_answers_each_row_of_a_batch_with_its_own_result_and_rejects_a_bad_one():
    torch.manual_seed(0)
    handler = h.TensorClassifierHandler()
    handler.model = torch.nn.Linear(4, 3).eval()
    handler.input_shape = [4]
    ctx = FakeContext()
    rows = [[1.0, 2.0, 3.0, 4.0], [-4.0, 0.5, 2.0, -1.0], [0.0, 0.0, 0.0, 1.0], [9.0, -9.0, 3.0, 0.0]]
    data = [{"body": {"features": rows[0]}}, {"body": b'{"features": [1]}'}, {"body": json.dumps(rows[1]).encode()},
            {"data": "[0, 0, 0, 1]"}, {"body": {"features": [[9.0, -9.0], [3.0, 0.0]]}}]
    out = handler.handle(data, ctx)
    assert len(out) == 5
    expected = handler.model(torch.tensor([rows[0], rows[1], rows[2], rows[3]]))
    for pos, k in ((0, 0), (2, 1), (3, 2), (4, 3)):
        answer = json.loads(out[pos])
        assert answer["logits"] == pytest.approx(expected[k].tolist(), abs=1e-6), f"answer {pos} is row {k}'s"
        assert answer["prediction"] == int(expected[k].argmax())
    assert ctx.status == {1: (400, "expected 4 features for input shape [4], got 1")}
    assert json.loads(out[1])["code"] == 400
    assert set(ctx.headers.values()) == {"application/json"}
