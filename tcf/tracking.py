"""Experiment tracking in MLflow: optional, and never in a run's way.

``tracking: {enabled: true}`` in a run config (or ``--set tracking.enabled=true``) logs each run's
resolved config, its per-epoch loss and validation metric, its final metrics with their 95% CIs and
its provenance to MLflow; a sweep also logs its report (tables and plots) as a run of its own.  The
runs of one sweep share one MLflow experiment, named after the sweep (``OUT/experiment.json``).

The results record on disk stays the source of truth: tracking is a copy for browsing.  So every
MLflow call runs on one background thread; the training loop only puts work on a queue, and waits
for it at the end of the run for at most ``tracking.timeout_s`` seconds in total.  An unreachable
server, a missing ``mlflow`` package or a broken store costs one warning line, never the run.

This module sits at the bottom of the import graph (standard library and :mod:`tcf.errors` only):
the run config embeds :class:`TrackingConfig` and the training loop calls :func:`log_epoch` and
:func:`log_results` without importing the experiment layer.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tcf.errors import ConfigError
from tcf.fsutil import atomic_write_text

STATE_FILE = "tracking.json"  # in the run folder: the MLflow run to continue when the run resumes
PLAN_FILE = "experiment.json"  # written by a sweep beside its run folders (tcf.experiments.sweep)
DEFAULT_EXPERIMENT = "tcf"
STORE_DIR = "mlflow"  # default store: OUT/mlflow/mlflow.db (+ artifacts/), beside the run folders


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs are logged.  Not part of a run's identity: turning tracking on keeps every run id."""

    enabled: bool = False
    uri: str | None = None  # any MLflow tracking URI; None: sqlite:///OUT/mlflow/mlflow.db beside the run folders
    experiment: str | None = None  # None: the sweep's name (a single run: "tcf")
    timeout_s: float = 60.0  # the most tracking may add to one run's wall time, in total

    def __post_init__(self):
        if self.timeout_s < 0:
            raise ConfigError(f"tracking.timeout_s must be >= 0, got {self.timeout_s}")


def store_uri(cfg: TrackingConfig, folder: Path) -> str:
    """The tracking URI a run in ``folder`` logs to (the default: a SQLite file beside the run folders)."""
    if cfg.uri:
        return cfg.uri
    return f"sqlite:///{(folder.parent / STORE_DIR / 'mlflow.db').resolve()}"


def experiment_name(cfg: TrackingConfig, folder: Path) -> str:
    if cfg.experiment:
        return cfg.experiment
    try:
        return json.loads((folder.parent / PLAN_FILE).read_text(encoding="utf-8"))["name"] or DEFAULT_EXPERIMENT
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_EXPERIMENT


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . /`` and spaces: ``valid_ndcg@10`` -> ``valid_ndcg_at_10``."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name.replace("@", "_at_"))


# ---------------------------------------------------------------- the background writer

class Tracker:
    """One run's MLflow writer: calls queue up and run on a daemon thread; :meth:`close` waits a bounded time."""

    def __init__(self, cfg: TrackingConfig, folder: Path, run_name: str, tags: dict | None = None):
        self.cfg, self.folder, self.run_name, self.tags = cfg, Path(folder), run_name, tags or {}
        self.uri = store_uri(cfg, self.folder)
        self.started = time.monotonic()
        self.error: str | None = None
        self.client = self.run_id = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"tcf-tracking-{run_name}", daemon=True)
        self._thread.start()
        self.submit(self._open)

    def submit(self, fn: Callable[[], None]) -> None:
        self._queue.put(fn)

    def _work(self) -> None:
        while (fn := self._queue.get()) is not None:
            if self.error is None:
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - tracking never fails a run
                    self.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"

    def _open(self) -> None:
        """Connect, find or make the experiment, and continue this folder's MLflow run (a resumed run) or start one."""
        _quick_http(self.cfg.timeout_s)
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        exp_id = _experiment(self.client, experiment_name(self.cfg, self.folder), self.uri)
        saved = _read_json(self.folder / STATE_FILE)
        if saved.get("uri") == self.uri and saved.get("experiment_id") == exp_id and saved.get("run_id"):
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(exp_id, run_name=self.run_name, tags={"tcf.folder": str(self.folder.resolve()),
                                                                              **self.tags})
        self.run_id = run.info.run_id
        atomic_write_text(self.folder / STATE_FILE,
                          json.dumps({"uri": self.uri, "experiment_id": exp_id, "run_id": self.run_id}) + "\n")

    def close(self, status: str = "FINISHED") -> bool:
        """Finish the MLflow run and wait for the queue, at most what is left of ``timeout_s``; -> all logged."""
        self.submit(lambda: self.client.set_terminated(self.run_id, status))
        self._queue.put(None)
        self._thread.join(max(0.0, self.cfg.timeout_s - (time.monotonic() - self.started)))
        if self._thread.is_alive() or self.error:
            why = self.error or f"not done within tracking.timeout_s={self.cfg.timeout_s:g}s"
            print(f"tcf: warning: experiment tracking ({self.uri}) failed, the run is unaffected and its "
                  f"results.json is complete: {why}", file=sys.stderr)
            return False
        return True


def _quick_http(timeout_s: float) -> None:
    """MLflow retries an unreachable server for minutes by default; cap it near our own budget (the run's process
    only: these are MLflow's environment settings, left alone where the user set them)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_s))))


def _experiment(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, made on first use (artifacts beside a local store); two jobs may race."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    where = None
    if uri.startswith("sqlite:///"):
        where = (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=where)
    except Exception:  # noqa: BLE001 - another job made it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- what is logged

def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def final_metrics(results: dict) -> dict[str, float]:
    """``test_ndcg_at_10`` (mean), ``..._ci_low`` / ``..._ci_high`` (95% CI) per split and metric of a results record;
    the valid split's are ``best_valid_...`` (the per-epoch ``valid_ndcg_at_10`` is another series)."""
    out = {}
    for split, section in (results.get("metrics") or {}).items():
        for name, m in ((section or {}).get("metrics") or {}).items():
            if not isinstance(m, dict) or m.get("mean") is None:
                continue
            key = metric_key(f"{'best_' if split == 'valid' else ''}{split}_{name}")  # valid: the chosen checkpoint's
            out[key] = float(m["mean"])
            ci = m.get("ci95")
            if ci and len(ci) == 2 and None not in ci:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(ci[0]), float(ci[1])
    return out


def _log_config(tracker: Tracker, config: dict) -> None:
    from mlflow.entities import Param

    params = [Param(k[:250], json.dumps(v, default=str)[:6000] if not isinstance(v, str) else v[:6000])
              for k, v in flat(config).items() if not k.startswith("tracking.")]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        try:
            tracker.client.log_batch(tracker.run_id, params=params[i:i + 100])
        except Exception:  # noqa: BLE001 - a resumed run has them already (same values)
            break
    tracker.client.log_dict(tracker.run_id, config, "config.json")


def _log_metrics(tracker: Tracker, values: dict[str, float], step: int | None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step or 0) for k, v in values.items() if isinstance(v, (int, float))]
    for i in range(0, len(metrics), 1000):
        tracker.client.log_batch(tracker.run_id, metrics=metrics[i:i + 1000])


_OPEN: dict[str, Tracker] = {}  # run folder -> its tracker, for the life of the run in this process


def _tracker(cfg, folder: Path) -> Tracker | None:
    t = getattr(cfg, "tracking", None)
    if t is None or not t.enabled:
        return None
    key = str(Path(folder).resolve())
    if key not in _OPEN:
        config = _to_dict(cfg)
        tracker = _OPEN[key] = Tracker(t, Path(folder), cfg.name, {"tcf.run": Path(folder).name,
                                                                    "tcf.task": getattr(cfg, "task", "train")})
        tracker.submit(lambda: _log_config(tracker, config))
    return _OPEN[key]


def _to_dict(cfg) -> dict:
    from tcf.config import to_dict

    return to_dict(cfg)


# ---------------------------------------------------------------- the calls the loop makes

def log_epoch(cfg, folder: str | Path, entry: dict, *, main: bool = True) -> None:
    """One epoch's history entry (``{"epoch": 3, "loss": ..., "valid_ndcg@10": ..., "seconds": ...}``); instant."""
    tracker = _tracker(cfg, Path(folder)) if main else None
    if tracker is None:
        return
    values = {metric_key(k): v for k, v in entry.items() if k != "epoch"}
    tracker.submit(lambda: _log_metrics(tracker, values, int(entry.get("epoch", 0))))


def log_results(cfg, folder: str | Path, results: dict, *, main: bool = True) -> bool | None:
    """The finished run: final metrics with CIs, provenance, the record; waits at most ``tracking.timeout_s``
    in all.  -> True (all logged), False (a warning was printed), None (tracking off, or not the main process)."""
    tracker = _tracker(cfg, Path(folder)) if main else None
    if tracker is None:
        return None
    _OPEN.pop(str(Path(folder).resolve()), None)

    def write():
        _log_metrics(tracker, final_metrics(results), results.get("epochs_run"))
        prov = {k: results.get(k) for k in ("packages", "git", "hardware", "seeds", "timings", "dataset")
                if results.get(k) is not None}
        tracker.client.log_dict(tracker.run_id, prov, "provenance.json")
        git = results.get("git") or {}
        tags = {"tcf.git": str(git.get("revision", git) if isinstance(git, dict) else git)[:5000],
                "tcf.valid": str(results.get("valid", True)).lower()}
        for k, v in tags.items():
            tracker.client.set_tag(tracker.run_id, k, v)
        # not named results.json: `tcf report` reads every results.json below a sweep's folder
        tracker.client.log_dict(tracker.run_id, results, "results_record.json")

    tracker.submit(write)
    return tracker.close("FINISHED" if results.get("valid", True) is not False else "FAILED")


def log_report(cfg: TrackingConfig, out: str | Path, report_dir: str | Path, name: str | None = None) -> bool | None:
    """A sweep's report (markdown, JSON, plots) as a run named ``report`` in the sweep's experiment."""
    if cfg is None or not cfg.enabled:
        return None
    report_dir = Path(report_dir)
    tracker = Tracker(cfg, Path(out) / "report", "report", {"tcf.kind": "report"})

    def write():
        for path in sorted(report_dir.iterdir()):
            if path.is_file() and path.name != STATE_FILE:
                tracker.client.log_artifact(tracker.run_id, str(path))

    tracker.submit(write)
    return tracker.close()


def log_sweep_report(out: str | Path, report_dir: str | Path) -> bool | None:
    """After ``tcf run`` / ``tcf sweep`` wrote the report: log it where the sweep's runs are tracked (if they are)."""
    runs = _read_json(Path(out) / PLAN_FILE).get("runs") or []
    t = ((runs[0].get("config") or {}).get("tracking") if runs else None) or {}
    if not t.get("enabled"):
        return None
    fields = {k: t[k] for k in ("enabled", "uri", "experiment", "timeout_s") if k in t}
    return log_report(TrackingConfig(**fields), out, report_dir)
