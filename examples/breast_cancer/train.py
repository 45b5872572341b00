"""Train the breast-cancer MLP deterministically: `python -m examples.breast_cancer.train [--out DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer

from examples._common import accuracy, split_frames, train_classifier, write_outputs
from examples.breast_cancer.model import build_model

HERE = Path(__file__).resolve().parent


def train(out_dir: Path | None = None) -> dict:
    """Train on a stratified 70% split; label 1 = malignant (scikit-learn's target 0).

    Returns:
        Paths written, train/test accuracy, malignant recall on the test rows.
    """
    out_dir = Path(out_dir or HERE)
    d = load_breast_cancer()
    cols = [n.replace(" ", "_") for n in d.feature_names]
    y = 1 - d.target
    train_df, test_df, dropped = split_frames(d.data, y, cols, "bc")
    xtr, ytr = train_df[cols].to_numpy(), train_df["label"].to_numpy()
    xte, yte = test_df[cols].to_numpy(), test_df["label"].to_numpy()
    torch.manual_seed(0)  # the initial weights
    model = build_model()
    model.mean.copy_(torch.from_numpy(xtr.mean(axis=0).astype(np.float32)))
    model.std.copy_(torch.from_numpy(xtr.std(axis=0).astype(np.float32) + 1e-6))
    model = train_classifier(model, xtr, ytr, epochs=20, lr=3e-3, batch_size=32)
    with torch.no_grad():
        pred = model(torch.from_numpy(xte.astype(np.float32))).argmax(1).numpy()
    recall = float(((pred == 1) & (yte == 1)).sum() / max(1, (yte == 1).sum()))
    out = write_outputs(out_dir, model, train_df, test_df)
    return {**out, "train_accuracy": accuracy(model, xtr, ytr), "test_accuracy": accuracy(model, xte, yte),
            "malignant_recall": recall, "test_rows": len(test_df), "dropped_duplicates": dropped}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None)
    print(train(ap.parse_args().out))
