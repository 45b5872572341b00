"""Render the shapes and train their detector: `python -m examples.shapes_detect.train [--out DIR]`.

Synthetic 64x64 RGB images (examples/_shapes.py: one to three red boxes, green discs and blue
boxes on noise) are written as ``images/{train,test}/<id>.png`` beside ``annotations_test.json``
(COCO: images, annotations with ``bbox`` as [x, y, width, height] in pixels, categories),
``annotations_train.json``, manifests ``{train,test}.csv`` (id, path and the same boxes as a JSON
column) and ``index_to_name.json`` (the built-in ``object_detector`` names
each box's label with it). The model trains on exactly what the built-in feeds it (ToTensor of
the PNG: floats in [0, 1]), CenterNet's losses (focal loss on Gaussian centre heatmaps, L1 on
log sizes and offsets at the centres), seeded, in well under a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from examples._common import summary
from examples._shapes import CLASS_NAMES, SEED, Shape, png_bytes, render
from examples.shapes_detect.model import NUM_CLASSES, STRIDE, build_model

HERE = Path(__file__).resolve().parent
SIZE = 64
N_TRAIN, N_TEST = 320, 24
EPOCHS, BATCH, LR = 40, 32, 5e-3


def coco(ids: list[str], shapes: list[list[Shape]], size: int) -> dict[str, Any]:
    """A COCO annotations document for the images `ids` (file names `<id>.png`)."""
    images, anns = [], []
    for n, (rid, objs) in enumerate(zip(ids, shapes), start=1):
        images.append({"id": n, "file_name": f"{rid}.png", "width": size, "height": size})
        for s in objs:
            x0, y0, x1, y1 = s.box
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": s.label,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    cats = [{"id": i, "name": name} for i, name in enumerate(CLASS_NAMES) if i > 0]
    return {"images": images, "annotations": anns, "categories": cats}


def _targets(shapes: list[list[Shape]], size: int) -> tuple[torch.Tensor, ...]:
    h = w = size // STRIDE
    heat = np.zeros((len(shapes), NUM_CLASSES, h, w), np.float32)
    reg = np.zeros((len(shapes), 4, h, w), np.float32)  # log w, log h, offset x, offset y
    mask = np.zeros((len(shapes), 1, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for i, objs in enumerate(shapes):
        for s in objs:
            x0, y0, x1, y1 = s.box
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            j, k = min(int(cx), w - 1), min(int(cy), h - 1)
            sigma = max(x1 - x0, y1 - y0) / STRIDE / 6 + 0.3
            g = np.exp(-((xx - j) ** 2 + (yy - k) ** 2) / (2 * sigma ** 2))
            heat[i, s.label - 1] = np.maximum(heat[i, s.label - 1], g)
            reg[i, :, k, j] = (np.log((x1 - x0) / STRIDE), np.log((y1 - y0) / STRIDE), cx - j, cy - k)
            mask[i, 0, k, j] = 1.0
    return torch.from_numpy(heat), torch.from_numpy(reg), torch.from_numpy(mask)


def _focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    loss = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * (1 - target) ** 4 * p ** 2 * torch.log(1 - p))
    return loss.sum() / pos.sum().clamp(min=1)


def train(out_dir: Path | None = None) -> dict[str, Any]:
    """Render N_TRAIN + N_TEST images, train the detector on the first N_TRAIN, write weights.pt.

    Args:
        out_dir: where to write; defaults to this example's folder.

    Returns:
        Paths written, image counts and the final training loss.
    """
    out_dir = Path(out_dir) if out_dir is not None else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    images = out_dir / "images"
    if images.exists():
        shutil.rmtree(images)
    split: dict[str, tuple[list[str], list[np.ndarray], list[list[Shape]]]] = {}
    for name, count in (("train", N_TRAIN), ("test", N_TEST)):
        (images / name).mkdir(parents=True)
        ids, arrays, shapes = [], [], []
        for n in range(count):
            img, _, objs = render(rng, SIZE, 10, 24)
            rid = f"shapes-{name}-{n:04d}"
            (images / name / f"{rid}.png").write_bytes(png_bytes(img))
            ids.append(rid)
            arrays.append(img)
            shapes.append(objs)
        split[name] = (ids, arrays, shapes)
        # the same boxes as a manifest with a JSON column, the other label format package-validate reads
        pd.DataFrame({"id": ids, "path": [f"images/{name}/{rid}.png" for rid in ids],
                      "boxes": [json.dumps([{"box": list(s.box), "label": CLASS_NAMES[s.label]} for s in objs])
                                for objs in shapes]}).to_csv(out_dir / f"{name}.csv", index=False)
        (out_dir / f"annotations_{name}.json").write_text(json.dumps(coco(ids, shapes, SIZE)) + "\n",
                                                          encoding="utf-8")
    label_map = out_dir / "index_to_name.json"
    label_map.write_text(json.dumps({str(i): n for i, n in enumerate(CLASS_NAMES)}, indent=2) + "\n",
                         encoding="utf-8")

    _, arrays, shapes = split["train"]
    # ToTensor of the PNG: the PNG is lossless, so the array / 255 is the same tensor
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    heat_t, reg_t, mask_t = _targets(shapes, SIZE)
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loss = torch.zeros(())
    try:
        model.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), BATCH):
                b = order[i : i + BATCH]
                heat, size, offset = model(x[b])
                m = mask_t[b]
                reg = torch.cat([size, offset], 1)
                loss = _focal(heat, heat_t[b]) + (m * (reg - reg_t[b]).abs()).sum() / m.sum().clamp(min=1)
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    weights = out_dir / "weights.pt"
    torch.save(model.state_dict(), weights)
    return {"weights": weights, "images": images, "label_map": label_map,
            "annotations": out_dir / "annotations_test.json", "train_images": N_TRAIN, "test_images": N_TEST,
            "final_loss": round(float(loss.detach()), 4)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: examples/shapes_detect)")
    print(summary(train(ap.parse_args().out)))
