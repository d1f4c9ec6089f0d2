"""SASRec-ID on ml-100k: tcf vs RecBole 1.2.1, same protocol, same CPU, one run.

RecBole runs in its own virtualenv (it pins numpy < 2), created on first use:

    python3 -m venv .bench/recbole-venv && .bench/recbole-venv/bin/pip install torch==2.13.0 recbole==1.2.1 \
        "numpy<2" "pandas<2.3" "scipy<1.15"

(RecBole 1.2.1 uses ``np.float_``, gone in numpy 2; its own requirements do not say so.)
The RecBole side shares its preamble and fixed settings with ``bench_eval.py`` (``recbole_child.py``).

Both use the same ml-100k file (the copy the recbole package ships), leave-one-out by
time with ties in file order, full ranking, the same model size (hidden 64, 2 blocks,
2 heads, max length 50, dropout 0.2, CE loss, lr 1e-3, seed 2020) and early stopping on
validation NDCG@10 with patience 10.  RecBole's best model's full-sort scores are saved
and re-scored here with tcf's metric code, with and without the history masked, so the
numbers compare like with like; RecBole's own reported test metrics are printed too.
The split is compared user by user: RecBole stores timestamps as float32 (spacing 64 s
at 1998 epochs), so a few interactions one second apart tie and fall back to file order;
the number of users whose test target differs is printed.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_recbole.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from recbole_child import ROOT, run_child

CHILD = r"""
epochs, threads = int(sys.argv[2]), int(sys.argv[3])
cfg = {**BASE, "learning_rate": 0.001, "train_batch_size": 256, "eval_batch_size": 4096, "topk": [10],
       "stopping_step": 10, "epochs": epochs}
config = Config(model="SASRec", dataset="ml-100k", config_dict=cfg)
init_seed(config["seed"], config["reproducibility"])
torch.set_num_threads(threads)
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
model = SASRec(config, train_data.dataset).to(config["device"])
trainer = Trainer(config, model)
log, t0 = [], time.perf_counter()
def callback(epoch, score):
    log.append({"epoch": epoch + 1, "valid_ndcg@10": float(score), "seconds": time.perf_counter() - t0})
trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=callback)
total = time.perf_counter() - t0
test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
model.eval()
scores, users, targets = [], [], []
with torch.no_grad():
    for batch in test_data:
        interaction, history_index, positive_u, positive_i = batch
        s = model.full_sort_predict(interaction).view(-1, dataset.item_num)
        scores.append(s.numpy()); users.append(interaction["user_id"].numpy()); targets.append(positive_i.numpy())
np.save(out / "scores.npy", np.concatenate(scores).astype(np.float32))
uid_tok = dataset.field2id_token["user_id"]; iid_tok = dataset.field2id_token["item_id"]
json.dump({"log": log, "total_seconds": total, "recbole_test": {k: float(v) for k, v in test.items()},
           "users": [str(uid_tok[u]) for u in np.concatenate(users)],
           "targets": [str(iid_tok[i]) for i in np.concatenate(targets)],
           "columns": [str(t) for t in iid_tok]}, open(out / "recbole.json", "w"))
"""


def run_recbole(out: Path, epochs: int, threads: int) -> dict:
    run_child(CHILD, out, epochs, threads)
    info = json.loads((out / "recbole.json").read_text())
    info["scores"] = np.load(out / "scores.npy")
    return info


def rescore_recbole(info: dict, data) -> dict:
    """RecBole's best-model scores, in tcf's item ids, scored by tcf's metric code (masked and not)."""
    from tcf.eval.metrics import metrics_from_scores

    ds = data.dataset
    ours = {s: i for s, i in zip(ds.items["source_id"], ds.items["item_id"])}
    user_ids = {s: i for s, i in zip(ds.users["source_id"], ds.users["user_id"])}
    cols = np.array([ours.get(t, 0) for t in info["columns"]])  # RecBole column -> tcf item id (0 = padding)
    scores = np.full((len(info["users"]), ds.n_items + 1), -np.inf, dtype=np.float32)
    keep = cols > 0
    scores[:, cols[keep]] = info["scores"][:, keep]
    users = np.array([user_ids[u] for u in info["users"]])
    targets = np.array([ours[t] for t in info["targets"]])
    _, tcf_targets = ds.targets("test")
    out = {"split_differs": int((targets != tcf_targets[users - 1]).sum())}
    for masked in (False, True):
        s = scores.copy()
        if masked:
            for row, u in enumerate(users):
                hist = data.seqs[u][:-1]
                s[row, hist[hist != targets[row]]] = -np.inf
        m = metrics_from_scores(s, targets, ks=(10,))
        out["masked" if masked else "unmasked"] = {k: float(np.mean(v)) for k, v in m.items()}
    return out


def run_tcf(out: Path, threads: int, batch_size: int) -> dict:
    from tcf.eval.ranking import evaluate
    from tcf.run.config import load_config
    from tcf.train.loop import train
    from tcf.train.trained import load_trained

    cfg = load_config(ROOT / "experiments" / "ml100k-sasrec-id.yaml",
                      [f"train.threads={threads}", f"train.batch_size={batch_size}", "eval.bootstrap=0",
                       f"data.root={out / 'data'}"])
    results = train(cfg, out / "run", progress=False)
    run = load_trained(out / "run")  # the one strict loader of a finished run
    model, data = run.model, run.data
    unmasked = evaluate(model, data, "test", ks=(10,), max_len=cfg.model.max_len, mask_history=False)
    results["unmasked"] = {k: float(np.mean(v)) for k, v in unmasked.per_user.items()}
    return results, data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=300, help="RecBole's epoch cap (it stops early)")
    p.add_argument("--batch-size", type=int, default=64, help="tcf training windows per step")
    args = p.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        ours, data = run_tcf(tmp / "tcf", threads, args.batch_size)
        tcf_wall = time.perf_counter() - t
        rb = run_recbole(tmp, args.epochs, threads)
        rescored = rescore_recbole(rb, data)
    best = max(rb["log"], key=lambda e: e["valid_ndcg@10"])
    tm = ours["metrics"]["test"]["metrics"]
    print(f"test targets that differ between RecBole's split and tcf's: {rescored['split_differs']} of "
          f"{data.n_users} users (RecBole reads timestamps as float32, which ties distinct seconds)\n")
    print("| system | best epoch / run | seconds to best | total seconds | test HR@10 unmasked | test NDCG@10 unmasked "
          "| test HR@10 masked | test NDCG@10 masked |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| RecBole 1.2.1 SASRec | {best['epoch']} / {len(rb['log'])} | {best['seconds']:.0f} | "
          f"{rb['total_seconds']:.0f} | {rescored['unmasked']['hr@10']:.4f} | {rescored['unmasked']['ndcg@10']:.4f} | "
          f"{rescored['masked']['hr@10']:.4f} | {rescored['masked']['ndcg@10']:.4f} |")
    print(f"| tcf SASRec-ID | {ours['best_epoch']} / {ours['epochs_run']} | {ours['timings']['seconds_to_best']:.0f} | "
          f"{tcf_wall:.0f} | {ours['unmasked']['hr@10']:.4f} | {ours['unmasked']['ndcg@10']:.4f} | "
          f"{tm['hr@10']['mean']:.4f} | {tm['ndcg@10']['mean']:.4f} |")
    print(f"\nRecBole's own test report (its top-k code): {json.dumps(rb['recbole_test'])}")
    print(f"speed-up to best validation: {best['seconds'] / ours['timings']['seconds_to_best']:.1f}x; "
          f"masked test NDCG@10 tcf - RecBole: {tm['ndcg@10']['mean'] - rescored['masked']['ndcg@10']:+.4f}")


if __name__ == "__main__":
    main()
