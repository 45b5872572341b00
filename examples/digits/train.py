"""Train the digits CNN deterministically: `python -m examples.digits.train [--out DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from examples._common import accuracy, split_frames, train_classifier, write_outputs
from examples.digits.model import build_model

HERE = Path(__file__).resolve().parent


def train(out_dir: Path | None = None) -> dict:
    """Train on a stratified 70% of load_digits(); write weights.pt, train.csv, test.csv.

    Returns:
        Paths written, train/test accuracy and rows dropped from test as duplicates of training rows.
    """
    out_dir = Path(out_dir or HERE)
    d = load_digits()
    cols = [f"px_{i}" for i in range(64)]
    train_df, test_df, dropped = split_frames(d.data, d.target, cols, "digits")
    shape = (-1, 1, 8, 8)
    xtr, ytr = train_df[cols].to_numpy().reshape(shape), train_df["label"].to_numpy()
    xte, yte = test_df[cols].to_numpy().reshape(shape), test_df["label"].to_numpy()
    torch.manual_seed(0)  # the initial weights
    model = train_classifier(build_model(), xtr, ytr, epochs=30, lr=2e-3)
    out = write_outputs(out_dir, model, train_df, test_df)
    return {**out, "train_accuracy": accuracy(model, xtr, ytr), "test_accuracy": accuracy(model, xte, yte),
            "test_rows": len(test_df), "dropped_duplicates": dropped}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None)
    print(train(ap.parse_args().out))
