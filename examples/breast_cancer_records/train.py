"""Train the breast-cancer records MLP deterministically: `python -m examples.breast_cancer_records.train [--out DIR]`.

The data, split and training are those of ``examples/breast_cancer`` (label 1 = malignant,
the positive class; the same bytes of weights.pt, train.csv and test.csv). Besides them it
writes ``features.json``, the feature order the handler builds each record's tensor in
(packed into the .mar).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from examples._common import summary
from examples.breast_cancer.train import train as train_breast_cancer

HERE = Path(__file__).resolve().parent


def train(out_dir: Path | None = None) -> dict[str, Any]:
    """examples/breast_cancer's training into ``out_dir`` (default: this folder), plus features.json.

    Returns:
        What examples.breast_cancer.train.train returns, and the path `features`.
    """
    out_dir = Path(out_dir) if out_dir is not None else HERE
    result = train_breast_cancer(out_dir)
    cols = list(pd.read_csv(result["test"], nrows=0).columns[2:])  # after id and label
    result["features"] = out_dir / "features.json"
    result["features"].write_text(json.dumps(cols, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: examples/breast_cancer_records)")
    print(summary(train(ap.parse_args().out)))
