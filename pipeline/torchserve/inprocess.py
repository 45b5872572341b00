"""The archive's handler run in a child Python process through TorchServe 0.12's own handler API.

The child (``python -m pipeline.torchserve.inprocess``) does what ``model_service_worker.py``
does: ``ts.model_loader.TsModelLoader().load(...)`` builds the real ``Context`` (manifest,
model-config.yaml, batch size, envelope, metrics) and calls the handler's ``initialize``;
each batch of requests is shaped as the frontend sends it (one ``body`` parameter per request,
decoded by content type as the worker decodes it) and goes through ``Service.predict``,
whose binary answer is read back per request: status, content type, body. A failed batch
becomes the JSON error TorchServe's frontend would send. So the handled stage sees what a
client of the real server would see, minus the network.

The parent talks to the child over two private pipes (length-prefixed pickles); the
handler's own prints and logs go to a log file, never into the protocol. The child runs in
its own session so a deadline can stop it and everything it started.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import time
import traceback
import uuid
from typing import Any

from pipeline.wire import worker_view

ERROR_TYPES = {400: "BadRequestException", 404: "ModelNotFoundException", 413: "RequestTooLarge",
               503: "ServiceUnavailableException", 507: "InsufficientStorage"}


def send_message(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("!Q", len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            raise EOFError("the other side closed the pipe")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_message(fd: int) -> Any:
    (n,) = struct.unpack("!Q", _read_exact(fd, 8))
    return pickle.loads(_read_exact(fd, n))


def parse_predict_response(msg: bytes) -> tuple[int, str, list[tuple[str, int, str, bytes]]]:
    """TorchServe's binary predict response (``otf_message_handler.create_predict_response``).

    Returns:
        The batch's code and message, and per request: id, HTTP status, content type, body.
    """
    pos = 0

    def i32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("!i", msg, pos)
        pos += 4
        return v

    def chunk() -> bytes:
        nonlocal pos
        n = i32()
        if n < 0:
            return b""
        b = bytes(msg[pos : pos + n])
        pos += n
        return b

    code = i32()
    message = chunk().decode("utf-8", errors="replace")
    out = []
    while pos < len(msg):
        n = i32()
        if n == -1:
            break
        req_id = bytes(msg[pos : pos + n]).decode("utf-8", errors="replace")
        pos += n
        content_type = chunk().decode("utf-8", errors="replace")
        status = i32()
        chunk()  # reason phrase
        for _ in range(i32()):  # response headers
            chunk()
            chunk()
        out.append((req_id, status, content_type, chunk()))
    return code, message, out


def frontend_answers(code: int, message: str, per_request: list[tuple[str, int, str, bytes]], n: int
                     ) -> list[tuple[int, str, bytes]]:
    """(status, content type, body) per request, as TorchServe's frontend answers a client."""
    if code != 200 or len(per_request) != n:
        body = json.dumps({"code": code, "type": ERROR_TYPES.get(code, "InternalServerException"),
                           "message": message}).encode()
        return [(code, "application/json", body)] * n
    return [(status, ct, body) for _, status, ct, body in per_request]


def causes(e: BaseException) -> list[str]:
    """Every exception of a chain, innermost (the root cause) first, each with its innermost frame.

    TorchServe's loader hides a handler's own ImportError behind a second one (it then tries
    ``ts.torch_handler.<name>``), so the root cause is what the user needs to see.
    """
    chain, seen = [], set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    out = []
    for exc in reversed(chain):
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
        out.append(f"{type(exc).__name__}: {exc}{where}")
    return out


def _short_path(filename: str, user_dir: str) -> str:
    """A frame's file for a message: relative to the model folder for the user's files, else its last parts."""
    try:
        rel = os.path.relpath(filename, user_dir)
    except ValueError:
        rel = filename
    if not rel.startswith(".."):
        return rel
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:  # torch/nn/modules/conv.py, not the venv's whole path
        return path.rsplit("/site-packages/", 1)[1]
    return "/".join(path.split("/")[-2:])


def quote_exception(e: BaseException, user_dir: str) -> str:
    """What a handler raised, for a row's message: type, message, and where.

    "where" is the innermost frame in the user's own files (the handler and model files of the
    archive, under ``user_dir``), and the innermost frame of all when that lies elsewhere (in
    torch, say): the user's line is what to fix, the library's line says what refused.
    """
    frames = traceback.extract_tb(e.__traceback__)
    text = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
    if len(msg) > 400:
        msg = msg[:400] + "..."
    root = os.path.realpath(user_dir) + os.sep
    own = [f for f in frames if os.path.realpath(f.filename).startswith(root)]
    where = []
    if own:
        where.append(f"at {_short_path(own[-1].filename, user_dir)}:{own[-1].lineno} in {own[-1].name}")
    if frames and (not own or frames[-1] is not own[-1]):
        inner = frames[-1]
        where.append(f"{'raised in' if own else 'at'} {_short_path(inner.filename, user_dir)}:{inner.lineno} "
                     f"in {inner.name}")
    return msg + (f" ({'; '.join(where)})" if where else "")


def _capture_entry_point(service, captured: list[BaseException]) -> None:
    """Keep what the handler raises: ``Service.predict`` catches it and answers only "Prediction failed"
    (it logs the traceback, which reaches handler.log, not the answer). The entry point is wrapped,
    not replaced: the exception still propagates to ``Service.predict`` unchanged."""
    entry = service._entry_point

    def entry_point(data, context):
        try:
            return entry(data, context)
        except BaseException as e:
            captured.append(e)
            raise

    service._entry_point = entry_point


def _otf_batch(requests: list[tuple[bytes, str]]) -> list[dict]:
    batch = []
    for body, content_type in requests:
        batch.append({
            "requestId": str(uuid.uuid4()).encode(),
            "parameters": [{"name": "body", "contentType": content_type,
                            "value": worker_view(body, content_type)}],
            "headers": [{"name": b"Content-Type", "value": content_type.encode()}],
        })
    return batch


def capture_inference(service: Any) -> list | None:
    """Keep each model output the handler's ``inference`` returns, without changing the handler.

    BaseHandler's ``handle`` calls ``self.inference`` between ``preprocess`` and ``postprocess``;
    an instance attribute that calls the class's method and keeps its result shadows it, so
    the handler still gets exactly what it returned. A function handler, or a class whose
    ``handle`` never calls ``inference``, gives nothing to read: None, or an empty list per batch.
    """
    entry = getattr(service, "_entry_point", None)
    owner = getattr(entry, "__self__", None)
    inner = getattr(owner, "_handle_fn", None)  # a KServe envelope wraps the handler's handle
    if inner is not None:
        owner = getattr(inner, "__self__", None)
    method = getattr(owner, "inference", None)
    if owner is None or not callable(method):
        return None
    seen: list = []

    def inference(*args: Any, **kwargs: Any) -> Any:
        out = method(*args, **kwargs)
        seen.append(out)
        return out

    try:
        owner.inference = inference
    except (AttributeError, TypeError):  # __slots__ or a read-only attribute: leave the handler alone
        return None
    return seen


PHASES_ENV = "PACKAGE_VALIDATE_TIME_PHASES"  # set by ``make bench``: time BaseHandler's phases in the child
PHASES = ("preprocess", "inference", "postprocess")


def time_phases(service: Any) -> tuple[dict[str, list[float]] | None, str | None]:
    """Time BaseHandler's phases of the loaded handler, without changing the handler.

    As ``capture_inference`` does, each of ``preprocess``, ``inference`` and ``postprocess`` is shadowed
    by an instance attribute that calls the method in place before and records its wall time (ms)
    into the returned lists (the caller empties them per batch). Only BaseHandler's own ``handle``
    is known to call the three once each: a handler whose class overrides ``handle``, or one that is
    a function, is timed as one phase (None, and why).
    """
    entry = getattr(service, "_entry_point", None)
    owner = getattr(entry, "__self__", None)
    inner = getattr(owner, "_handle_fn", None)  # a KServe envelope wraps the handler's handle
    if inner is not None:
        owner = getattr(inner, "__self__", None)
    if owner is None:
        return None, "the handler is a function: timed as one phase (handle)"
    try:
        from ts.torch_handler.base_handler import BaseHandler
    except ImportError:  # pragma: no cover - torchserve is a dependency
        BaseHandler = None
    if BaseHandler is None or not isinstance(owner, BaseHandler) or type(owner).handle is not BaseHandler.handle:
        return None, (f"the handler's class {type(owner).__name__} overrides handle (or is no BaseHandler): "
                      "timed as one phase (handle)")
    times: dict[str, list[float]] = {name: [] for name in PHASES}

    def timed(name: str, method):
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return method(*args, **kwargs)
            finally:
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
        return wrapper

    try:
        for name in PHASES:
            setattr(owner, name, timed(name, getattr(owner, name)))
    except (AttributeError, TypeError):  # __slots__ or a read-only attribute: leave the handler alone
        return None, f"the handler's {type(owner).__name__} takes no instance attributes: timed as one phase (handle)"
    return times, None


def inner_rows(seen: list | None, n: int) -> tuple[Any, str | None]:
    """One batch's model outputs as a float32 [n, K] array, or None and why not."""
    if seen is None:
        return None, "the handler has no inference method (a function handler, or a class without BaseHandler's)"
    if len(seen) != 1:
        return None, f"the handler called inference {len(seen)} time(s) for one batch"
    out = seen[0]
    import torch

    if not isinstance(out, torch.Tensor):
        return None, f"the handler's inference returns a {type(out).__name__}, not one tensor"
    if out.ndim < 1 or out.shape[0] != n:
        return None, f"the handler's inference returns shape {list(out.shape)} for a batch of {n}"
    return out.detach().to("cpu", torch.float32).reshape(n, -1).numpy(), None


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the run that started it dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(argv: list[str]) -> int:
    in_fd, out_fd, model_dir, model_name, handler, batch_size, envelope = argv
    _die_with_parent()
    sys.path.insert(0, model_dir)
    in_fd, out_fd = int(in_fd), int(out_fd)
    t0 = time.perf_counter()
    try:
        import ts
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
        from ts.model_loader import TsModelLoader

        metrics = MetricsCacheYamlImpl(config_file_path=os.path.join(os.path.dirname(ts.__file__), "configs",
                                                                     "metrics.yaml"))
        metrics.initialize_cache()
        metrics.model_name = model_name
        service = TsModelLoader().load(model_name, model_dir, handler, None, int(batch_size), envelope or None,
                                       True, metrics)
        service.set_cl_socket(None)
        seen = capture_inference(service)  # before the entry point is wrapped: it reads the handler's instance
        phases, phases_why = time_phases(service) if os.environ.get(PHASES_ENV) else (None, None)
        captured: list[BaseException] = []
        _capture_entry_point(service, captured)
    except BaseException as e:  # the handler's initialize (or import) failed: report it whole
        send_message(out_fd, {"loaded": False, "error": f"{type(e).__name__}: {e}", "causes": causes(e),
                              "traceback": traceback.format_exc()})
        return 1
    send_message(out_fd, {"loaded": True, "seconds": time.perf_counter() - t0})
    while True:
        try:
            msg = read_message(in_fd)
        except EOFError:
            return 0
        requests = msg["requests"]
        t = time.perf_counter_ns()
        captured.clear()
        if seen is not None:
            seen.clear()
        for v in (phases or {}).values():
            v.clear()
        try:
            raw = service.predict(_otf_batch(requests))
            ms = (time.perf_counter_ns() - t) / 1e6
            code, message, per_request = parse_predict_response(raw)
            answers = frontend_answers(code, message, per_request, len(requests))
            cause = quote_exception(captured[-1], model_dir) if captured else None
            inner, why = inner_rows(seen, len(requests))
            reply = {"answers": answers, "ms": ms, "cause": cause, "inner": inner, "inner_why": why}
            if phases is not None or phases_why is not None:
                reply["phases"] = {k: sum(v) for k, v in phases.items()} if phases is not None else None
                reply["phases_why"] = phases_why
            send_message(out_fd, reply)
        except BaseException as e:  # never expected: Service.predict catches the handler's errors
            send_message(out_fd, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
