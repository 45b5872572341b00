"""init with --preprocess given: a model that does not run on its output is not told to 'Pass --preprocess'."""

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.scaffold import InitConfig, write_spec

BAG = ("import torch\nfrom torch import nn\n\nclass Bag(nn.Module):\n    def __init__(self):\n"
       "        super().__init__()\n        self.embedding = nn.EmbeddingBag(50, 4)\n        self.fc = nn.Linear(4, 2)\n\n"
       "    def forward(self, text, offsets):\n        return self.fc(self.embedding(text, offsets))\n\n\n"
       "def build():\n    return Bag()\n")


def test_a_given_preprocess_whose_output_the_model_refuses_is_named_not_asked_for(tmp_path):
    (tmp_path / "m.py").write_text(BAG)
    ns: dict = {}
    exec(BAG, ns)
    torch.save(ns["build"]().state_dict(), tmp_path / "w.pt")
    pd.DataFrame({"id": ["1", "2"], "label": [0, 1], "text": ["hello there", "good bye now"]}).to_csv(
        tmp_path / "t.csv", index=False)
    (tmp_path / "pre.py").write_text("import torch\n\ndef pre(text):\n    return torch.tensor([len(text) % 50])\n")
    with pytest.raises(ConfigError) as e:
        write_spec(InitConfig(factory="m.py:build", weights=Path("w.pt"), data=Path("t.csv"), preprocess="pre.py:pre",
                              base_dir=tmp_path))
    text = str(e.value)
    assert "Pass --preprocess" not in text, text
    assert re.search(r"Check that --preprocess \S*pre\.py:pre returns what the model's forward takes", text), text
    assert "tuple or dict" in text and "model.collate" in text
