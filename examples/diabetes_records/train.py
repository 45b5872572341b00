"""Train the diabetes regression MLP deterministically: `python -m examples.diabetes_records.train [--out DIR]`.

scikit-learn's bundled diabetes data (442 rows, 10 features, no download): 70/30 split, inputs
standardised and the target normalised with the training rows' statistics (kept as buffers in
the model), MSE with Adam, seeded, one thread. Writes weights.pt, train.csv, test.csv (columns
id, label, then the features; label is the progression, a float) and features.json, the
feature order the handler builds each record's tensor in (packed into the .mar).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn

from examples._common import SEED, summary, write_outputs
from examples.diabetes_records.model import build_model

HERE = Path(__file__).resolve().parent
EPOCHS = 150
TEST_ROWS = 24  # a small held-out set: the served replay stays a few seconds


def _frame(x: np.ndarray, y: np.ndarray, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(x[rows].astype(np.float64), columns=columns)
    df.insert(0, "label", y[rows].astype(np.float64))
    df.insert(0, "id", [f"diabetes-{i:04d}" for i in rows])
    return df


def train(out_dir: Path | None = None) -> dict[str, Any]:
    """Train into ``out_dir`` (default: this folder).

    Returns:
        The paths written and the test MAE and R2 of the trained model.
    """
    out_dir = Path(out_dir) if out_dir is not None else HERE
    data = load_diabetes()
    x, y, columns = data.data, data.target, list(data.feature_names)
    tr, te = train_test_split(np.arange(len(y)), test_size=TEST_ROWS, random_state=SEED)
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_model()
    try:
        with torch.no_grad():
            model.mean.copy_(torch.from_numpy(x[tr].mean(0).astype(np.float32)))
            model.std.copy_(torch.from_numpy(x[tr].std(0).astype(np.float32)))
            model.y_mean.fill_(float(y[tr].mean()))
            model.y_std.fill_(float(y[tr].std()))
        xt = torch.from_numpy(x[tr].astype(np.float32))
        zt = torch.from_numpy(((y[tr] - y[tr].mean()) / y[tr].std()).astype(np.float32))[:, None]
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_fn = nn.MSELoss()
        model.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(xt), generator=g)
            for i in range(0, len(xt), 64):
                b = order[i: i + 64]
                opt.zero_grad()
                loss_fn(model.normalised(xt[b]), zt[b]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x[te].astype(np.float32)))[:, 0].numpy()
    paths = write_outputs(out_dir, model, _frame(x, y, tr, columns), _frame(x, y, te, columns))
    paths["features"] = out_dir / "features.json"
    paths["features"].write_text(json.dumps(columns, indent=2) + "\n", encoding="utf-8")
    err = pred - y[te]
    return {**paths, "test_mae": float(np.abs(err).mean()),
            "test_r2": float(1 - (err ** 2).sum() / ((y[te] - y[te].mean()) ** 2).sum())}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: examples/diabetes_records)")
    print(summary(train(ap.parse_args().out)))
