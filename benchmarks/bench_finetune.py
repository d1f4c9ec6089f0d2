"""Top-k fine-tuning step time vs recomputing the whole encoder, and one ml-100k epoch per setting.

Part 1, one training step over a batch of unique ml-100k items (the same items, the same
pooling, adapter, in-batch softmax loss and AdamW step in every column):

* ``top-k (cache)``   tcf's ``finetune`` tower: cached states entering layer L-k -> k layers
* ``full, bottom frozen``  token ids -> the whole model, bottom L-k blocks and embeddings frozen
                           (the same trainable set; what a step costs without the cache)
* ``full fine-tune``  token ids -> the whole model, every block trained

The goal (recommenders issue): top-k step time <= (k/L + 0.15) x the step that recomputes the
whole encoder.  Tokenisation is done once beforehand, so the baselines are not charged for it.

Part 2, one epoch of ``tcf train`` (SASRec / DSSM, in-batch loss) on ml-100k with a fine-tuned
tower, timed as the loop records it (training + validation), plus the token-cache extraction.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_finetune.py
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tcf.encoders.pooling import l2_normalize, pool
from tcf.models.lm_tower import build_lm_tower, token_cache
from tcf.models.towers import adapter
from tcf.run.config import load_config

DIM = 64


def run_config(model: str, k: int, max_tokens: int, *extra: str):
    return load_config(None, ["data.dataset=ml-100k", f"encoder.model={model}", f"encoder.max_tokens={max_tokens}",
                              "model.tower=finetune", f"model.finetune_layers={k}", "train.loss=inbatch",
                              f"model.dim={DIM}", *extra])


def loss_of(vectors: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """In-batch softmax: user i's positive is item i, the other items are its negatives."""
    return F.cross_entropy(users @ vectors.T, torch.arange(len(vectors)))


def timed(step, repeat: int) -> float:
    step()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def adamw_step(module: torch.nn.Module, vectors, users):
    """One AdamW step of the in-batch loss on ``vectors()`` (the module's trainable parameters only)."""
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(vectors(), users).backward()
        opt.step()

    return step


def cached_step(tower, ids, users):
    return adamw_step(tower, lambda: tower.vectors(ids), users)


class FullEncoder(torch.nn.Module):
    """The whole model from token ids, then the same pooling, normalisation and adapter as the tower."""

    def __init__(self, folder, pooling: str, n_layers: int, k: int, train_all: bool):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.pooling = pooling
        self.takes_positions = "position_ids" in inspect.signature(self.model.forward).parameters
        hidden = self.model.config.hidden_size
        self.adapter = adapter(hidden, DIM, 1, 0.0)
        top = {f"{name}.{i}." for name in ("layers", "encoder.layer") for i in range(n_layers - k, n_layers)}
        for name, p in self.model.named_parameters():
            p.requires_grad_(train_all or any(name.startswith(t) for t in top) or name.startswith("norm."))

    def vectors(self, batches) -> torch.Tensor:
        parts = []
        for input_ids, mask, _order in batches:
            kw = {"input_ids": input_ids, "attention_mask": mask}
            if self.takes_positions:  # as in extraction: positions from the mask
                kw["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
            parts.append(pool(self.model(**kw).last_hidden_state, mask, self.pooling))
        order = torch.cat([b[2] for b in batches])
        return self.adapter(l2_normalize(torch.cat(parts)[torch.argsort(order)]))


def token_batches(tokenizer, texts, ids, max_tokens: int, chunk: int = 256):
    """Length-sorted chunks of right-padded token ids (what the tower does with its cached states)."""
    from tcf.encoders.hf import tokenize

    toks, _, _ = tokenize(tokenizer, [texts[i] for i in ids.tolist()], max_tokens)
    order = np.argsort([len(t) for t in toks], kind="stable")
    out = []
    for s in range(0, len(order), chunk):
        idx = order[s:s + chunk]
        b = tokenizer.pad({"input_ids": [toks[i] for i in idx]}, padding=True, return_tensors="pt")
        out.append((b["input_ids"], b["attention_mask"], torch.as_tensor(idx)))
    return out


def full_step(enc: FullEncoder, batches, users):
    return adamw_step(enc, lambda: enc.vectors(batches), users)


def bench_steps(model: str, k: int, sizes: list[int], max_tokens: int, repeat: int, full_finetune: bool) -> list[dict]:
    from tcf.data import ensure_dataset
    from tcf.encoders.hf import describe, load_tokenizer, resolve_model

    cfg = run_config(model, k, max_tokens)
    dataset = ensure_dataset("ml-100k")
    t = time.perf_counter()
    entry, _ = token_cache(cfg, dataset)
    print(f"  {model}: token cache ready in {time.perf_counter() - t:.1f} s ({entry.path.name})", file=sys.stderr)
    tower = build_lm_tower(cfg, entry).train()
    source, _, _, n_layers, _ = describe(cfg.encoder)
    folder = resolve_model(cfg.encoder)[0]
    tokenizer = load_tokenizer(source, cfg.encoder)
    texts = dataset.item_texts(dataset.template)
    encoders = {"frozen": FullEncoder(folder, cfg.encoder.pooling, n_layers, k, train_all=False).train()}
    if full_finetune:
        encoders["all"] = FullEncoder(folder, cfg.encoder.pooling, n_layers, k, train_all=True).train()
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        ids = torch.as_tensor(np.sort(rng.choice(np.arange(1, dataset.n_items + 1), n, replace=False)))
        users = torch.randn(n, DIM)
        batches = token_batches(tokenizer, texts, ids, max_tokens)
        row = {"model": model, "L": n_layers, "k": k, "items": n,
               "tokens": int(sum(int(b[1].sum()) for b in batches)),
               "topk_s": timed(cached_step(tower, ids, users), repeat),
               "full_frozen_s": timed(full_step(encoders["frozen"], batches, users), repeat)}
        if full_finetune:
            row["full_all_s"] = timed(full_step(encoders["all"], batches, users), repeat)
        row["ratio"] = row["topk_s"] / row["full_frozen_s"]
        row["goal"] = k / n_layers + 0.15
        rows.append(row)
        print(f"  {row}", file=sys.stderr)
    return rows


def bench_epoch(setting: str, repeat_root: Path) -> dict:
    """One epoch of `tcf train` with a fine-tuned tower; setting = 'model:k:head:batch:max_tokens'."""
    from tcf.data import ensure_dataset
    from tcf.run.seqdata import SeqData
    from tcf.train import loop

    model, k, head, batch, max_tokens = setting.split(":")
    cfg = run_config(model, int(k), int(max_tokens), f"model.head={head}", "model.user_tower=mean",
                     f"train.batch_size={batch}", "train.epochs=1", "eval.bootstrap=0", "name=bench-finetune")
    t = time.perf_counter()
    token_cache(cfg, ensure_dataset("ml-100k"))  # extracted on first use, as `tcf train` would
    cache_s = time.perf_counter() - t
    t = time.perf_counter()
    r = loop.train(cfg, repeat_root / setting.replace(":", "-"), progress=False)
    wall = time.perf_counter() - t
    h = r["history"][0]
    return {"setting": setting, "cache_s": cache_s, "epoch_s": h["seconds"], "run_s": wall, "loss": h["loss"],
            "valid_ndcg@10": h["valid_ndcg@10"], "test_ndcg@10": r["metrics"]["test"]["metrics"]["ndcg@10"]["mean"],
            "steps": -(-len(SeqData(ensure_dataset("ml-100k")).windows(cfg.model.max_len)) // int(batch))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["smollm2-135m", "minilm-l6"])
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--items", nargs="+", type=int, default=[64, 256, 1024], help="unique items per step")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--full-finetune", action="store_true", help="also time a step that trains every block")
    ap.add_argument("--epochs", nargs="*", default=["minilm-l6:2:sasrec:128:32", "minilm-l6:2:dssm:128:32",
                                                     "smollm2-135m:2:sasrec:128:32"],
                    help="model:k:head:batch_size:max_tokens settings for one ml-100k epoch each")
    args = ap.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}", file=sys.stderr)

    steps = [r for m in args.models for r in bench_steps(m, args.k, args.items, args.max_tokens, args.repeat,
                                                         args.full_finetune)]
    if steps:
        extra = " full fine-tune (s) |" if args.full_finetune else ""
        print(f"\n| model | L | k | unique items | tokens | top-k step (s) | full, bottom frozen (s) |{extra} "
              "ratio | goal k/L+0.15 | met |")
        print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if extra else "") + "---:|---:|---|")
        for r in steps:
            ff = f" {r['full_all_s']:.3f} |" if extra else ""
            print(f"| {r['model']} | {r['L']} | {r['k']} | {r['items']} | {r['tokens']:,} | {r['topk_s']:.3f} | "
                  f"{r['full_frozen_s']:.3f} |{ff} {r['ratio']:.3f} | {r['goal']:.3f} | "
                  f"{'yes' if r['ratio'] <= r['goal'] else 'no'} |")
    if args.epochs:
        with tempfile.TemporaryDirectory() as tmp:
            epochs = [bench_epoch(s, Path(tmp)) for s in args.epochs]
        print("\n| model:k:head:batch:max_tokens | steps | token cache (s) | epoch: train + valid (s) | "
              "whole 1-epoch run (s) | valid NDCG@10 | test NDCG@10 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for e in epochs:
            print(f"| {e['setting']} | {e['steps']} | {e['cache_s']:.1f} | {e['epoch_s']:.1f} | {e['run_s']:.1f} | "
                  f"{e['valid_ndcg@10']:.4f} | {e['test_ndcg@10']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
