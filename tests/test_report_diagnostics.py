"""The report measures its own runs beside the answers: how close patience came to stopping a run on a plateau it
later left (and runs train.epochs cut off), and how much of a seed's validation luck carries to test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tcf.experiments.diagnostics import seed_luck, stopping, stopping_line
from tcf.experiments.report import write_report
from tcf.experiments.results import group_runs, load_runs


def put(root: Path, name: str, history: list[float], *, seed=0, tower="id", valid=None, test=None,
        patience=3, epochs=50) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    valid = max(history) if valid is None else valid
    test = valid if test is None else test
    res = {"config": {"name": name, "seed": seed, "model": {"head": "sasrec", "tower": tower},
                      "train": {"patience": patience, "epochs": epochs}},
           "metrics": {split: {"metrics": {"ndcg@10": {"mean": v, "ci95": [v - 0.01, v + 0.01]}}}
                       for split, v in (("valid", valid), ("test", test))},
           "history": [{"epoch": k + 1, "loss": 1.0, "valid_ndcg@10": v} for k, v in enumerate(history)]}
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def runs_of(root: Path):
    return [r for r in load_runs(root)[0] if r.task == "train"]


def test_the_longest_survived_plateau_and_what_leaving_it_gained(tmp_path):
    # patience 3: epochs 3-4 without a better score (2 epochs: 1 from stopping), then better at 5 and 6;
    # a tie is not better (the trainer's rule); the final 3 bad epochs are the stop, not a survived plateau
    put(tmp_path, "a", [0.1, 0.2, 0.2, 0.15, 0.25, 0.3, 0.3, 0.3, 0.3])
    put(tmp_path, "b", [0.1, 0.2, 0.3, 0.3, 0.3, 0.3])  # never a survived plateau
    a, b = sorted(runs_of(tmp_path), key=lambda r: r.folder.name)
    x = stopping(a)
    assert (x.longest, x.at, x.margin, x.capped) == (2, (3, 4), 1, False)
    assert abs(x.gain - 0.1) < 1e-12  # 0.3 best, 0.2 before the plateau
    assert stopping(b).longest == 0
    line = stopping_line([a, b])
    assert "of 2 trained runs, 1 came within 3 epochs of stopping" in line
    assert "`a` 1 epoch from stopping (epochs 3-4 without a better one), then +0.1000 to its best" in line
    assert "every run was stopped by patience" in line


def test_a_run_cut_off_by_train_epochs_is_named_as_not_converged(tmp_path):
    put(tmp_path, "capped", [0.1, 0.2, 0.3, 0.4], epochs=4)
    put(tmp_path, "stopped", [0.1, 0.2, 0.2, 0.2, 0.2], epochs=5)  # 3 bad epochs at the end: patience stopped it
    line = stopping_line(runs_of(tmp_path))
    assert "1 ended at train.epochs before patience stopped them, so are not converged" in line
    assert "`capped`" in line and "`stopped`" not in line.split("not converged")[1]


def test_seed_luck_is_the_correlation_of_seed_deviations_across_valid_and_test(tmp_path):
    rng = np.random.default_rng(0)
    dv_all, dt_all = [], []
    for tower, base in (("id", 0.3), ("frozen", 0.2)):
        v = base + rng.normal(0, 0.01, 3)
        t = v - 0.05 + rng.normal(0, 0.004, 3)
        for k in range(3):
            put(tmp_path, f"{tower}-s{k}", [v[k]], seed=k, tower=tower, valid=float(v[k]), test=float(t[k]))
        dv_all += list(v - v.mean())
        dt_all += list(t - t.mean())
    r, df, k = seed_luck(group_runs(runs_of(tmp_path)), "ndcg@10", "test")["sasrec"]
    assert (df, k) == (4, 2)
    assert abs(r - np.corrcoef(dv_all, dt_all)[0, 1]) < 1e-12 and r > 0.5
    md = write_report(tmp_path).read_text()
    assert "- Selection luck (computed): " in md and f"SASRec r = {r:.2f} (4 seed deviations of 2 configurations)" in md
    assert "- Early stopping (computed from each run's per-epoch validation ndcg@10; patience 3)" in md
