"""The leakage figure, tested where it is computed: ``Rows.content_hashes`` and ``stages.dataset.load_dataset``.

An evaluation row leaks when its content (an image file's bytes, a text, a record, a row of
features) is also a training row's, whatever it is called and wherever it lies: a renamed copy of
an image IS a leak, a re-encoded image (other bytes) is not. A hash of the path, the id or the row
index would make every copy look new.
"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.inputs.base import FileBodies, MemoryBodies, Rows
from pipeline.spec import parse_spec
from pipeline.stages.dataset import load_dataset


def _png(seed: int, **save) -> bytes:
    px = np.random.default_rng(seed).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px, "RGB").save(buf, "PNG", **save)
    return buf.getvalue()


def _spec(root: Path, dataset: dict):
    return parse_spec({"name": "m", "model": {"factory": "m.py:build", "weights": "w.pt", "num_classes": 2,
                                              "class_names": ["cat", "dog"]},
                       "dataset": dataset}, base_dir=root)


def test_image_leak_is_the_same_bytes_under_any_name_and_a_re_encoding_is_not(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "train" / "t0.png").write_bytes(_png(0))
    (tmp_path / "train" / "t1.png").write_bytes(_png(1))
    # e0: a renamed copy of t0 in another folder; e1: t1's pixels saved again with other PNG settings
    # (other bytes); e2: an image of its own.
    shutil.copyfile(tmp_path / "train" / "t0.png", tmp_path / "eval" / "e0-copy.png")
    (tmp_path / "eval" / "e1.png").write_bytes(_png(1, compress_level=0))
    (tmp_path / "eval" / "e2.png").write_bytes(_png(2))
    assert (tmp_path / "eval" / "e1.png").read_bytes() != (tmp_path / "train" / "t1.png").read_bytes()
    pd.DataFrame({"id": ["e0", "e1", "e2"], "path": [f"eval/{n}" for n in ("e0-copy.png", "e1.png", "e2.png")],
                  "label": ["cat", "dog", "cat"]}).to_csv(tmp_path / "eval.csv", index=False)
    pd.DataFrame({"path": ["train/t0.png", "train/t1.png"], "label": ["cat", "dog"]}).to_csv(
        tmp_path / "train.csv", index=False)
    res = load_dataset(_spec(tmp_path, {"kind": "image", "path": "eval.csv", "train_path": "train.csv"}))
    assert res.training_rows == 2
    assert res.leaked_ids == ("e0",)


def test_text_leak_is_identical_text_under_another_id(tmp_path):
    pd.DataFrame({"id": ["a", "b", "c"], "text": ["good film", "bad film", "Good film"],
                  "label": ["cat", "dog", "cat"]}).to_csv(tmp_path / "eval.csv", index=False)
    pd.DataFrame({"id": ["x", "y"], "text": ["bad film", "good film "], "label": ["dog", "cat"]}).to_csv(
        tmp_path / "train.csv", index=False)
    res = load_dataset(_spec(tmp_path, {"kind": "text", "path": "eval.csv", "train_path": "train.csv"}))
    assert res.leaked_ids == ("b",), "only the identical text leaks (case and a trailing space make other texts)"


def test_record_leak_is_the_same_record_whatever_its_id_or_field_order(tmp_path):
    ev = [{"id": "a", "label": "cat", "w": 1.0, "h": 2.0}, {"id": "b", "label": "dog", "w": 3.0, "h": 4.0},
          {"id": "c", "label": "cat", "w": 5.0, "h": 6.0}]
    tr = [{"id": "t9", "h": 4.0, "w": 3.0, "label": "dog"},  # b, fields in another order
          {"id": "t8", "w": 5.0, "h": 6.5, "label": "cat"}]  # not c: one value differs
    for name, rows in (("eval.jsonl", ev), ("train.jsonl", tr)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = load_dataset(_spec(tmp_path, {"kind": "json", "path": "eval.jsonl", "train_path": "train.jsonl",
                                        "feature_columns": ["w", "h"]}))
    assert res.leaked_ids == ("b",)


def test_no_training_data_means_not_checked_rather_than_nothing_leaked(tmp_path):
    pd.DataFrame({"id": ["a"], "text": ["t"], "label": ["cat"]}).to_csv(tmp_path / "eval.csv", index=False)
    res = load_dataset(_spec(tmp_path, {"kind": "text", "path": "eval.csv"}))
    assert res.leaked_ids is None and res.training_rows is None


def test_content_hash_is_of_the_body_not_of_the_path_id_or_position(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    b.parent.mkdir()
    a.write_bytes(_png(0))
    shutil.copyfile(a, b)
    files = Rows(kind="image", source=tmp_path, ids=("x", "y"), labels=np.zeros(2, np.int64),
                 content_type="application/octet-stream", bodies=FileBodies((a, b)), paths=(a, b))
    h = list(files.content_hashes())
    assert h[0] == h[1] and len(h[0]) == 16
    mem = Rows(kind="text", source=tmp_path, ids=("p", "q", "r"), labels=np.zeros(3, np.int64),
               content_type="text/plain", bodies=MemoryBodies((b"one", b"two", _png(0))))
    assert list(mem.content_hashes()) == [*(list(Rows(kind="text", source=tmp_path, ids=("z", "w"),
                                            labels=np.zeros(2, np.int64), content_type="text/plain",
                                            bodies=MemoryBodies((b"one", b"two"))).content_hashes())), h[0]]
    assert len(set(mem.content_hashes())) == 3


def test_the_result_carries_the_rows_loaded_and_the_log_says_how_many(tmp_path, caplog):
    pd.DataFrame({"id": ["a", "b"], "text": ["t", "u"], "label": ["cat", "dog"]}).to_csv(tmp_path / "eval.csv", index=False)
    with caplog.at_level("INFO", logger="pipeline.stages.dataset"):
        res = load_dataset(_spec(tmp_path, {"kind": "text", "path": "eval.csv"}))
    assert res.rows.ids == ("a", "b") and res.rows.body(1) == b"u"
    assert f"dataset {tmp_path / 'eval.csv'}: 2 text rows" in [r.getMessage() for r in caplog.records]
