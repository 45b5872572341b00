"""The detection and segmentation traps, each run in-process (``--until handled``: the handler runs in
TorchServe's own loader, no server) and blamed on the right layer.

Each trap is a handler file subclassing TorchServe's built-in with the one mistake users make;
the model, weights and reference are the example's, so the exported stage matches the baseline
and the handled stage is the first that differs.
"""

import json
import textwrap

import pytest
import yaml

from tests.integration.conftest import run_cli
from tests.integration.test_tasks_vision import _report, small_spec

pytestmark = pytest.mark.integration

DETECTION_TRAPS = {
    # resizes for the model and forgets to scale the boxes back to the image's pixels
    "resized_not_scaled_back": """
        from torchvision import transforms
        from ts.torch_handler.object_detector import ObjectDetector

        class Resizing(ObjectDetector):
            image_processing = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
    """,
    # answers [x, y, width, height] where the format says [x1, y1, x2, y2]
    "xywh_as_xyxy": """
        from ts.torch_handler.object_detector import ObjectDetector

        class XYWH(ObjectDetector):
            def postprocess(self, data):
                for d in data:
                    b = d["boxes"].clone()
                    b[:, 2:] -= b[:, :2]
                    d["boxes"] = b
                return super().postprocess(data)
    """,
    # 0-based labels against a 1-based model (background first): every class named as its neighbour
    "labels_off_by_one": """
        from ts.torch_handler.object_detector import ObjectDetector

        class OffByOne(ObjectDetector):
            def postprocess(self, data):
                for d in data:
                    d["labels"] = d["labels"] - 1
                return super().postprocess(data)
    """,
}

SEGMENTATION_TRAPS = {
    # the max over the height instead of the classes: a 4 x 224 grid of column maxima
    "argmax_wrong_dim": """
        import torch
        from ts.torch_handler.image_segmenter import ImageSegmenter

        class WrongDim(ImageSegmenter):
            def postprocess(self, data):
                p = torch.softmax(data["out"], dim=1).max(dim=2)
                return torch.stack([p.indices.float(), p.values], dim=3).tolist()
    """,
    # the class map computed at a quarter of the size and upsampled bilinear: classes blended at the edges
    "mask_upsampled_bilinear": """
        import torch
        from ts.torch_handler.image_segmenter import ImageSegmenter

        class Bilinear(ImageSegmenter):
            def postprocess(self, data):
                p = torch.softmax(data["out"], dim=1).max(dim=1)
                small = p.indices[:, None, ::4, ::4].float()
                cls = torch.nn.functional.interpolate(small, size=p.indices.shape[-2:], mode="bilinear").round()
                return torch.stack([cls[:, 0], p.values], dim=3).tolist()
    """,
}


def _trap_spec(tmp, example: str, rows: int, source: str) -> str:
    handler = tmp / "handler.py"
    handler.write_text(textwrap.dedent(source))
    spec_path = small_spec(tmp, example, rows)
    spec = yaml.safe_load(spec_path.read_text())
    ref = "builtin:object_detector" if example == "shapes_detect" else "builtin:image_segmenter"
    spec["model"]["preprocess"] = ref
    spec["handler"]["name"] = str(handler)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(spec_path)


def _run_trap(tmp, example, rows, source) -> dict:
    spec = _trap_spec(tmp, example, rows, source)
    res = run_cli("run", spec, "--until", "handled", "--reports-dir", str(tmp / "reports"), "--model-store",
                  str(tmp / "store"), timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "VERDICT: FAIL" in res.stdout
    return _report(tmp / "reports")


def _failed(rep: dict, stage: str) -> set[str]:
    return {c["name"] for c in rep["gate"]["checks"] if c["stage"] == stage and not c["passed"] and c["is_gating"]}


@pytest.mark.parametrize("trap", sorted(DETECTION_TRAPS))
def test_detection_trap_blamed_on_the_handler(no_leftovers, trap):
    rep = _run_trap(no_leftovers, "shapes_detect", 4, DETECTION_TRAPS[trap])
    assert rep["plan"]["answers"]["format"] == "detection"
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    assert "exported" not in {s["stage"] for s in rep["attribution"]["steps"] if s["differs"]}
    failed = _failed(rep, "handled")
    assert "identical answers" in failed, failed
    assert not _failed(rep, "exported")
    rows = [d for d in rep["diverging_rows"] if d["stage"] == "handled"]
    assert rows, "the differing rows are listed"
    if trap == "labels_off_by_one":
        assert any("label" in d["quantity"] for d in rows), rows[:2]
        assert rep["paired_tests"]["handled"]["differences"]["label_mismatches"] >= 1
    if trap == "xywh_as_xyxy":
        # read as xyxy, most boxes have x2 < x1: answers invalid on their own, without any reference
        assert "answers valid on their own" in failed
    if trap == "resized_not_scaled_back":
        assert rep["metrics"]["handled"]["figures"]["map_50"] < rep["metrics"]["baseline"]["figures"]["map_50"]


@pytest.mark.parametrize("trap", sorted(SEGMENTATION_TRAPS))
def test_segmentation_trap_blamed_on_the_handler(no_leftovers, trap):
    rep = _run_trap(no_leftovers, "shapes_segment", 3, SEGMENTATION_TRAPS[trap])
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    failed = _failed(rep, "handled")
    assert "identical answers" in failed and "pixel class agreement" in failed, failed
    if trap == "argmax_wrong_dim":
        assert "answers valid on their own" in failed
        bad = rep["metrics"]["handled"]["invalid_answers"]
        assert any("224x224 expected" in p for ps in bad.values() for p in ps), bad
    else:
        # the classes are blended only at the shapes' edges: most pixels still agree
        worst = rep["paired_tests"]["handled"]["differences"]["pixel_disagreement"]
        assert 0 < worst < 0.2


def test_duplicate_label_names_refused_before_any_stage(tmp_path):
    spec_path = small_spec(tmp_path, "shapes_detect", 2)
    spec = yaml.safe_load(spec_path.read_text())
    label_map = tmp_path / "index_to_name.json"
    label_map.write_text(json.dumps({"0": "background", "1": "box", "2": "green_disc", "3": "box"}))
    spec["handler"]["extra_files"] = [str(label_map)]
    spec["model"].pop("class_names")
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = run_cli("run", str(spec_path), "--until", "handled", "--reports-dir", str(tmp_path / "reports"),
                  "--model-store", str(tmp_path / "store"), timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "'box' names classes 1 and 3" in res.stdout + res.stderr


def test_mixed_image_sizes_at_batch_size_two_refused_before_any_stage(tmp_path):
    from PIL import Image

    spec_path = small_spec(tmp_path, "shapes_detect", 2, serving__batch_size=2)
    manifest = tmp_path / "test.csv"
    import pandas as pd

    df = pd.read_csv(manifest)
    big = tmp_path / "big.png"
    Image.open(df["path"][1]).resize((96, 96)).save(big)
    df.loc[1, "path"] = str(big)
    df.to_csv(manifest, index=False)
    spec = yaml.safe_load(spec_path.read_text())
    # the resized image keeps its file name's annotations out: use the manifest's boxes, scaled
    spec["dataset"].pop("annotations")
    spec["dataset"]["label_column"] = "boxes"
    df.loc[1, "boxes"] = "[]"
    df.to_csv(manifest, index=False)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = run_cli("run", str(spec_path), "--until", "handled", "--reports-dir", str(tmp_path / "reports"),
                  "--model-store", str(tmp_path / "store"), timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "2 sizes" in out and "64x64" in out and "96x96" in out and "torch.stack" in out


def test_detections_that_depend_on_the_batch_caught_by_handled_at_batch_n(no_leftovers):
    from tests.integration.test_tasks_vision import EXAMPLES

    tmp = no_leftovers
    # the example's detector, rescaling each image by the batch's mean brightness (a stand-in for the
    # padding to the batch's largest image that moves R-CNN outputs with the batch: vision #4257)
    source = (EXAMPLES / "shapes_detect" / "model.py").read_text()
    patched = source.replace("heat, size, offset = self.heads(x)",
                             "heat, size, offset = self.heads(x * (x.mean() / x.mean(dim=(1, 2, 3), keepdim=True)))")
    assert patched != source
    (tmp / "model.py").write_text(patched)
    spec_path = small_spec(tmp, "shapes_detect", 4, serving__batch_size=2)
    spec = yaml.safe_load(spec_path.read_text())
    spec["model"]["factory"] = f"{tmp / 'model.py'}:build_model"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = run_cli("run", str(spec_path), "--until", "handled", "--reports-dir", str(tmp / "reports"),
                  "--model-store", str(tmp / "store"), timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    rep = _report(tmp / "reports")
    assert rep["plan"]["stages"] == ["baseline", "exported", "handled", "handled@batch2"]
    assert not _failed(rep, "handled"), _failed(rep, "handled")  # one image at a time: the baseline's answers
    assert "identical answers" in _failed(rep, "handled@batch2")
    differs = [s["stage"] for s in rep["attribution"]["steps"] if s["differs"]]
    assert differs == ["handled@batch2"], rep["attribution"]
    assert "batch" in rep["attribution"]["summary"]
