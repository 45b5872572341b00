"""Train the breast-cancer records MLP deterministically: `python -m examples.breast_cancer_records.train [--out DIR]`.

The data, split and training are those of ``examples/breast_cancer`` (label 1 = malignant,
the positive class). Besides weights.pt, train.csv and test.csv it writes ``features.json``,
the feature order the handler builds each record's tensor in (packed into the .mar).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer

from examples._common import accuracy, recall, split_frames, summary, train_classifier, write_outputs
from examples.breast_cancer_records.model import build_model

HERE = Path(__file__).resolve().parent


def feature_names() -> list[str]:
    """The 30 feature names of `load_breast_cancer()` in snake_case (`mean radius` -> `mean_radius`), in order."""
    return [str(n).replace(" ", "_") for n in load_breast_cancer().feature_names]


def train(out_dir: Path | None = None) -> dict[str, Any]:
    """Train on a stratified 70% of `load_breast_cancer()`; write weights.pt, train.csv, test.csv, features.json.

    Args:
        out_dir: where to write; defaults to this example's folder.

    Returns:
        Paths written (`weights`, `train`, `test`, `features`), `train_accuracy`, `test_accuracy`,
        `malignant_recall` (on the test rows), `test_rows` and `dropped_duplicates`.
    """
    out_dir = Path(out_dir) if out_dir is not None else HERE
    d = load_breast_cancer()
    cols = feature_names()
    y = 1 - d.target  # 1 = malignant
    train_df, test_df, dropped = split_frames(d.data, y, cols, "bc")
    xtr, ytr = train_df[cols].to_numpy(), train_df["label"].to_numpy()
    xte, yte = test_df[cols].to_numpy(), test_df["label"].to_numpy()
    torch.manual_seed(0)  # the initial weights
    model = build_model()
    with torch.no_grad():
        model.mean.copy_(torch.from_numpy(xtr.mean(axis=0).astype(np.float32)))
        model.std.copy_(torch.from_numpy(xtr.std(axis=0).astype(np.float32) + 1e-6))
    model = train_classifier(model, xtr, ytr, epochs=20, lr=3e-3, batch_size=32)
    paths = write_outputs(out_dir, model, train_df, test_df)
    paths["features"] = out_dir / "features.json"
    paths["features"].write_text(json.dumps(cols, indent=2) + "\n", encoding="utf-8")
    return {**paths, "train_accuracy": accuracy(model, xtr, ytr), "test_accuracy": accuracy(model, xte, yte),
            "malignant_recall": recall(model, xte, yte, positive=1), "test_rows": len(test_df),
            "dropped_duplicates": dropped}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: examples/breast_cancer_records)")
    print(summary(train(ap.parse_args().out)))
