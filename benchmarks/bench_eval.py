"""Full-ranking evaluation throughput (users/s) on ml-100k: tcf (matmul, FAISS) vs RecBole 1.2.1.

The same SASRec size on both sides (hidden 64, 2 blocks, 2 heads, max length 50), every
ml-100k user's test target ranked against all 1,682 items.  Throughput does not depend on
the weights, so both models are freshly initialised (seed 2020), not trained; tcf's
matmul and exact FAISS ranker are checked to give the same metrics.  Timed: the whole
evaluation call (batching of the user sequences, forward pass, scoring, metrics), best
of ``--repeats`` after one warm-up; dataset loading is not timed on either side.  CPU
seconds (``time.process_time``, all threads of the process) are printed too: on a shared
machine they move far less than wall time, and with one thread they are the cost.

* tcf: ``tcf.eval.ranking.evaluate`` with ``ranker`` matmul / faiss (flat, hnsw), history
  masked (the default protocol) and not, 512 users per chunk (``eval.batch_users``), and
  all users in one chunk.
* RecBole: ``Trainer.evaluate`` on its full-sort test loader (top-k metrics, its own
  code).  For sequential models ``eval_batch_size`` counts users: its default 4096 puts
  all 943 in one batch; 512 matches tcf's chunk.  RecBole does not mask the history of
  sequential models.

RecBole runs in its own virtualenv (``recbole_child.py`` says how it is made):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_eval.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from recbole_child import ROOT, run_child

CHILD = r"""
threads, repeats = int(sys.argv[2]), int(sys.argv[3])
rows = []
for users_per_batch in (None, 512):
    cfg = {**BASE, "topk": [5, 10, 20]}
    if users_per_batch:
        cfg["eval_batch_size"] = users_per_batch  # sequential full sort: users per batch
    config = Config(model="SASRec", dataset="ml-100k", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(threads)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to("cpu")
    trainer = Trainer(config, model)
    n_users = sum(len(batch[0]) for batch in test_data)
    trainer.evaluate(test_data, load_best_model=False, show_progress=False)  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        res = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    rows.append({"eval_batch_size": config["eval_batch_size"], "users": n_users, "seconds": min(times),
                 "all_seconds": times, "cpu_seconds": min(cpu), "metrics": {k: float(v) for k, v in res.items()}})
print(json.dumps(rows))
"""


def time_call(fn, repeats: int) -> tuple[float, list[float], float, object]:
    """-> (best wall seconds, all wall seconds, best CPU seconds of this process, last result)."""
    fn()  # warm-up
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(times), times, min(cpu), out


def run_tcf(threads: int, repeats: int) -> list[dict]:
    from tcf.data import ensure_dataset
    from tcf.eval.ranking import evaluate
    from tcf.models import build_model
    from tcf.run.config import load_config
    from tcf.run.seqdata import SeqData

    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "experiments" / "ml100k-sasrec-id.yaml", [f"data.root={ROOT / 'data'}"])
    data = SeqData(ensure_dataset(cfg.data.dataset, root=cfg.data.root))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.n_items, data.n_users)
    rows, reference = [], None
    for ranker, kind, masked, chunk in [("matmul", "flat", True, 512), ("matmul", "flat", False, 512),
                                        ("matmul", "flat", True, 1024), ("faiss", "flat", True, 512),
                                        ("faiss", "flat", False, 512), ("faiss", "hnsw", True, 512)]:
        def call(ranker=ranker, kind=kind, masked=masked, chunk=chunk):
            return evaluate(model, data, "test", ks=(5, 10, 20), max_len=cfg.model.max_len, mask_history=masked,
                            batch_users=chunk, ranker=ranker, faiss_index=kind)

        best, times, cpu, r = time_call(call, repeats)
        if ranker == "matmul":
            reference = r if masked else reference
        name = "matmul" if ranker == "matmul" else f"faiss {kind}"
        rows.append({"ranker": name, "masked": masked, "chunk": chunk, "users": len(r.users), "seconds": best,
                     "all_seconds": times, "cpu_seconds": cpu,
                     "ndcg@10": r.mean("ndcg@10"),
                     "max_abs_diff_vs_matmul": (max(float(np.abs(r.per_user[k] - reference.per_user[k]).max())
                                                    for k in r.per_user) if masked else None)})
    return rows


def run_recbole(threads: int, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        r = run_child(CHILD, tmp, threads, repeats)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-recbole", action="store_true")
    args = p.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    ours = run_tcf(threads, args.repeats)
    theirs = [] if args.skip_recbole else run_recbole(threads, args.repeats)
    print(f"threads {threads}, best of {args.repeats} after a warm-up\n")
    print("| system | ranking | users per batch | history masked | users | wall s | users/s | CPU s | users/CPU-s "
          "| test NDCG@10 (untrained) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in ours:
        print(f"| tcf | {row['ranker']} | {min(row['chunk'], row['users'])} | {'yes' if row['masked'] else 'no'} | "
              f"{row['users']} | {row['seconds']:.3f} | {row['users'] / row['seconds']:,.0f} | "
              f"{row['cpu_seconds']:.3f} | {row['users'] / row['cpu_seconds']:,.0f} | {row['ndcg@10']:.4f} |")
    for row in theirs:
        batch = row["eval_batch_size"]
        label = f"{min(batch, row['users'])}" + (" (default 4096)" if batch == 4096 else "")
        print(f"| RecBole 1.2.1 | full sort | {label} | no | {row['users']} | {row['seconds']:.3f} | "
              f"{row['users'] / row['seconds']:,.0f} | {row['cpu_seconds']:.3f} | "
              f"{row['users'] / row['cpu_seconds']:,.0f} | {row['metrics'].get('ndcg@10', float('nan')):.4f} |")
    diffs = {r["ranker"]: r["max_abs_diff_vs_matmul"] for r in ours if r["max_abs_diff_vs_matmul"] is not None}
    print(f"\nlargest per-user metric difference from matmul (history masked): {json.dumps(diffs)}")
    print("raw:", json.dumps({"tcf": ours, "recbole": theirs}))


if __name__ == "__main__":
    main()
