"""``make bench``'s handler phases (inprocess.time_phases): timed by wrapping the handler instance's methods."""

import time
from types import SimpleNamespace

from ts.torch_handler.base_handler import BaseHandler

from pipeline.torchserve.inprocess import PHASES, time_phases


class _Context:
    def __init__(self):
        self.metrics = SimpleNamespace(add_time=lambda *a, **k: None)

    def get_request_header(self, idx, key):
        return None


class Slow(BaseHandler):
    """BaseHandler's own handle; each phase takes a known, distinct time."""

    def preprocess(self, data):
        time.sleep(0.002)
        return [d * 2 for d in data]

    def inference(self, data):
        time.sleep(0.02)
        return [d + 1 for d in data]

    def postprocess(self, data):
        return [str(d) for d in data]


class OwnHandle(BaseHandler):
    def handle(self, data, context):
        return self.postprocess(self.inference(self.preprocess(data)))


def test_base_handler_phases_are_timed_and_answers_unchanged():
    h = Slow()
    service = SimpleNamespace(_entry_point=h.handle)
    times, why = time_phases(service)
    assert why is None and set(times) == set(PHASES)
    assert service._entry_point([1, 2], _Context()) == ["3", "5"]  # the handler's answers, as before
    assert [len(times[p]) for p in PHASES] == [1, 1, 1]
    assert times["inference"][0] >= 20.0 and 2.0 <= times["preprocess"][0] < times["inference"][0]
    assert "inference" in vars(h) and "inference" not in vars(Slow())  # the instance shadowed, the class untouched


def test_a_handler_overriding_handle_or_a_function_is_one_phase_and_says_so():
    times, why = time_phases(SimpleNamespace(_entry_point=OwnHandle().handle))
    assert times is None and "OwnHandle overrides handle" in why and "one phase" in why

    def handle(data, context):
        return data

    times, why = time_phases(SimpleNamespace(_entry_point=handle))
    assert times is None and why.startswith("the handler is a function") and "one phase" in why


def test_a_kserve_envelope_times_the_wrapped_handler():
    h = Slow()

    class Envelope:
        def __init__(self, fn):
            self._handle_fn = fn

        def handle(self, data, context):
            return self._handle_fn(data, context)

    times, why = time_phases(SimpleNamespace(_entry_point=Envelope(h.handle).handle))
    assert why is None
    Envelope(h.handle).handle([1], _Context())
    assert len(times["postprocess"]) == 1
