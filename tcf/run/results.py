"""The results record of one run (``results.json``): one type, one writer, one reader.

``tcf train`` and ``tcf zeroshot`` both write a :class:`RunRecord`; the sweep, the report, the
CLI and the loader of a trained run read it back through :func:`read_results`.  The file keeps
the layout it always had (``metrics[split]["metrics"][name]["mean"]``, ``config``, ``dataset``,
``seeds``, ``timings``, provenance as top-level ``packages`` / ``git`` / ``hardware``, and each
task's own sections at the top level), plus ``format_version``, ``task`` and ``valid`` in every
record.  A file without ``format_version`` is version 1 (written before this module) and is
converted on reading; a newer version is refused by name instead of being half-read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcf.errors import TcfError
from tcf.fsutil import atomic_write_text

FORMAT_VERSION = 2
RESULTS_FILE = "results.json"
PROVENANCE_KEYS = ("packages", "git", "hardware")
# each task's own top-level sections, written (null when unknown) in every record of that task
TASK_KEYS = {
    "train": ("best_epoch", "epochs_run", "history", "parameters", "text_cache", "distributed"),
    "zeroshot": ("candidates", "backend", "tokens"),
}
COMMON_KEYS = ("format_version", "task", "name", "valid", "invalid_reason", "metrics", "config", "dataset", "seeds",
               "timings", "per_user_columns")


class ResultsFormatError(TcfError):
    """A results file this version of tcf cannot read (a newer format, or not a results record)."""


@dataclass
class RunRecord:
    """One run's results: metrics per split, what produced them, and each task's own sections.

    ``seeds`` always holds ``run`` (the config's seed) beside the task's named streams
    (train: python / numpy / torch; zero-shot: candidates / generation)."""

    task: str  # train | zeroshot
    name: str
    config: dict  # the resolved RunConfig
    metrics: dict  # split -> {"metrics": {name: {"mean", "ci95"}}, "n_users", slices / baselines ...}
    dataset: dict  # path, fingerprint, n_users, n_items
    seeds: dict
    timings: dict
    per_user_columns: list = field(default_factory=list)  # columns of per_user_SPLIT.npy
    provenance: dict = field(default_factory=dict)  # packages, git, hardware (top-level keys in the file)
    sections: dict = field(default_factory=dict)  # the task's own keys (TASK_KEYS) and any others the file had
    valid: bool = True  # False: a zero-shot run whose backend failed; never enters a table
    invalid_reason: str | None = None
    format_version: int = FORMAT_VERSION

    def section(self, key: str, default: Any = None) -> Any:
        """A task section (``parameters``, ``text_cache``, ``candidates`` ...), or ``default`` when absent or null."""
        value = self.sections.get(key)
        return default if value is None else value

    def split(self, split: str) -> dict:
        """``metrics[split]`` ({} when the run has no such split)."""
        return (self.metrics or {}).get(split) or {}

    def metric(self, name: str, split: str = "test") -> tuple[float, list | None] | None:
        """(mean, 95% CI or None) of a metric, or None when the run did not measure it."""
        m = self.split(split).get("metrics", {}).get(name)
        if not isinstance(m, dict) or m.get("mean") is None:
            return None
        return float(m["mean"]), m.get("ci95")

    def to_dict(self) -> dict:
        """The JSON layout of ``results.json``."""
        out = {"format_version": self.format_version, "task": self.task, "name": self.name, "valid": self.valid}
        if self.invalid_reason is not None:
            out["invalid_reason"] = self.invalid_reason
        out.update({"metrics": self.metrics, "config": self.config, "dataset": self.dataset, "seeds": self.seeds,
                    "timings": self.timings, "per_user_columns": self.per_user_columns})
        out.update({k: self.sections.get(k) for k in TASK_KEYS.get(self.task, ())})
        out.update({k: v for k, v in self.sections.items() if k not in out})
        out.update(self.provenance)
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "results") -> RunRecord:
        """A record from its JSON form, any version this tcf knows (version 1: converted)."""
        if not isinstance(data, dict):
            raise ResultsFormatError(f"{where}: not a results record (a JSON object expected)")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ResultsFormatError(f"{where}: results format_version {version!r} is newer than this tcf reads "
                                     f"(1..{FORMAT_VERSION}); upgrade tcf to read it")
        config = data.get("config") or {}
        task = str(data.get("task") or config.get("task") or "train")
        seeds = dict(data.get("seeds") or {})
        seeds.setdefault("run", config.get("seed"))  # version 1: only the task's named streams
        known = set(COMMON_KEYS) | set(PROVENANCE_KEYS)
        return cls(task=task, name=str(data.get("name") or config.get("name") or ""), config=config,
                   metrics=data.get("metrics") or {}, dataset=data.get("dataset") or {}, seeds=seeds,
                   timings=data.get("timings") or {}, per_user_columns=list(data.get("per_user_columns") or []),
                   provenance={k: data[k] for k in PROVENANCE_KEYS if k in data},
                   sections={k: v for k, v in data.items() if k not in known},
                   valid=data.get("valid", True) is not False, invalid_reason=data.get("invalid_reason"),
                   format_version=FORMAT_VERSION)


def results_path(path: str | Path) -> Path:
    """A run folder or its results file -> the results file."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


def write_results(folder: str | Path, record: RunRecord) -> Path:
    """Write ``folder/results.json`` atomically (a reader never sees half a record); -> its path."""
    path = Path(folder) / RESULTS_FILE
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, default=float) + "\n")
    return path


def read_results(path: str | Path) -> RunRecord:
    """A run folder's (or a results file's) record.  Raises :class:`ResultsFormatError` for a file
    that is unreadable, not a record, or of a newer format, and FileNotFoundError when absent."""
    path = results_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ResultsFormatError(f"{path}: unreadable results file ({e})") from None
    return RunRecord.from_dict(data, str(path))


def dataset_section(data) -> dict:
    """The ``dataset`` section: which data a run saw (``data``: the run's :class:`tcf.run.seqdata.SeqData`)."""
    ds = data.dataset
    return {"path": str(ds.path), "fingerprint": ds.fingerprint, "n_users": data.n_users, "n_items": data.n_items}
