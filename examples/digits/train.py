"""Train the digits CNN deterministically: `python -m examples.digits.train [--out DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits

from examples._common import accuracy, split_frames, summary, train_classifier, write_outputs
from examples.digits.model import build_model

HERE = Path(__file__).resolve().parent
COLUMNS = [f"px_{i}" for i in range(64)]


def train(out_dir: Path | None = None) -> dict[str, Any]:
    """Train on a stratified 70% of `load_digits()`; write weights.pt, train.csv, test.csv.

    Args:
        out_dir: where to write; defaults to this example's folder.

    Returns:
        Paths written (`weights`, `train`, `test`), `train_accuracy`, `test_accuracy`,
        `test_rows` and `dropped_duplicates` (test rows equal to a training row, left out).
    """
    out_dir = Path(out_dir) if out_dir is not None else HERE
    d = load_digits()
    train_df, test_df, dropped = split_frames(d.data, d.target, COLUMNS, "digits")
    shape = (-1, 1, 8, 8)  # raw pixels 0..16; the model scales them itself
    xtr, ytr = train_df[COLUMNS].to_numpy().reshape(shape), train_df["label"].to_numpy()
    xte, yte = test_df[COLUMNS].to_numpy().reshape(shape), test_df["label"].to_numpy()
    torch.manual_seed(0)  # the initial weights
    model = train_classifier(build_model(), xtr, ytr, epochs=30, lr=2e-3)
    paths = write_outputs(out_dir, model, train_df, test_df)
    return {**paths, "train_accuracy": accuracy(model, xtr, ytr), "test_accuracy": accuracy(model, xte, yte),
            "test_rows": len(test_df), "dropped_duplicates": dropped}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: examples/digits)")
    print(summary(train(ap.parse_args().out)))
