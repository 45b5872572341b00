"""init's one-row run of the handler, in-process, as the handled stage runs it.

The spec's handler is packed with the model into a .mar by the archive stage
(``build_archive``) and loaded in a child process through TorchServe's handler API
(``HandlerProcess``: ``ts.model_loader``, ``initialize``, ``Service.predict``), then given
the first row with the very body the replay sends. Its answer is read by the registry's
``sniff_format``, so the spec states the format the handler was seen to answer in. A handler
that fails is quoted, never worked around: the spec init writes fails the same way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from pipeline.errors import PipelineError
from pipeline.spec import Spec
from pipeline.torchserve.logs import tail
from pipeline.wire import worker_view

log = logging.getLogger(__name__)

QUOTE_CHARS = 160
_LOG_LINES = 200


@dataclass(frozen=True)
class AnswerCheck:
    """What the handler answered to one row.

    Attributes:
        row_id: the row sent.
        answer: the answer body (cut to ``QUOTE_CHARS``), or None when it failed.
        format: the answer format ``sniff_format`` saw, or None (not recognised, or failed).
        failure: the handler's failure, quoted (status, message, the log's last error lines), or None.
    """

    row_id: str
    answer: str | None = None
    format: str | None = None
    failure: str | None = None


def quote(text: str | bytes, limit: int = QUOTE_CHARS) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _export(spec: Spec, model, example, out: Path) -> SimpleNamespace:
    """The model as the export stage writes it for the spec's mode (script, trace or eager).

    ``build_archive`` reads only the artefact's path and the eager model file: this is that much."""
    from pipeline.model.loading import model_file_for_eager
    from pipeline.stages.export import _script_or_trace

    out.mkdir(parents=True, exist_ok=True)
    if spec.export.mode == "eager":
        path = out / f"{spec.name}_state_dict.pt"
        shutil.copyfile(spec.model.weights, path)
        return SimpleNamespace(path=path, model_file=model_file_for_eager(spec))
    path = out / f"{spec.name}.pt"
    _script_or_trace(spec, model, example, path)
    return SimpleNamespace(path=path, model_file=None)


def _log_errors(path: Path) -> str:
    """The handler log's last traceback line (the exception), if any."""
    lines = [ln.strip() for ln in tail(path, _LOG_LINES) if ln.strip()] if path.is_file() else []
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return errors[-1] if errors else ""


def check_answer(spec: Spec, plan, model, rows, example, input_shape: tuple[int, ...]) -> AnswerCheck:
    """Run the spec's handler on the first row in-process and read its answer.

    Args:
        spec: the spec init wrote (the handler, its files, the export mode, serving deadlines).
        plan: its plan (the resolved handler, the codec: envelope and class map).
        model: the eager model.
        rows: the dataset's rows (row 0 is sent).
        example: one batch of the model's input, for tracing.
        input_shape: one row's input shape (this project's handlers read it from the archive).

    Returns:
        The answer and its format, or the failure quoted; the caller writes either into the spec.
    """
    from pipeline.answers.base import AnswerError
    from pipeline.answers.registry import sniff_format
    from pipeline.stages.archive import ArchiveConfig, build_archive
    from pipeline.stages.handled import HandledConfig, HandlerProcess

    row_id = rows.ids[0]
    with tempfile.TemporaryDirectory(prefix="pv-init-") as tmp:
        work = Path(tmp)
        try:
            exported = _export(spec, model, example, work / "export")
            archive = build_archive(spec, ArchiveConfig(work_dir=work / "archive"), plan.handler, exported,
                                    input_shape)
            cfg = HandledConfig(work_dir=work / "handled", mar_path=archive.mar_path, model_name=spec.name,
                                batch_size=1, load_timeout_s=spec.serving.startup_timeout_s,
                                response_timeout_s=spec.serving.response_timeout_s,
                                service_envelope=plan.codec.envelope.service_envelope,
                                secret_env=spec.serving.secret_env)
            cfg.work_dir.mkdir(parents=True)
            body = rows.body(0)
            with HandlerProcess(cfg) as proc:
                payload = plan.codec.request(body, rows.content_type, worker_view(body, rows.content_type))
                ((status, _ct, answer),), _ms = proc.predict([payload])
                cause = _log_errors(proc.log_path)
        except PipelineError as e:  # packing or loading the handler failed: the run will fail the same way
            cause = "; ".join(d for d in (e.details or [])[-2:] if d)
            return AnswerCheck(row_id, failure=quote(f"{e.message}" + (f" ({cause})" if cause else ""), 400))
        if status != 200:
            said = quote(answer)
            return AnswerCheck(row_id, failure=quote(f"status {status}: {said}" + (f"; the handler's log: {cause}"
                                                                                   if cause else ""), 400))
        try:
            doc = plan.codec.envelope.unwrap(answer)
        except AnswerError:
            return AnswerCheck(row_id, answer=quote(answer))
        fmt = sniff_format(doc, spec.model.num_classes, plan.class_map)
        log.info("init: the handler answered row %s in format %s", row_id, fmt)
        return AnswerCheck(row_id, answer=quote(answer), format=fmt)
