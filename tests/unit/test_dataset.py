import numpy as np
import pandas as pd
import pytest

from pipeline.spec import load_spec
from pipeline.stages.dataset import load_dataset as _load_dataset
from pipeline.errors import DatasetError
from tests.helpers import make_project


def load_dataset(spec):
    return _load_dataset(spec).rows


@pytest.fixture
def project(tmp_path):
    spec_path = make_project(tmp_path)
    return spec_path, tmp_path / "data.csv", pd.read_csv(tmp_path / "data.csv")


def test_loads_rows_in_shape(project):
    spec_path, _, df = project
    data = load_dataset(load_spec(spec_path))
    assert len(data) == len(df) and data.features.shape == (len(df), 4)
    assert data.ids[0] == "row-000" and data.labels.dtype == np.int64


def test_missing_file(project):
    spec_path, csv, _ = project
    csv.unlink()
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(load_spec(spec_path))


def test_empty_dataset(project):
    spec_path, csv, df = project
    df.head(0).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(load_spec(spec_path))


def test_missing_label_column_lists_columns(project):
    spec_path, csv, df = project
    df.drop(columns=["label"]).to_csv(csv, index=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec_path))
    assert "label_column 'label' not found" in str(e.value) and "'f0'" in str(e.value)


def test_missing_id_column(project):
    spec_path, csv, df = project
    df.drop(columns=["id"]).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match="id_column 'id' not found"):
        load_dataset(load_spec(spec_path))


def test_duplicate_ids(project):
    spec_path, csv, df = project
    df.loc[3, "id"] = df.loc[2, "id"]
    df.to_csv(csv, index=False)
    with pytest.raises(DatasetError, match="row-002"):
        load_dataset(load_spec(spec_path))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite_features_name_the_row(project, bad):
    spec_path, csv, df = project
    df.loc[5, "f2"] = bad
    df.to_csv(csv, index=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec_path))
    assert "NaN or infinite" in str(e.value) and "id row-005: f2" in str(e.value)


def test_labels_outside_the_model_classes(project):
    spec_path, csv, df = project
    df.loc[0, "label"] = 7
    df.to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=r"outside the model's classes 0..2: values \[7\]"):
        load_dataset(load_spec(spec_path))


def test_wrong_feature_count(project):
    spec_path, csv, df = project
    df.assign(f4=1.0).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match="5 feature columns but dataset.input_shape \\[4\\] needs 4"):
        load_dataset(load_spec(spec_path))


def test_parquet_and_leakage_hashes(tmp_path):
    spec_path = make_project(tmp_path, spec_overrides={"dataset": {"path": "data.parquet", "input_shape": [4],
                                                                   "train_path": "data.csv"}})
    pd.read_csv(tmp_path / "data.csv").to_parquet(tmp_path / "data.parquet")
    spec = load_spec(spec_path)
    res = _load_dataset(spec)
    assert len(res.rows) == 60 and res.training_rows == 60
    assert sorted(res.leaked_ids) == sorted(res.rows.ids), "every eval row is also a training row"
