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
from tcf.run.results import RunRecord, read_results, results_path


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
    record: RunRecord | None = None


def load_trained(folder: str | Path, *, record: RunRecord | None = None) -> TrainedRun:
    """``folder``: a run folder with ``results.json`` and ``checkpoints/best.pt``; ``record``: its results
    record when the caller has read it already."""
    from tcf.config import from_dict
    from tcf.data import load_dataset
    from tcf.models import build_model
    from tcf.models.inputs import text_inputs
    from tcf.run.config import RunConfig
    from tcf.run.seqdata import SeqData

    folder = Path(folder)
    best = folder / "checkpoints" / "best.pt"
    if record is None:
        if not results_path(folder).is_file():
            raise TrainedRunError(f"{folder}: no results.json (not a finished `tcf train` run)")
        record = read_results(folder)
    if not best.is_file():
        raise TrainedRunError(f"{best}: missing (the run's best checkpoint)")
    cfg = from_dict(RunConfig, record.config)
    dataset = load_dataset(record.dataset["path"])
    data = SeqData(dataset)
    vectors = text_inputs(cfg, dataset)[0]
    model = build_model(cfg, data.n_items, data.n_users, vectors)
    state = torch.load(best, map_location="cpu", weights_only=False)["model"]
    # strict=False only to name the differing keys in the error below: nothing is ever half-loaded
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TrainedRunError(f"{best}: does not match the model its config builds (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")
    return TrainedRun(folder, record.to_dict(), cfg, dataset, data, model.eval(), record)
