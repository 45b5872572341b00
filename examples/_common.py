"""Deterministic training shared by the embedded examples (data bundled with scikit-learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn


def split_frames(x: np.ndarray, y: np.ndarray, columns: list[str], prefix: str, test_size: float = 0.3
                 ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Stratified split into train/test frames with stable ids; test rows whose features
    also occur in training are dropped so that the held-out set never overlaps it.

    Returns:
        train frame, test frame, number of test rows dropped as duplicates of training rows.
    """
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, random_state=0, stratify=y)
    seen = {x[i].astype(np.float32).tobytes() for i in tr}
    kept = [i for i in te if x[i].astype(np.float32).tobytes() not in seen]

    def frame(rows) -> pd.DataFrame:
        df = pd.DataFrame(x[rows].astype(np.float64), columns=columns)
        df.insert(0, "label", y[rows].astype(int))
        df.insert(0, "id", [f"{prefix}-{i:04d}" for i in rows])
        return df

    return frame(tr), frame(kept), len(te) - len(kept)


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float,
                     batch_size: int = 64) -> nn.Module:
    """Adam on cross-entropy with a fixed seed and fixed mini-batch order: same bytes every run."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=g)
            for i in range(0, len(xt), batch_size):
                b = order[i : i + batch_size]
                opt.zero_grad()
                loss_fn(model(xt[b]), yt[b]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy() == y).mean())


def write_outputs(out_dir: Path, model: nn.Module, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "weights.pt")
    train.to_csv(out_dir / "train.csv", index=False)
    test.to_csv(out_dir / "test.csv", index=False)
    return {"weights": out_dir / "weights.pt", "train": out_dir / "train.csv", "test": out_dir / "test.csv"}
