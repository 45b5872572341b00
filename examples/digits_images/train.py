"""Render the digits as images and train their CNN: `python -m examples.digits_images.train [--out DIR]`.

scikit-learn's bundled 8x8 digits become RGB PNG files (grey replicated to three channels,
because TorchServe's built-in ``image_classifier`` never converts image modes; pixel =
value * 255 / 16; upscaled to 32x32 with NEAREST so they look like images) in an
ImageFolder-style layout, ``images/{train,test}/<class name>/<id>.png``, beside
``index_to_name.json``. The model is trained through the very preprocessing the served
model gets (the built-in handler's transforms on the PNG bytes, as package-validate's
reference does); since its first layer is a fixed pool, the pooled [3, 8, 8] tensors are
computed once and the rest of the network is trained on them (the same gradients).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from examples._common import accuracy, split_frames, summary, train_classifier
from examples.digits_images.model import build_model
from pipeline.inputs.image import image_classifier_transforms, vision_handler_input

HERE = Path(__file__).resolve().parent
COLUMNS = [f"px_{i}" for i in range(64)]
# Sorted folder names must follow the class indices: the digit first, then its name.
CLASS_NAMES = ("0_zero", "1_one", "2_two", "3_three", "4_four", "5_five", "6_six", "7_seven", "8_eight", "9_nine")
SIZE = 32  # rendered image side, pixels


def render_png(pixels: np.ndarray) -> bytes:
    """One digit (64 values 0..16) as the bytes of a SIZE x SIZE RGB PNG; same input, same bytes."""
    grey = np.round(np.asarray(pixels, np.float64).reshape(8, 8) * 255.0 / 16.0).astype(np.uint8)
    img = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
    img = img.resize((SIZE, SIZE), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # Pillow writes no timestamp or other varying chunk
    return buf.getvalue()


def write_images(root: Path, ids: list[str], labels: np.ndarray, pixels: np.ndarray) -> list[bytes]:
    """Write `root/<class name>/<id>.png` for every row (root emptied first); return the PNG bytes."""
    if root.exists():
        shutil.rmtree(root)
    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True)
    out = []
    for rid, label, px in zip(ids, labels, pixels):
        data = render_png(px)
        (root / CLASS_NAMES[int(label)] / f"{rid}.png").write_bytes(data)
        out.append(data)
    return out


def pooled_inputs(model: torch.nn.Module, pngs: list[bytes]) -> np.ndarray:
    """The model's fixed pool applied to each PNG as the built-in handler preprocesses it: [N, 3, 8, 8]."""
    transform = image_classifier_transforms()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is several times faster than two on a shared machine
    try:
        with torch.no_grad():
            return torch.cat([model.pool(vision_handler_input(b, transform).unsqueeze(0)) for b in pngs]).numpy()
    finally:
        torch.set_num_threads(threads)


def train(out_dir: Path | None = None) -> dict[str, Any]:
    """Render a stratified 70/30 split of `load_digits()` as PNGs; train on the 70%; write weights.pt.

    Args:
        out_dir: where to write; defaults to this example's folder.

    Returns:
        Paths written (`weights`, `images`, `label_map`), `train_accuracy`, `test_accuracy`,
        `train_images`, `test_images` and `dropped_duplicates` (test rows equal to a training row).
    """
    out_dir = Path(out_dir) if out_dir is not None else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    train_df, test_df, dropped = split_frames(d.data, d.target, COLUMNS, "digits")
    images = out_dir / "images"
    ytr, yte = train_df["label"].to_numpy(), test_df["label"].to_numpy()
    png_tr = write_images(images / "train", list(train_df["id"]), ytr, train_df[COLUMNS].to_numpy())
    png_te = write_images(images / "test", list(test_df["id"]), yte, test_df[COLUMNS].to_numpy())
    label_map = out_dir / "index_to_name.json"
    label_map.write_text(json.dumps({str(i): n for i, n in enumerate(CLASS_NAMES)}, indent=2) + "\n",
                         encoding="utf-8")
    torch.manual_seed(0)  # the initial weights
    model = build_model()
    xtr, xte = pooled_inputs(model, png_tr), pooled_inputs(model, png_te)
    train_classifier(model.body, xtr, ytr, epochs=30, lr=2e-3)
    model.eval()
    weights = out_dir / "weights.pt"
    torch.save(model.state_dict(), weights)
    return {"weights": weights, "images": images, "label_map": label_map,
            "train_accuracy": accuracy(model.body, xtr, ytr), "test_accuracy": accuracy(model.body, xte, yte),
            "train_images": len(png_tr), "test_images": len(png_te), "dropped_duplicates": dropped}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: examples/digits_images)")
    print(summary(train(ap.parse_args().out)))
