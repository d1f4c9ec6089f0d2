"""What both RecBole benchmarks run in RecBole's own virtualenv: the shared preamble and the launcher.

RecBole pins numpy < 2, so it cannot share tcf's environment; each benchmark sends a script
(``PREAMBLE`` + its own part) to ``.bench/recbole-venv/bin/python``.  The preamble imports
RecBole, points it at the ml-100k copy its package ships and defines ``BASE``: the SASRec
model and protocol both comparisons hold fixed (hidden 64, 2 blocks, 2 heads, max length 50,
dropout 0.2, CE, seed 2020, leave-one-out by time, full ranking, NDCG@10 on validation).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECBOLE_PY = ROOT / ".bench" / "recbole-venv" / "bin" / "python"
MAKE_VENV = ("python3 -m venv .bench/recbole-venv && .bench/recbole-venv/bin/pip install torch==2.13.0 "
             'recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.15"')

# argv[1] of every child is its output folder
PREAMBLE = r"""
import json, sys, time, importlib.util
from pathlib import Path
import numpy as np, torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed
out = Path(sys.argv[1])
_load = torch.load  # RecBole 1.2.1 reloads its own checkpoint with torch.load's pre-2.6 default
torch.load = lambda *a, **k: _load(*a, **{"weights_only": False, **k})
data_path = Path(importlib.util.find_spec("recbole").submodule_search_locations[0]) / "dataset_example"
BASE = {
    "data_path": str(data_path), "checkpoint_dir": str(out / "saved"), "device": "cpu", "use_gpu": False,
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "MAX_ITEM_LIST_LENGTH": 50, "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
    "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "loss_type": "CE", "train_neg_sample_args": None,
    "seed": 2020, "reproducibility": True,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "metrics": ["Hit", "NDCG", "MRR"], "valid_metric": "NDCG@10", "show_progress": False, "log_wandb": False,
}
"""


def run_child(body: str, out: Path | str, *args: object) -> subprocess.CompletedProcess:
    """Run ``PREAMBLE + body`` in RecBole's virtualenv with ``out`` as its cwd and argv[1]; exit on failure."""
    if not RECBOLE_PY.exists():
        sys.exit(f"no RecBole virtualenv at {RECBOLE_PY.parent.parent}; make it with:\n    {MAKE_VENV}")
    r = subprocess.run([str(RECBOLE_PY), "-c", PREAMBLE + body, str(out), *map(str, args)], capture_output=True,
                       cwd=out,  # RecBole writes log_tensorboard/ into its cwd
                       text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False)
    if r.returncode != 0:
        sys.exit(f"RecBole failed:\n{r.stderr[-4000:]}")
    return r
