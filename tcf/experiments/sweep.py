"""Experiments: a base run config plus list-valued axes and/or explicit runs, expanded to runs.

An experiment file is a run config (every key of :class:`RunConfig`) plus up to four more keys::

    name: scaling                      # the base run's name; also the default output folder
    axes:                              # cartesian product, applied to every run
      model.head: [sasrec, dssm]
      seed: [0, 1, 2]
    runs:                              # optional: one override dict per run (default: one empty run)
      - {model.tower: id}              # an ID run needs no encoder axis ...
      - model.tower: frozen            # ... a text run gets its own axes
        axes: {encoder.model: [minilm-l6, smollm2-135m]}
      - {name: zs, task: zeroshot, model.head: sasrec}  # a run that fixes a setting is not swept over it
    report: {title: "...", metrics: [ndcg@10, hr@10]}
    description: free text

A run's own settings win over the top-level axes (the axis is dropped for that run); a run
with a ``name`` is named by it plus its axis values.  A plain run config is an experiment of one run.  Each run's id is its readable name plus a
short hash of its resolved config (name excluded), so the same settings always land in the
same folder and a restarted sweep finds what it already did.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tcf.config import flatten, from_dict, load_yaml, merge, parse_overrides, to_dict
from tcf.errors import ConfigError
from tcf.fsutil import atomic_write_text, file_lock, try_lock
from tcf.models.inputs import pooled_entry, text_input_kind
from tcf.run.config import POOLED_TOWERS, RunConfig, config_changes, config_hash, run_id  # noqa: F401 - config_hash re-exported
from tcf.run.results import RESULTS_FILE, ResultsFormatError, RunRecord, read_results

EXPERIMENT_KEYS = ("axes", "runs", "report", "description", "launcher")  # launcher: tcf/experiments/launch.py
PLAN_FILE = "experiment.json"


@dataclass(frozen=True)
class Run:
    id: str  # NAME-HASH: the run's folder name
    name: str
    config: RunConfig
    overrides: dict  # what this run sets on top of the base (flat dotted keys), for tables and labels


@dataclass(frozen=True)
class Experiment:
    name: str
    runs: list[Run]
    report: dict = field(default_factory=dict)  # settings for tcf.experiments.report
    description: str = ""
    source: str | None = None  # the file it came from


# ---------------------------------------------------------------- expansion

def nest(flat: dict, where: str) -> dict:
    """``{"model.tower": "id", "train": {"lr": 1}}`` -> nested dict (dotted keys split)."""
    out: dict = {}
    for key, value in flat.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: setting names must be text, got {key!r}")
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: '{key}' sets inside {p}, which is not a section")
        value = nest(value, f"{where}.{key}") if isinstance(value, dict) else value
        node[parts[-1]] = merge(node[parts[-1]], value) if isinstance(node.get(parts[-1]), dict) else value
    return out


def _axes(axes: Any, where: str) -> list[tuple[str, list]]:
    if axes is None:
        return []
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}: expected a mapping of setting -> list of values, got {axes!r}")
    out = []
    for key, values in flatten(axes).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key}: an axis needs a non-empty list of values, got {values!r}")
        out.append((key, values))
    return out


def _label(key: str, value: Any) -> str:
    text = Path(str(value)).name if key.endswith(("model", "dataset", "path")) else str(value)
    text = f"s{text}" if key == "seed" else text
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_") or "x"


def expand(data: dict, *, where: str = "experiment", overrides: list[str] | None = None,
           default_name: str = "run") -> Experiment:
    """An experiment dict (see the module doc) -> its runs, each config validated and named."""
    data = dict(data)
    extra = {k: data.pop(k) for k in EXPERIMENT_KEYS if k in data}
    base = merge(nest(data, where), parse_overrides(overrides or []))
    base_name = str(base.get("name") or default_name)
    top_axes = _axes(extra.get("axes"), f"{where}: axes")
    entries = extra.get("runs", [{}])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: runs must be a non-empty list of override mappings")
    runs: dict[str, Run] = {}
    for i, entry in enumerate(entries):
        at = f"{where}: runs[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: expected a mapping of settings, got {entry!r}")
        entry = dict(entry)
        own_axes = _axes(entry.pop("axes", None), f"{at}.axes")
        fixed = flatten(nest(entry, at))
        # a setting the run fixes (or gives its own axis) is not swept by the top-level axis of that name
        axes = [(k, v) for k, v in top_axes if k not in fixed and k not in dict(own_axes)] + own_axes
        for values in itertools.product(*[v for _, v in axes]):
            point = dict(zip([k for k, _ in axes], values))
            run = _make_run(base, fixed, point, base_name, f"{at}" + (f" {point}" if point else ""))
            runs.setdefault(run.id.rsplit("-", 1)[1], run)  # the same settings twice: one run
    report = extra.get("report") or {}
    if not isinstance(report, dict):
        raise ConfigError(f"{where}: report must be a mapping of settings")
    return Experiment(base_name, list(runs.values()), report, str(extra.get("description") or ""), None)


def _make_run(base: dict, fixed: dict, point: dict, base_name: str, where: str) -> Run:
    sets = {**fixed, **point}
    labelled = point if "name" in fixed else {k: v for k, v in sets.items() if k != "name"}
    parts = [str(sets.get("name") or base_name)] + [_label(k, v) for k, v in labelled.items()]
    name = "-".join(parts)[:80]
    merged = merge(base, nest({**sets, "name": name}, where))
    try:
        cfg = from_dict(RunConfig, merged)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return Run(run_id(cfg), name, cfg, {k: v for k, v in sets.items() if k != "name"})


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read an experiment (or a plain run config) from YAML; ``overrides`` apply to the base."""
    path = Path(path)
    exp = expand(load_yaml(path), where=str(path), overrides=overrides, default_name=path.stem)
    return Experiment(exp.name, exp.runs, exp.report, exp.description, str(path))


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> (0, 1)."""
    if not text:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ConfigError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4 ... 3/4), got {text!r}")
    return int(m[1]), int(m[2])


def shard(runs: list[Run], i: int, n: int) -> list[Run]:
    """Round-robin over the expansion order: every process computes the same split from the same file."""
    return [r for k, r in enumerate(runs) if k % n == i]


ORDERS = ("file", "seed")


def ordered(runs: list[Run], order: str = "file") -> list[Run]:
    """``file``: the expansion order. ``seed``: every run of the first seed (in order of appearance) before any
    run of the next, each group in file order, so a sweep cut short leaves a complete one-seed table rather
    than three seeds of its first rows."""
    if order == "file":
        return list(runs)
    if order != "seed":
        raise ConfigError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    rank: dict = {}
    for r in runs:
        rank.setdefault(r.config.seed, len(rank))
    return sorted(runs, key=lambda r: rank[r.config.seed])  # stable: file order inside a seed


# ---------------------------------------------------------------- run folders

LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
SHOW_CHANGES = 6  # differing settings named in one message


class RunFolderError(ConfigError):
    """A run folder holds work made with other settings: refused, so that nothing is overwritten unasked."""


def _changes_text(changes: list[str]) -> str:
    more = f", and {len(changes) - SHOW_CHANGES} more" if len(changes) > SHOW_CHANGES else ""
    return "; ".join(changes[:SHOW_CHANGES]) + more


def _saved(folder: Path) -> tuple[str, dict | None, dict]:
    """What a run folder holds: ("done" | "invalid" | "unfinished" | "empty", its config, details)."""
    results = folder / RESULTS_FILE
    if results.is_file():
        try:
            record = read_results(results)
        except ResultsFormatError as e:  # unreadable, or a newer format: never overwritten unasked
            raise RunFolderError(f"{e}; move it away, or --force to replace it") from None
        return ("done" if record.valid else "invalid"), record.config, record.to_dict()
    last = folder / LAST_CHECKPOINT
    if last.is_file():
        import torch

        ck = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        st = ck.get("state") or {}
        return "unfinished", ck.get("config") or {}, {k: st.get(k) for k in ("epoch", "best", "best_epoch",
                                                                              "bad_epochs")}
    return "empty", None, {}


def check_run_folder(folder: str | Path, cfg: RunConfig, *, force: bool = False) -> str:
    """What a command may do with ``folder`` for a run of ``cfg``, before it writes anything there.

    -> "new" (nothing there, a failed zero-shot run of these settings, or ``force``: run from scratch),
    "done" (a finished run of the same settings: skip it), "resume" (a checkpoint of the same settings).
    A finished or unfinished run made with other settings raises :class:`RunFolderError` naming the
    settings that differ, unless ``force``: results are never replaced without being asked.
    ``tcf train``, ``tcf zeroshot`` and every run of ``tcf run`` / ``tcf sweep`` go through here.
    """
    folder = Path(folder)
    try:
        saved = _saved(folder)
    except RunFolderError:
        if force:
            return "new"
        raise
    return _judge(folder, saved, cfg, force)


def _judge(folder: Path, saved: tuple[str, dict | None, dict], cfg: RunConfig, force: bool) -> str:
    """check_run_folder's answer from what ``_saved`` read there."""
    state, config, details = saved
    if state == "empty" or force:
        return "new"
    changes = config_changes(config, to_dict(cfg))
    if changes:
        what = (f"a finished run ({RESULTS_FILE})" if state != "unfinished" else
                f"an unfinished run ({LAST_CHECKPOINT}, epoch {details.get('epoch')})")
        raise RunFolderError(f"{folder} holds {what} made with other settings ({_changes_text(changes)}); "
                             f"use another --out, or --force to replace it")
    return {"done": "done", "invalid": "new", "unfinished": "resume"}[state]


# ---------------------------------------------------------------- running

@dataclass
class SweepSummary:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> one-line reason
    held: list[str] = field(default_factory=list)  # --claim: runs another process was running


def run_folder(out: Path, run: Run) -> Path:
    return out / run.id


def clear_results(folder: Path) -> None:
    """Before a run replaces what ``--force`` let it replace: no old results.json beside new checkpoints."""
    (folder / RESULTS_FILE).unlink(missing_ok=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def foreign_runs(exp: Experiment, out: Path) -> dict[str, list[str]]:
    """Run folders in ``out`` that are not runs of ``exp`` -> how each differs from the run of ``exp``
    with the same name ([] where ``exp`` has no such run).  A sweep file edited since (another base,
    fewer axis values), or another experiment into the same folder, leaves such folders."""
    ids, by_name, found = {r.id for r in exp.runs}, {r.name: r for r in exp.runs}, {}
    for folder in sorted(out.iterdir()) if out.is_dir() else []:
        markers = ("run.json", RESULTS_FILE, "error.txt", "checkpoints")
        if folder.name in ids or not folder.is_dir() or not any((folder / m).exists() for m in markers):
            continue
        saved = _read_json(folder / "run.json") or _read_json(folder / RESULTS_FILE)
        twin = by_name.get(saved.get("name") or folder.name.rsplit("-", 1)[0])
        found[folder.name] = config_changes(saved["config"], to_dict(twin.config)) if twin and saved.get("config") \
            else []
    return found


def check_experiment_folder(exp: Experiment, out: Path, *, force: bool = False) -> None:
    """Refuse to run ``exp`` into a folder holding runs it does not have: the report reads every run
    below ``out``, so another version's results would be mixed into this one's table unseen."""
    foreign = foreign_runs(exp, out)
    if not foreign or force:
        return
    changes = list(dict.fromkeys(c for cs in foreign.values() for c in cs))
    alone = [name for name, cs in foreign.items() if not cs]
    parts = ([f"made with other settings ({_changes_text(changes)})"] if changes else []) + \
        ([f"{len(alone)} not in this experiment at all (e.g. {alone[0]})"] if alone else [])
    raise RunFolderError(f"{out} holds {len(foreign)} run(s) this experiment does not have, "
                         f"{', '.join(parts)}: the report would mix them with this one's; "
                         f"use another --out, or --force to run beside them")


def write_plan(exp: Experiment, out: Path) -> None:
    """``OUT/experiment.json``: every run of the experiment (all shards), for the report and for people."""
    plan = {"name": exp.name, "source": exp.source, "description": exp.description, "report": exp.report,
            "runs": [{"id": r.id, "name": r.name, "overrides": r.overrides, "config": to_dict(r.config)}
                     for r in exp.runs]}
    atomic_write_text(out / PLAN_FILE, json.dumps(plan, indent=2, default=str) + "\n")


def cache_kind(cfg: RunConfig) -> str | None:
    """The embedding cache a run needs extracted: "pooled" vectors, "tokens" (fine-tuned towers), or None
    (an ID tower, a zero-shot run, or a run that names its cache_path)."""
    return None if cfg.cache_path else text_input_kind(cfg)


def cache_needs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by the cache they read; runs that give cache_path, or need none, are left out."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        c, kind = run.config, cache_kind(run.config)
        if kind is None:
            continue
        depth = c.model.finetune_layers if kind == "tokens" else None  # the token cache sits at layer L-k
        key = json.dumps([kind, depth, c.data.dataset, c.data.root, c.data.template, c.cache_root,
                          to_dict(c.encoder)], sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    return groups


def _extract_one(cfg: RunConfig, progress: bool) -> str:
    """Extract (or find) the cache ``cfg`` reads, with the very calls the trainer makes; -> its folder."""
    from tcf.data import dataset_for

    dataset = dataset_for(cfg.data)
    if cache_kind(cfg) == "tokens":
        from tcf.models.lm_tower import token_cache

        return str(token_cache(cfg, dataset)[0].path)
    from tcf.encoders.index import cached_index

    entry = pooled_entry(cfg, dataset, progress=progress)
    cached_index(entry)  # exact FAISS index beside the vectors: the report's neighbour lists and `tcf neighbors`
    return str(entry.path)


def extract_caches(runs: list[Run], *, progress: bool, log: Callable[[str], None]) -> dict[str, str]:
    """Extract each distinct cache the runs need, once, before any training; -> run id -> error."""
    errors: dict[str, str] = {}
    groups = cache_needs(runs)
    for k, users in enumerate(groups.values(), start=1):
        c = users[0].config
        log(f"extract {k}/{len(groups)}: {c.encoder.model} ({cache_kind(c)}, {c.encoder.pooling}) "
            f"for {len(users)} run(s)")
        try:
            log(f"  cache {_extract_one(c, progress)}")
        except Exception as e:  # noqa: BLE001 - a broken encoder fails its runs, not the sweep
            reason = f"extraction of {c.encoder.model} failed: {type(e).__name__}: {e}"
            log(f"  {reason}")
            errors.update({r.id: reason for r in users})
    return errors


def execute(run: Run, folder: Path, *, progress: bool, resume: bool = False) -> dict:
    """Train (or prompt, for ``task: zeroshot``) one run into ``folder``; ``resume`` continues its checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "run.json", json.dumps({"id": run.id, "name": run.name, "overrides": run.overrides,
                                                       "config": to_dict(run.config)}, indent=2, default=str) + "\n")
    if getattr(run.config, "task", "train") == "zeroshot":
        from tcf.zeroshot import run_zeroshot

        return run_zeroshot(run.config, folder, progress=progress)
    from tcf.train.loop import train

    return train(run.config, folder, resume=resume, progress=progress)


def _states(runs: list[Run], out: Path, force: bool, summary: SweepSummary, log) -> dict[str, str]:
    """run id -> check_run_folder's answer; a folder holding another config's run is a failure of
    that run (nothing written into it), or, with ``force``, run over."""
    states = {}
    for run in runs:
        try:
            states[run.id] = check_run_folder(run_folder(out, run), run.config)
        except RunFolderError as e:
            if not force:
                summary.failed[run.id] = str(e)
                log(f"  refused: {e}")
                continue
            clear_results(run_folder(out, run))
            states[run.id] = "new"
    return states


CLAIM_FILE = ".claim"


def run_sweep(exp: Experiment, out: str | Path, *, shard_of: tuple[int, int] = (0, 1), progress: bool = True,
              log: Callable[[str], None] = print, force: bool = False, only: list[str] | None = None,
              claim: bool = False, order: str = "file") -> SweepSummary:
    """Run this process's share of the experiment: skip finished runs, resume killed ones, survive failures.

    ``out`` holding runs this experiment does not have (an edited sweep file) is refused, and so is a
    run's folder holding a run of other settings, unless ``force``: results are never mixed or replaced unasked.
    ``claim``: each run is taken under an exclusive lock on ``OUT/RUN_ID/.claim`` held while it runs, and a run
    another process holds is passed over, so any number of processes started on one ``out`` share the work as
    they free up (no fixed split that leaves one idle while another has hours left); the lock dies with its
    process, so a killed run is resumed by whichever process reaches it next. ``order``: see :func:`ordered`.
    """
    out = Path(out)
    check_experiment_folder(exp, out, force=force)
    out.mkdir(parents=True, exist_ok=True)
    write_plan(exp, out)
    if claim and shard_of[1] > 1:
        raise ConfigError("--claim shares the runs between processes as they free up; --shard splits them in "
                          "advance: use one or the other")
    mine = shard(exp.runs, *shard_of)
    if only:  # --run RUN_ID: what one cluster job runs (tcf/experiments/launch.py)
        unknown = sorted(set(only) - {r.id for r in exp.runs})
        if unknown:
            raise ConfigError(f"--run {unknown[0]}: not a run of {exp.name} (tcf sweep FILE --list shows them)")
        mine = [r for r in mine if r.id in only]
    mine = ordered(mine, order)
    summary = SweepSummary(out)
    states = _states(mine, out, force, summary, log)
    summary.skipped = [r.id for r in mine if states.get(r.id) == "done"]
    todo = [r for r in mine if states.get(r.id) in ("new", "resume")]
    log(f"{exp.name}: {len(exp.runs)} run(s)" + (f", shard {shard_of[0]}/{shard_of[1]}: {len(mine)}"
                                                  if shard_of[1] > 1 else "")
        + f"; {len(summary.skipped)} already done, {len(todo)} to run"
        + (" (taking each one no other process holds)" if claim else "") + f"; output {out}")
    if not claim:
        failed_extract = extract_caches(todo, progress=progress, log=log)
        for k, run in enumerate(todo, start=1):
            _run_one(run, run_folder(out, run), states[run.id], k, len(todo), failed_extract, summary, progress, log)
        return summary
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--claim under torchrun would let each rank claim a different run; run the sweep's "
                          "processes side by side instead (each with its own devices)")
    started = _fs_now(out)  # the result folder's clock, the one error.txt's mtime comes from
    for k, run in enumerate(todo, start=1):
        _claimed(run, out, k, len(todo), force, started, summary, progress, log, wait=False)
    passed, summary.held = [r for r in todo if r.id in summary.held], []
    for run in passed:  # held by another process when reached: wait for it, then skip it (done) or resume it
        log(f"waiting for {run.id} (held by another process): resumed here if its holder stops without finishing")
        _claimed(run, out, todo.index(run) + 1, len(todo), force, started, summary, progress, log, wait=True)
    return summary


def _fs_now(folder: Path) -> float:
    """The current time as ``folder``'s file system stamps it (a network file system's clock may differ)."""
    fd, name = tempfile.mkstemp(prefix=".clock-", dir=folder)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(name)


def _claimed(run: Run, out: Path, k: int, n: int, force: bool, started: float, summary: SweepSummary,
             progress: bool, log, *, wait: bool) -> None:
    """Run ``run`` under its claim: passed over (``summary.held``) when another process holds it, unless
    ``wait``; under the lock the folder is read again, since another process may have finished it."""
    folder = run_folder(out, run)
    lock = file_lock(folder / CLAIM_FILE) if wait else try_lock(folder / CLAIM_FILE)
    with lock as got:
        if got is False:
            summary.held.append(run.id)
            log(f"[{k}/{n}] {run.id}: another process is running it, passed over for now")
            return
        try:
            state = check_run_folder(folder, run.config)
        except RunFolderError as e:
            if not force:
                summary.failed[run.id] = str(e)
                log(f"  refused: {e}")
                return
            clear_results(folder)
            state = "new"
        if state == "done":
            summary.skipped.append(run.id)
            log(f"[{k}/{n}] {run.id}: finished by another process meanwhile")
            return
        error = folder / "error.txt"
        if error.is_file() and error.stat().st_mtime >= started:
            summary.failed[run.id] = f"failed in another process since this one started (details in {error})"
            log(f"[{k}/{n}] {run.id}: {summary.failed[run.id]}")
            return
        # its cache, just before it runs: a cache that failed in one process is not taken as failed by another
        failed_extract = extract_caches([run], progress=progress, log=log)
        _run_one(run, folder, state, k, n, failed_extract, summary, progress, log)


def run_status(run: Run, folder: Path) -> str:
    """One line on what ``folder`` holds for ``run``, as the next sweep will treat it: done (with its headline),
    refused (another config's run), running (a --claim process holds it), failed (error.txt's first line),
    invalid (reruns), stopped after epoch N (resumes), or not started. Writes nothing; to see whether a claim
    is held it takes the free lock for an instant (a claiming process arriving in that instant passes the run
    over until the end of its pass). A run executed by a process that does not claim shows as stopped."""
    if not folder.is_dir():
        return "not started"
    try:
        read = _saved(folder)
        state = _judge(folder, read, run.config, force=False)
    except RunFolderError as e:
        return f"refused: {e}"
    saved, _, details = read
    if state == "done":
        return "done: " + headline(details)
    progress = ""  # how close early stopping is, from the checkpoint's loop state
    if saved == "unfinished" and isinstance(details.get("best"), float) and details["best"] > -1:
        from tcf.train.loop import SELECT_METRIC

        progress = (f"; best valid {SELECT_METRIC} {details['best']:.4f} at epoch {details.get('best_epoch')}, "
                    f"{details.get('bad_epochs')} of {run.config.train.patience} epochs without a better one")
    at = f" (checkpoint after epoch {details.get('epoch')}{progress})" if saved == "unfinished" else ""
    claim = folder / CLAIM_FILE
    if claim.is_file():
        with try_lock(claim, read_only=True) as free:
            if not free:
                return "running" + at
    if (folder / "error.txt").is_file():
        first = (folder / "error.txt").read_text(errors="replace").splitlines()
        return "failed: " + (first[0] if first else "see error.txt") + at
    if saved == "invalid":
        return "invalid results: reruns"
    if saved == "unfinished":
        return f"stopped after epoch {details.get('epoch')}: resumes from its checkpoint{progress}"
    return "not started"


LEDGER = "sweep-log.jsonl"  # OUT/LEDGER: when each sitting of each run began and ended (the sweep's wall time)
BEAT_SECONDS = 120.0  # a running sitting appends a "beat" this often: a sitting killed with its machine ends there


def _ledger(out: Path, **event) -> None:
    """Append one event to OUT/sweep-log.jsonl (one short line in append mode: whole even beside other
    processes).  A ledger that cannot be written never stops a run."""
    event = {"at": time.time(), "pid": os.getpid(), **event}
    try:
        with open(out / LEDGER, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
    except OSError:
        pass


class _Beat:
    """While a run trains, append a ``beat`` event to the ledger every BEAT_SECONDS (a daemon thread), so a
    sitting killed with no checkpoint left to resume from (a machine lost between sessions) still has an end."""

    def __init__(self, out: Path, run_id: str):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(out, run_id), daemon=True)

    def _beat(self, out: Path, run_id: str) -> None:
        while not self.stop.wait(BEAT_SECONDS):
            _ledger(out, run=run_id, event="beat")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)  # a beat stuck writing to a hung file system never holds up the sweep


def _run_one(run: Run, folder: Path, state: str, k: int, n: int, failed_extract: dict[str, str],
             summary: SweepSummary, progress: bool, log) -> None:
    if run.id in failed_extract:
        _record_failure(summary, run, folder, failed_extract[run.id], None, log)
        return
    resumed = getattr(run.config, "task", "train") == "train" and state == "resume"
    log(f"[{k}/{n}] {run.id}" + (" (resuming from its checkpoint)" if resumed else ""))
    last = folder / "checkpoints" / "last.pt"  # a killed sitting ended by its last checkpoint, at most an epoch on
    _ledger(folder.parent, run=run.id, event="start",
            **({"checkpoint_at": last.stat().st_mtime} if resumed and last.is_file() else {}))
    t0 = time.perf_counter()
    try:
        with _Beat(folder.parent, run.id):
            results = execute(run, folder, progress=progress, resume=resumed)
    except Exception as e:  # noqa: BLE001 - record, continue, fail at the end
        _ledger(folder.parent, run=run.id, event="end", state="failed")
        _record_failure(summary, run, folder, f"{type(e).__name__}: {e}", traceback.format_exc(), log)
        return
    _ledger(folder.parent, run=run.id, event="end", state="done")
    (folder / "error.txt").unlink(missing_ok=True)
    summary.ran.append(run.id)
    log(f"  done in {time.perf_counter() - t0:.0f}s: {headline(results)}")


def ledger_time(out: Path, to_last_done: bool = False) -> dict | None:
    """The sweep's wall time from OUT/sweep-log.jsonl: the union of the sittings' intervals (a run's start to its
    end).  A sitting with no end (killed, or still running) ends at the later of the checkpoint its next sitting
    resumed from and its own last beat; one with neither is left out and counted.  -> {hours, sittings, open,
    open_unbeaten, unended, runs_done, since}: ``open`` sittings have not ended (still running, or killed and not resumed
    yet), counted to their last beat (``open_unbeaten`` of them have none yet and are left out); ``unended``
    killed sittings could not be dated and are left out; None without a ledger.  ``to_last_done`` reads only the
    events up to the last run that finished (the report: a running sweep's later beats leave it unchanged, so
    a report committed with its ledger regenerates the same)."""
    path = out / LEDGER
    if not path.is_file():
        return None
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    if to_last_done:
        done = [e["at"] for e in events if e.get("event") == "end" and e.get("state") == "done" and "at" in e]
        events = [e for e in events if e.get("at", 0) <= max(done, default=-float("inf"))]
    open_, spans, unended = {}, [], 0  # open_: (run, pid) -> [start, last beat or None]

    def close(start: float, end: float | None) -> None:
        nonlocal unended
        if end is not None and end > start:
            spans.append((start, end))
        else:
            unended += 1

    for e in sorted(events, key=lambda e: e.get("at", 0)):
        key, kind = (e.get("run"), e.get("pid")), e.get("event")
        if kind == "start":
            for (run, pid), (t0, beat) in list(open_.items()):
                if run == e.get("run"):  # its earlier sitting was killed: it ended by its checkpoint or last beat
                    del open_[(run, pid)]
                    end = max(e.get("checkpoint_at") or 0, beat or 0) or None
                    close(t0, min(end, e["at"]) if end is not None else None)  # ended before it restarted
            open_[key] = [e["at"], None]
        elif kind == "beat" and key in open_:
            open_[key][1] = e["at"]
        elif kind == "end" and key in open_:
            spans.append((open_.pop(key)[0], e["at"]))
    still, killed = len(open_), unended
    for t0, beat in open_.values():
        close(t0, beat)
    total, end = 0.0, -float("inf")
    for s, f in sorted(spans):
        if f > end:
            total += f - max(s, end)
            end = f
    return {"hours": total / 3600, "sittings": len(spans), "open": still, "unended": killed,
            "open_unbeaten": unended - killed,
            "runs_done": len({e.get("run") for e in events if e.get("event") == "end" and e.get("state") == "done"}),
            "since": min((e["at"] for e in events if "at" in e), default=None)}


def ledger_notes(spent: dict) -> list[str]:
    """What a ledger's wall time leaves out (ledger_time's open and unended sittings), as clauses."""
    notes = []
    if spent["open"] > spent["open_unbeaten"]:
        notes.append(f"{spent['open'] - spent['open_unbeaten']} sitting(s) not ended (still running, or killed and "
                     "not resumed yet), counted to their last beat")
    if spent["open_unbeaten"]:
        notes.append(f"{spent['open_unbeaten']} sitting(s) not ended and with no beat yet, not counted")
    if spent["unended"]:
        notes.append(f"{spent['unended']} killed sitting(s) with no checkpoint or beat to date their end, "
                     "not counted")
    return notes


def ledger_since(spent: dict) -> str:
    return datetime.fromtimestamp(spent["since"], UTC).strftime("%Y-%m-%d %H:%M UTC")


def ledger_summary(out: Path) -> str | None:
    """One sentence on the sweep's wall time from its ledger (``tcf sweep --status``); None without a ledger."""
    spent = ledger_time(out)
    if not spent or spent["since"] is None:
        return None
    return (f"wall time of the runs in {out / LEDGER} (since {ledger_since(spent)}): {spent['hours']:.2f} h over "
            f"{spent['sittings']} sitting(s), the union of their spans"
            + "".join(f"; {n}" for n in ledger_notes(spent)))


def _record_failure(summary: SweepSummary, run: Run, folder: Path, reason: str, tb: str | None, log) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "error.txt", reason + "\n" + (tb or ""))
    summary.failed[run.id] = reason.splitlines()[0] if reason else "failed"
    log(f"  FAILED: {summary.failed[run.id]} (details in {folder / 'error.txt'})")


def headline(results: RunRecord | dict, split: str = "test") -> str:
    """``ndcg@10 0.0412  hr@10 0.0901`` from a results dict (train or zero-shot)."""
    record = results if isinstance(results, RunRecord) else RunRecord.from_dict(results)
    parts = [f"{k} {m[0]:.4f}" for k in ("ndcg@10", "hr@10") if (m := record.metric(k, split)) is not None]
    return f"{split} " + "  ".join(parts) if parts else "results written"
