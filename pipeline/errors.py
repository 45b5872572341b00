"""Every error the pipeline raises on purpose.

    PipelineError                 exit code 3 unless a subclass says otherwise
    ├── ConfigError               2  the spec file: missing, unparsable, a field out of range, a combination
    │                                TorchServe cannot serve, a requirement that is not installed
    ├── DatasetError              2  the labeled rows: missing columns or files, NaN, duplicate ids, rows the
    │                                reference preprocessing cannot read
    ├── ModelError                2  factory import, weights file, state_dict mismatch, a model file
    │                                TorchServe's --model-file cannot load
    ├── UserCodeError             2  the user's own code (factory, preprocessing, handler) raised
    ├── ExportError               2  TorchScript / torch.export could not produce a model
    ├── ArchiveError              2  torch-model-archiver, an existing .mar, a corrupt .mar, the model store
    ├── ReportError               2  the report folder, a baseline report of another schema
    ├── ServerError               3  Java, ports, TorchServe start-up, a worker that never loads
    ├── ReplayError               3  the served model stopped answering mid-replay
    ├── HandledError              3  the in-process handler run could not finish (a hang, a crash)
    ├── DeadlineError             3  the whole-run deadline (--timeout / timeout_s) passed
    ├── LockError                 3  another run holds this model's entry in the model store
    ├── RecordError               3  the run's own record (report files) could not be written at the end:
    │                                a full disk, a folder that stopped being writable; nothing is published
    └── InternalError             3  a bug in package-validate itself (the traceback's tail is reported)

    Interrupted (a KeyboardInterrupt)  130 for SIGINT, 143 for SIGTERM

A message says what failed, the values involved, and what to do next. Errors found
before any server starts are input errors (exit code 2); errors once TorchServe runs are
runtime errors (exit code 3). A failed gate is not an error: see ``evaluate.gate.GateResult``.
One rule decides who is blamed for an exception: raised by the user's code, it is the
user's input error (exit 2); raised by the tool itself, it is an internal error (exit 3).
"""

from __future__ import annotations

import signal


class PipelineError(Exception):
    """Base class: a failure the pipeline detected and can explain."""

    exit_code = 3

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)


class ConfigError(PipelineError):
    """The spec file is missing, unparsable, has an invalid field or an unservable combination."""

    exit_code = 2


class DatasetError(PipelineError):
    """The labeled dataset cannot be scored as the spec describes it."""

    exit_code = 2


class ModelError(PipelineError):
    """The model factory or the weights file do not produce the described model."""

    exit_code = 2


class UserCodeError(PipelineError):
    """The user's own code (model factory, preprocessing function, handler) raised."""

    exit_code = 2


class ExportError(PipelineError):
    """TorchScript or torch.export could not export the model."""

    exit_code = 2


class ArchiveError(PipelineError):
    """The .mar could not be built, or an existing one is unusable."""

    exit_code = 2


class ReportError(PipelineError):
    """Reports cannot be written, or a baseline report cannot be used."""

    exit_code = 2


class ServerError(PipelineError):
    """TorchServe could not be started, or its model never became ready."""

    exit_code = 3


class ReplayError(PipelineError):
    """The served model could not be replayed to the end."""

    exit_code = 3


class HandledError(PipelineError):
    """The handler could not be run in-process to the end (it hung, crashed or never loaded)."""

    exit_code = 3


class DeadlineError(PipelineError):
    """The whole run took longer than its deadline."""

    exit_code = 3


class LockError(PipelineError):
    """Another run is validating the same model into the same model store."""

    exit_code = 3


class RecordError(PipelineError):
    """A file of the run's record could not be written once the run had started; nothing is published."""

    exit_code = 3


class InternalError(PipelineError):
    """An exception inside package-validate itself: a bug to report, never a verdict on the model."""

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived; carries the signal so the exit code can say which.

    A KeyboardInterrupt subclass because asyncio re-raises only SystemExit and
    KeyboardInterrupt from callbacks; any other exception raised by a signal handler
    inside the event loop would be logged and swallowed.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
