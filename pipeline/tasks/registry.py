"""``model.task`` -> the module that owns the task (see ``tasks.base``). A new task is one line here.

Modules are imported on first use, so a run of one task never imports another's dependencies
(detection's torchvision hook, for one). The registry sits low in the layers (the spec, the
inputs and the gate ask it for a task); the task modules sit above the stages, whose code they
call, and nothing imports them but this module, at run time.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from pipeline.errors import ConfigError

DEFAULT_TASK = "classification"
# task name -> module path; each module exposes TASK, an object following ``tasks.base.Task``
TASKS: dict[str, str] = {
    "classification": "pipeline.tasks.classification",
    "multilabel": "pipeline.tasks.multilabel",
    "regression": "pipeline.tasks.regression",
    "detection": "pipeline.tasks.detection",
    "segmentation": "pipeline.tasks.segmentation",
}


def names() -> tuple[str, ...]:
    return tuple(TASKS)


def unknown_task(name: str) -> str:
    """The message for a task no module is registered for, naming the choices."""
    return f"model.task {name!r} is not a task package-validate knows; choose one of {list(TASKS)}"


@lru_cache(maxsize=None)
def task_for(name: str | None) -> "Task":  # noqa: F821 (tasks.base.Task; not imported: see above)
    """The task module's ``TASK`` for ``model.task`` (None: classification); ConfigError (exit 2) for an
    unregistered name."""
    name = name or DEFAULT_TASK
    if name not in TASKS:
        raise ConfigError(unknown_task(name))
    return importlib.import_module(TASKS[name]).TASK


def task_of(spec) -> "Task":  # noqa: F821
    """The task of a spec (classification for a spec or model section without one)."""
    model = getattr(spec, "model", None)
    return task_for(getattr(model, "task", None) or DEFAULT_TASK)


def task_name_of_report(report: dict) -> str:
    """The task a report.json was written for (reports before the task seam are classification's)."""
    spec = report.get("spec") if isinstance(report, dict) else None
    model = spec.get("model") if isinstance(spec, dict) else None
    name = model.get("task") if isinstance(model, dict) else None
    return name if isinstance(name, str) and name else DEFAULT_TASK


def task_of_report(report: dict) -> "Task":  # noqa: F821
    """The task module of a report.json (for the history's figures and a prior run's metrics)."""
    return task_for(task_name_of_report(report))
