"""The task seam: model.task picks a registered module; an unknown one is refused naming the choices."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.tasks import registry
from tests.unit._support import spec_for


def test_a_spec_without_a_task_is_classification():
    spec = spec_for(3)
    assert spec.model.task == "classification"
    assert registry.task_of(spec).name == "classification"


def test_an_unregistered_task_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError) as e:
        spec_for(3, model={"task": "ranking"})
    msg = str(e.value)
    assert "'ranking'" in msg and "model.task" in msg
    for name in registry.TASKS:
        assert name in msg
    assert e.value.exit_code == 2


def test_task_for_refuses_an_unregistered_name_with_exit_2():
    with pytest.raises(ConfigError, match="choose one of"):
        registry.task_for("ranking")
    assert registry.task_for(None).name == "classification"


def test_a_report_before_the_seam_is_classification_and_one_with_a_task_is_that_task():
    assert registry.task_name_of_report({"spec": {"model": {}}}) == "classification"
    assert registry.task_name_of_report({"spec": None}) == "classification"
    assert registry.task_name_of_report({"spec": {"model": {"task": "regression"}}}) == "regression"


def test_every_registered_task_follows_the_protocol():
    needed = ("read_labels", "label_counts", "decode", "decoder", "tolerances", "model_outputs", "answer_outputs",
              "compare", "stage_checks", "row_columns", "report_sections")
    for name in registry.TASKS:
        task = registry.task_for(name)
        assert task.name == name
        assert all(callable(getattr(task, n, None)) for n in needed), name
        assert set(task.default_metrics) <= set(task.gated_metrics), name
        assert task.tracked, name


def test_classification_counts_labels_per_class():
    spec = spec_for(3)
    counts = registry.task_of(spec).label_counts(np.array([0, 2, 2]), spec)
    assert counts.tolist() == [1, 0, 2]
