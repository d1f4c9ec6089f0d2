"""Load a finished ``tcf train`` run: its resolved config, dataset and best checkpoint, strictly.

The one loader of a trained model (reports, zero-shot hard negatives and candidate scoring,
benchmarks): a checkpoint whose keys do not match the model its config builds is refused,
never half-loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tcf.errors import TcfError


class TrainedRunError(TcfError):
    pass


@dataclass
class TrainedRun:
    folder: Path
    results: dict
    cfg: object  # RunConfig
    dataset: object  # Dataset
    data: object  # SeqData
    model: torch.nn.Module  # in eval mode, on the CPU


def load_trained(folder: str | Path, *, results: dict | None = None) -> TrainedRun:
    """``folder``: a run folder with ``results.json`` and ``checkpoints/best.pt``."""
    import json

    from tcf.config import from_dict
    from tcf.data import load_dataset
    from tcf.models import build_model
    from tcf.run.config import RunConfig
    from tcf.run.seqdata import SeqData
    from tcf.train.loop import text_vectors

    folder = Path(folder)
    best = folder / "checkpoints" / "best.pt"
    if results is None:
        if not (folder / "results.json").is_file():
            raise TrainedRunError(f"{folder}: no results.json (not a finished `tcf train` run)")
        results = json.loads((folder / "results.json").read_text())
    if not best.is_file():
        raise TrainedRunError(f"{best}: missing (the run's best checkpoint)")
    cfg = from_dict(RunConfig, results["config"])
    dataset = load_dataset(results["dataset"]["path"])
    data = SeqData(dataset)
    vectors = text_vectors(cfg, dataset)[0] if cfg.model.tower != "id" else None
    model = build_model(cfg, data.n_items, data.n_users, vectors)
    state = torch.load(best, map_location="cpu", weights_only=False)["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TrainedRunError(f"{best}: does not match the model its config builds (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")
    return TrainedRun(folder, results, cfg, dataset, data, model.eval())
