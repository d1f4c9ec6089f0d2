"""In-batch softmax vs full softmax: does the logQ correction make in-batch training learn what full softmax learns?

Trains SASRec-ID with full-softmax CE and with the in-batch loss (the fixed correction,
``log(1 - (1 - p)^P)`` for unique candidates; the old one, ``log p``, reproduced here by
patching ``tcf.train.losses.log_inclusion``; and no correction), converged with early stopping,
and prints per variant: test NDCG@10 / HR@10 and, against the CE run, the mean over test users
of the Spearman rank correlation of their score vectors over all items (history masked out).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_logq.py synthetic
    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_logq.py ml-100k --batch 64 256

Runs go to runs/bench-logq/<dataset>/<variant>; a finished one is reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tcf.data import ensure_dataset
from tcf.eval.ranking import score_users
from tcf.run.config import load_config
from tcf.train import loop, losses
from tcf.train.trained import load_trained

ROOT = Path(__file__).resolve().parent.parent
CORRECTIONS = {"inclusion": ["train.logq=true"], "old-log-p": ["train.logq=true"], "none": ["train.logq=false"]}


def train(out: Path, overrides: list[str], old: bool) -> dict:
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    fixed = losses.log_inclusion
    if old:
        losses.log_inclusion = lambda log_p, draws: log_p  # the correction before the fix
    try:
        return loop.train(load_config(ROOT / "experiments" / "ml100k-sasrec-id.yaml", overrides), out, progress=True)
    finally:
        losses.log_inclusion = fixed


def test_scores(folder: Path) -> np.ndarray:
    run = load_trained(folder)
    with torch.no_grad():
        s, _ = score_users(run.model, run.data, run.data.users, "test", max_len=run.cfg.model.max_len,
                           mask_history=True, device="cpu")
    return s[:, 1:].numpy()


def spearman_rows(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the Spearman correlation of the finite entries (masked items left out)."""
    out = []
    for x, y in zip(a, b):
        keep = np.isfinite(x) & np.isfinite(y)
        rx, ry = np.argsort(np.argsort(x[keep])), np.argsort(np.argsort(y[keep]))
        out.append(np.corrcoef(rx, ry)[0, 1])
    return float(np.mean(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["synthetic", "ml-100k"])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--variants", nargs="+", default=list(CORRECTIONS), choices=list(CORRECTIONS))
    args = ap.parse_args()
    base = ROOT / "runs" / "bench-logq" / args.dataset
    data = [f"data.dataset={args.dataset}", f"data.root={ROOT / 'data'}", f"seed={args.seed}", "eval.bootstrap=0"]
    if args.dataset == "synthetic":
        ensure_dataset("synthetic", root=ROOT / "data")
        data += ["model.max_len=20"]
    rows = []
    for batch in args.batch:
        ce_dir = base / f"ce-b{batch}-s{args.seed}"
        runs = {"ce": (ce_dir, train(ce_dir, [*data, "train.loss=ce", f"train.batch_size={batch}"], False))}
        for v in args.variants:
            out = base / f"inbatch-{v}-b{batch}-s{args.seed}"
            runs[f"inbatch ({v})"] = (out, train(out, [*data, "train.loss=inbatch", f"train.batch_size={batch}",
                                                        *CORRECTIONS[v]], v == "old-log-p"))
        ce_scores = test_scores(ce_dir)
        for name, (folder, r) in runs.items():
            m = r["metrics"]["test"]["metrics"]
            rho = 1.0 if name == "ce" else spearman_rows(test_scores(folder), ce_scores)
            rows.append((batch, name, m["ndcg@10"]["mean"], m["hr@10"]["mean"], rho, r["best_epoch"], r["epochs_run"]))
    ce = {b: n for b, name, n, *_ in rows if name == "ce"}
    print(f"\n{args.dataset}, SASRec-ID, seed {args.seed}, test split, history masked")
    print("| batch | loss | NDCG@10 | vs CE | HR@10 | Spearman vs CE | best epoch / run |")
    print("|---|---|---|---|---|---|---|")
    for batch, name, ndcg, hr, rho, best, ran in rows:
        print(f"| {batch} | {name} | {ndcg:.4f} | {ndcg / ce[batch] - 1:+.1%} | {hr:.4f} | {rho:.3f} | {best} / {ran} |")


if __name__ == "__main__":
    main()
