"""Render the shapes and train their segmenter: `python -m examples.shapes_segment.train [--out DIR]`.

Synthetic 64x64 RGB images (examples/_shapes.py) are written as ``images/{train,test}/<id>.png``
with their class masks (one byte per pixel, the class index: 0 background, 1 red_box,
2 green_disc, 3 blue_box) as ``masks/{train,test}/<id>.png``, and manifests ``train.csv`` /
``test.csv`` (id, path, mask). The model trains on what the built-in ``image_segmenter``
feeds it (Resize(256), CenterCrop(224), ToTensor, Normalize) against the masks given the same
geometry (Resize(256) with NEAREST, CenterCrop(224): package-validate's own ground truth).
The fixed pool is applied once, so the convolutions train on [3, 56, 56] tensors.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from examples._common import summary
from examples._shapes import SEED, png_bytes, render
from examples.shapes_segment.model import build_model
from pipeline.inputs.image import image_classifier_transforms
from pipeline.tasks.segmentation import mask_in_handler_frame

HERE = Path(__file__).resolve().parent
SIZE = 64
N_TRAIN, N_TEST = 120, 24
EPOCHS, BATCH, LR = 20, 16, 1e-2


def train(out_dir: Path | None = None) -> dict[str, Any]:
    """Render N_TRAIN + N_TEST images and masks, train the segmenter on the first N_TRAIN.

    Args:
        out_dir: where to write; defaults to this example's folder.

    Returns:
        Paths written, image counts and the pixel accuracy on train and test.
    """
    out_dir = Path(out_dir) if out_dir is not None else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 1)
    transform = image_classifier_transforms()
    torch.manual_seed(SEED)
    model = build_model()
    data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in ("images", "masks"):
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for split, count in (("train", N_TRAIN), ("test", N_TEST)):
            (out_dir / "images" / split).mkdir(parents=True)
            (out_dir / "masks" / split).mkdir(parents=True)
            rows, xs, ys = [], [], []
            for n in range(count):
                img, mask, _ = render(rng, SIZE, 12, 28)
                rid = f"seg-{split}-{n:04d}"
                body = png_bytes(img)
                (out_dir / "images" / split / f"{rid}.png").write_bytes(body)
                (out_dir / "masks" / split / f"{rid}.png").write_bytes(png_bytes(mask))
                rows.append({"id": rid, "path": f"images/{split}/{rid}.png", "mask": f"masks/{split}/{rid}.png"})
                with torch.no_grad():
                    xs.append(model.pool(transform(Image.open(io.BytesIO(body))).unsqueeze(0)))
                ys.append(torch.from_numpy(mask_in_handler_frame(mask).astype(np.int64)))
            pd.DataFrame(rows).to_csv(out_dir / f"{split}.csv", index=False)
            data[split] = (torch.cat(xs), torch.stack(ys))
        x, y = data["train"]
        g = torch.Generator().manual_seed(SEED)
        opt = torch.optim.Adam(model.body.parameters(), lr=LR)
        model.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), BATCH):
                b = order[i : i + BATCH]
                logits = torch.nn.functional.interpolate(model.cells(x[b]), size=y.shape[-2:], mode="bilinear",
                                                         align_corners=False)
                loss = torch.nn.functional.cross_entropy(logits, y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()

        def pixel_accuracy(split: str) -> float:
            xs, ys = data[split]
            with torch.no_grad():
                logits = torch.nn.functional.interpolate(model.cells(xs), size=ys.shape[-2:], mode="bilinear",
                                                         align_corners=False)
            return float((logits.argmax(1) == ys).float().mean())

        train_acc, test_acc = pixel_accuracy("train"), pixel_accuracy("test")
    finally:
        torch.set_num_threads(threads)
    weights = out_dir / "weights.pt"
    torch.save(model.state_dict(), weights)
    return {"weights": weights, "images": out_dir / "images", "masks": out_dir / "masks",
            "manifest": out_dir / "test.csv", "train_images": N_TRAIN, "test_images": N_TEST,
            "train_pixel_accuracy": train_acc, "test_pixel_accuracy": test_acc}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: examples/shapes_segment)")
    print(summary(train(ap.parse_args().out)))
