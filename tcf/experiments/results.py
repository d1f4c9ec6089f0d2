"""Finished runs read back from disk and grouped over seeds, for reports and comparisons.

A folder of runs is any tree holding ``results.json`` files (a sweep's output, or runs made
one by one with ``tcf train``).  A results file marked ``"valid": false`` (a zero-shot run
whose backend failed) is a failed run: it is named with its reason and never enters a
table or a comparison.  Runs whose configs differ only in ``seed`` (and ``name``)
form a group.  A group's statistic is over users: each user's value averaged over the group's
seeds (``per_user_SPLIT.npy``), with a bootstrap 95% CI of those values and the spread of the
seed means beside it; a single run keeps its own bootstrap CI.  Only where a seed's per-user
records are missing does it fall back to the mean over seeds with a t-based 95% CI, which
varies with training randomness alone, not with which users were sampled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from tcf.config import flatten
from tcf.errors import TcfError
from tcf.eval.metrics import bootstrap_ci
from tcf.run.results import ResultsFormatError, RunRecord, read_results

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (1.96 beyond)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131,
        2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042)
NOT_A_SETTING = ("name", "seed")  # differ between the members of a group
TEXT_ONLY = ("encoder.", "cache_root", "cache_path", "data.template")  # meaningless for an ID tower


USER_BOOTSTRAP = 1000  # resamples (seed 0) of a seed group's seed-averaged per-user values


TOWER_NAMES = {"id": "ID", "frozen": "frozen text", "id+text": "ID + text", "finetune": "fine-tuned text",
               "lora": "LoRA text"}  # how a report names a tower kind
HEAD_NAMES = {"sasrec": "SASRec", "dssm": "DSSM", "llm": "LLM head"}


@dataclass
class Stat:
    mean: float
    lo: float | None  # 95% CI, None when unknown
    hi: float | None
    n: int  # seeds
    over: str  # "users" (bootstrap interval over users) or "seeds" (fallback: t interval over seed means)
    sd_seeds: float | None = None  # standard deviation of the seed means (several seeds)

    def text(self, digits: int = 4) -> str:
        f = f".{digits}f"
        spread = f" (sd {self.sd_seeds:{f}} over {self.n} seeds)" if self.n > 1 and self.sd_seeds is not None else ""
        if self.lo is None or self.hi is None:
            return f"{self.mean:{f}}{spread}"
        if self.over == "seeds":
            return f"{self.mean:{f}} ± {(self.hi - self.lo) / 2:{f}} (t over {self.n} seeds)"
        return f"{self.mean:{f}} [{self.lo:{f}}, {self.hi:{f}}]{spread}"


@dataclass
class RunResult:
    folder: Path
    record: RunRecord

    @property
    def results(self) -> dict:
        """The record in its JSON layout (for code written against the dict)."""
        return self.record.to_dict()

    @cached_property
    def config(self) -> dict:
        return flatten(self.record.config)

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def head(self) -> str:
        return str(self.config.get("model.head", "?"))

    @property
    def tower(self) -> str:
        return str(self.config.get("model.tower", "?"))

    @property
    def encoder(self) -> str | None:
        """Short model name of a text tower (None for ID towers and zero-shot runs)."""
        if self.task != "train" or self.tower == "id":
            return None
        return Path(str(self.config.get("encoder.model", "?"))).name

    @property
    def encoder_parameters(self) -> int | None:
        return self.record.section("parameters", {}).get("encoder")

    def metric(self, name: str, split: str = "test") -> tuple[float, list | None] | None:
        return self.record.metric(name, split)

    def slice_metric(self, slice_name: str, name: str, split: str = "test") -> float | None:
        s = self.record.split(split).get("slices", {}).get(slice_name)
        value = (s or {}).get("metrics", {}).get(name)
        return None if value is None else float(value)

    def slice_users(self, slice_name: str, split: str = "test") -> int | None:
        s = self.record.split(split).get("slices", {}).get(slice_name)
        return None if not s or s.get("n_users") is None else int(s["n_users"])

    def per_user(self, name: str, split: str = "test") -> tuple[np.ndarray, np.ndarray] | None:
        """(user ids, per-user metric) from ``per_user_SPLIT.npy``, for paired tests; None when absent."""
        cols = self.record.per_user_columns
        path = self.folder / f"per_user_{split}.npy"
        if not cols or name not in cols or not path.is_file():
            return None
        if split not in self._per_user_files:  # read once: a report's seed-noise pools ask for it per comparison
            self._per_user_files[split] = np.load(path)
        table = self._per_user_files[split]
        return table[0].astype(np.int64), table[cols.index(name)]

    @cached_property
    def _per_user_files(self) -> dict:
        return {}


@dataclass
class Group:
    """Runs that differ only in their seed."""

    runs: list[RunResult]
    settings: dict = field(default_factory=dict)  # settings that set this group apart from the others
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def first(self) -> RunResult:
        return self.runs[0]

    @property
    def seeds(self) -> list:
        return sorted({r.config.get("seed") for r in self.runs}, key=str)

    def user_values(self, name: str, split: str = "test") -> tuple[np.ndarray, np.ndarray] | None:
        """(user ids, sorted; each user's ``name`` averaged over the group's seeds), or None unless every run
        has per-user records on the same users."""
        key = ("users", name, split)
        if key not in self._memo:
            self._memo[key] = _seed_average([r.per_user(name, split) for r in self.runs])
        return self._memo[key]

    def stat(self, name: str, split: str = "test") -> Stat | None:
        key = ("stat", name, split)
        if key not in self._memo:
            self._memo[key] = self._stat(name, split)
        return self._memo[key]

    def _stat(self, name: str, split: str) -> Stat | None:
        values = [m for m in (r.metric(name, split) for r in self.runs) if m is not None]
        if not values:
            return None
        means = np.array([v[0] for v in values])
        if len(values) == 1:
            ci = values[0][1]
            return Stat(float(means[0]), *(ci if ci else (None, None)), 1, "users")
        sd = float(means.std(ddof=1))
        users = self.user_values(name, split) if len(values) == len(self.runs) else None
        if users is not None:
            lo, hi = bootstrap_ci(users[1], n=USER_BOOTSTRAP, seed=0)
            return Stat(float(users[1].mean()), lo, hi, len(means), "users", sd)
        half = (T975[len(means) - 2] if len(means) <= len(T975) + 1 else 1.96) * sd / math.sqrt(len(means))
        return Stat(float(means.mean()), float(means.mean() - half), float(means.mean() + half), len(means), "seeds",
                    sd)

    def slice_mean(self, slice_name: str, name: str, split: str = "test") -> float | None:
        values = [v for v in (r.slice_metric(slice_name, name, split) for r in self.runs) if v is not None]
        return float(np.mean(values)) if values else None


def _seed_average(tables: list[tuple[np.ndarray, np.ndarray] | None]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-user records of several seeds -> (sorted user ids, mean value per user); None when one is missing or
    the seeds were evaluated on different users."""
    if not tables or any(t is None for t in tables):
        return None
    users, rows = None, []
    for ids, values in tables:
        order = np.argsort(ids, kind="stable")
        if users is not None and not np.array_equal(users, ids[order]):
            return None
        users = ids[order]
        rows.append(np.asarray(values, dtype=np.float64)[order])
    return users, np.mean(rows, axis=0)


def invalid_reason(results: RunRecord | dict) -> str | None:
    """Why a results record must not be used (it says ``"valid": false``), or None for a usable one."""
    record = results if isinstance(results, RunRecord) else RunRecord.from_dict(results)
    if record.valid:
        return None
    return "invalid: " + str(record.invalid_reason or "marked invalid")


def load_runs(root: str | Path) -> tuple[list[RunResult], list[tuple[Path, str]]]:
    """Every finished run under ``root``, and every failed one (a folder with error.txt and no results, or
    with results marked invalid)."""
    root = Path(root)
    if not root.is_dir():
        raise TcfError(f"{root}: no such folder of runs")
    runs, failed = [], []
    for path in sorted(root.rglob("results.json")):
        try:
            record = read_results(path)
        except ResultsFormatError as e:  # unreadable, not a record, or a newer format: named, not half-read
            failed.append((path.parent, str(e)))
            continue
        reason = invalid_reason(record)
        if reason:
            failed.append((path.parent, reason))
        else:
            runs.append(RunResult(path.parent, record))
    for path in sorted(root.rglob("error.txt")):
        if not (path.parent / "results.json").is_file():
            failed.append((path.parent, path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""))
    return runs, failed


def _settings(run: RunResult) -> dict:
    """The run's settings as today's RunConfig reads them: a key added since (or written out at its default)
    takes its default, so seeds recorded before and after a new setting appeared compare equal; settings that
    do not change what a run computes (its name, tracking) are left out, as run ids leave them out."""
    return settings_of(run.record.config, run.config)


def settings_of(config: dict, fallback: dict | None = None) -> dict:
    """:func:`_settings` of a recorded (nested) config; ``fallback`` (flat) where this version cannot read it."""
    from tcf.config import from_dict
    from tcf.run.config import RunConfig, identity_free, resolved

    try:
        cfg = flatten(resolved(from_dict(RunConfig, config)))
    except Exception:  # noqa: BLE001 - a config this version cannot read is compared as it was written
        cfg = dict(fallback if fallback is not None else flatten(config))
    return {k: v for k, v in cfg.items() if k not in NOT_A_SETTING and not identity_free(k)}


_RUN_SETTINGS: dict[int, tuple] = {}


def run_settings(run: RunResult) -> dict:
    """:func:`_settings`, computed once per run object."""
    hit = _RUN_SETTINGS.get(id(run))
    if hit is None or hit[0] is not run:
        hit = _RUN_SETTINGS[id(run)] = (run, _settings(run))
    return hit[1]


def group_key(run: RunResult) -> str:
    cfg = _settings(run)
    if run.task == "train" and run.tower == "id":
        cfg = {k: v for k, v in cfg.items() if not k.startswith(TEXT_ONLY)}
    return json.dumps(cfg, sort_keys=True, default=str)


def group_runs(runs: list[RunResult], within: str | None = "model.head") -> list[Group]:
    """Runs grouped over seeds, in the order first seen.

    Each group's ``settings`` are the settings that vary between the groups sharing its
    ``within`` setting (by default the head: SASRec and DSSM keep their own defaults, which
    need no mention in every row).
    """
    by_key: dict[str, Group] = {}
    for run in runs:
        by_key.setdefault(group_key(run), Group([])).runs.append(run)
    configs = {k: json.loads(k) for k in by_key}
    for key, g in by_key.items():
        peers = [c for c in configs.values() if within is None or c.get(within) == configs[key].get(within)]
        names = sorted({k for c in peers for k in c})
        # a key only some configs have (text settings, absent from ID runs) varies if it differs among those
        varying = [k for k in names if len({json.dumps(c[k], default=str) for c in peers if k in c}) > 1]
        g.settings = {k: configs[key][k] for k in varying if k in configs[key]}
    return list(by_key.values())


def planned_ids(plan: dict) -> list[str] | None:
    """The run ids experiment.json lists, or None without one (or with runs it does not name)."""
    ids = [r.get("id") for r in plan.get("runs") or [] if isinstance(r, dict)]
    return ids if ids and all(isinstance(i, str) for i in ids) else None
