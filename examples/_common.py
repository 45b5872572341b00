"""Deterministic training shared by the embedded examples (data bundled with scikit-learn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0


def split_frames(x: np.ndarray, y: np.ndarray, columns: list[str], prefix: str, test_size: float = 0.3
                 ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Stratified split into train/test frames with stable ids (`<prefix>-<row index>`).

    Test rows whose features also occur in training (compared as float32 bytes, the way the
    pipeline's leakage check hashes them) are dropped, so the held-out set never overlaps it.

    Returns:
        train frame, test frame, number of test rows dropped as duplicates of training rows.
        Columns: `id`, `label`, then `columns`.
    """
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, random_state=SEED, stratify=y)
    seen = {x[i].astype(np.float32).tobytes() for i in tr}
    kept = np.array([i for i in te if x[i].astype(np.float32).tobytes() not in seen], dtype=np.int64)

    def frame(rows: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(x[rows].astype(np.float64), columns=columns)
        df.insert(0, "label", y[rows].astype(int))
        df.insert(0, "id", [f"{prefix}-{i:04d}" for i in rows])
        return df

    return frame(tr), frame(kept), len(te) - len(kept)


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float,
                     batch_size: int = 64) -> nn.Module:
    """Adam on cross-entropy, seeded, one thread, fixed mini-batch order: same bytes every run.

    The global torch settings it changes (threads, deterministic algorithms) are restored.

    Returns:
        The trained model, in eval mode.
    """
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
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
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    return model.eval()


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Predicted class (argmax of the logits) for each row of `x`."""
    with torch.no_grad():
        return model(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose predicted class equals `y`."""
    return float((predict(model, x) == y).mean())


def recall(model: nn.Module, x: np.ndarray, y: np.ndarray, positive: int = 1) -> float:
    """Recall of class `positive`: predicted positive among the truly positive rows."""
    pos = y == positive
    return float((predict(model, x)[pos] == positive).mean()) if pos.any() else 0.0


def write_outputs(out_dir: Path, model: nn.Module, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, Path]:
    """Write `weights.pt` (the state_dict), `train.csv` and `test.csv` into `out_dir`.

    Returns:
        The three paths, keyed `weights`, `train`, `test`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"weights": out_dir / "weights.pt", "train": out_dir / "train.csv", "test": out_dir / "test.csv"}
    torch.save(model.state_dict(), paths["weights"])
    train.to_csv(paths["train"], index=False)
    test.to_csv(paths["test"], index=False)
    return paths


def summary(result: dict[str, Any]) -> str:
    """One `key: value` line per entry of a `train()` result, floats to 4 decimals."""
    return "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items())
