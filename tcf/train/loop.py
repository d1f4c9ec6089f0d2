"""Train a head + tower, choose the checkpoint on validation, test it once, write results.json.

The run folder holds ``checkpoints/last.pt`` (written after every epoch, atomically:
``--resume`` continues from it) and ``checkpoints/best.pt`` (best validation NDCG@10),
and at the end ``results.json`` with metrics (valid and test, 95% CIs, slices), the
resolved config, seeds, package versions, git revision, hardware, timings and
parameter counts.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tcf import tracking
from tcf.devices import pick_device as device_named
from tcf.errors import TcfError
from tcf.eval.ranking import evaluate, report
from tcf.models import build_model
from tcf.models.inputs import text_inputs
from tcf.models.inputs import text_inputs as text_vectors  # noqa: F401 - the old name
from tcf.models.lm_tower import param_groups, step_items
from tcf.provenance import provenance
from tcf.run.config import LM_TOWERS, RunConfig, config_changes, resolved
from tcf.run.results import RunRecord, dataset_section, write_results
from tcf.run.seqdata import SeqData
from tcf.train import distributed
from tcf.train.losses import full_ce, inbatch, sampled_bce

SELECT_METRIC = "ndcg@10"


class TrainingError(TcfError):
    pass


def seed_everything(seed: int) -> dict:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return {"python": seed, "numpy": seed, "torch": seed}


def pick_device(name: str) -> torch.device:
    return torch.device(device_named(name, "train.device"))


def say(line: str) -> None:
    """One progress line on stderr (beside a progress bar, not through it)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def step_bar(show: bool, steps: int, desc: str, windows_per_step: int):
    """A bar over one epoch's steps: steps done, windows/s and the time left in the epoch (None when quiet)."""
    if not show:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr, mininterval=0, miniters=1,
               bar_format="{desc}: {n}/{total} steps [{elapsed}<{remaining}{postfix}]")
    bar.windows_per_step = windows_per_step
    return bar


def bar_step(bar, loss: float) -> None:
    """One step done: the bar shows the epoch's mean loss so far and the windows trained per second."""
    if bar is None:
        return
    bar.update(1)
    rate = bar.n * bar.windows_per_step / max(bar.format_dict["elapsed"], 1e-9)
    bar.set_postfix_str(f"loss {loss:.4f}, {rate:,.0f} windows/s", refresh=False)


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def label_log_probs(data: SeqData, device) -> torch.Tensor:
    """[N + 1] log of each item's share of the training labels: the distribution in-batch candidates are drawn
    from (items that are never a label get the share of one, so the log stays finite)."""
    counts = torch.as_tensor(data.label_counts, dtype=torch.float64, device=device)
    return torch.log(counts.clamp_min(1) / counts.sum()).float()


def step_loss(model, batch, cfg: RunConfig, data: SeqData, log_pop, device, gather=None) -> torch.Tensor:
    """``gather``: inbatch under data parallelism, the step's candidates from every rank (see inbatch)."""
    users, inputs, labels, known = (t.to(device) for t in batch)
    states = model.states(users, inputs)  # [B, L, D]
    keep = labels != 0
    h, y = states[keep], labels[keep]  # [P, D], [P]
    rows = torch.arange(len(users), device=device)[:, None].expand_as(labels)[keep]  # [P] batch row of each
    t = cfg.train
    if t.loss == "ce":
        return full_ce(h, y, model.all_items(), t.temperature)
    if t.loss == "inbatch":
        return inbatch(h, y, rows, known, model.item_vectors, log_pop if t.logq else None, t.temperature, gather)
    return sampled_bce(h, y, rows, known, model.item_vectors, data.n_items)


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    from tcf.data import ensure_dataset

    out = Path(out)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    seeds = seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    par = distributed.setup(cfg)  # train.strategy: this process's rank, group and device
    device = par.device or pick_device(cfg.train.device)
    dataset = ensure_dataset(cfg.data.dataset, root=cfg.data.root)
    data = SeqData(dataset)
    vectors, text_info = text_inputs(cfg, dataset)  # pooled vectors, token-state cache entry, or none
    model = build_model(cfg, data.n_items, data.n_users, vectors).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.train), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    log_pop = label_log_probs(data, device)
    gather = par.gather_candidates if cfg.train.gather_negatives and par.world > 1 else None
    amp = cfg.train.amp and device.type == "cuda"
    # fp16 LM layers (fp32 master weights, autocast): scale the loss so small gradients do not underflow
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.model.tower in LM_TOWERS and cfg.encoder.dtype == "fp16"
                                  and cfg.train.strategy != "deepspeed")
    eval_kw = dict(ks=tuple(cfg.eval.ks), max_len=cfg.model.max_len, mask_history=cfg.eval.mask_history,
                   batch_users=cfg.eval.batch_users, device=device, ranker=cfg.eval.ranker,
                   faiss_index=cfg.eval.faiss_index)

    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": [], "train_seconds": 0.0,
             "seconds_to_best": None}
    last = ckpt_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise TrainingError(f"--resume: no checkpoint at {last}")
        ck = torch.load(last, map_location=device, weights_only=False)
        changes = config_changes(ck["config"], resolved(cfg))
        if changes:
            raise TrainingError(f"--resume: {last} was made with another config ({'; '.join(changes[:5])}); "
                                "use a new --out")
        model.load_state_dict(ck["model"])  # strict: last.pt holds the full state of the model this config builds
        if ck["optimizer"] is not None:  # DeepSpeed keeps its (partitioned) optimizer state in its own checkpoint
            opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])

    par.wrap(model, opt, cfg)  # DDP, or a DeepSpeed engine around model and optimizer
    if resume:
        par.load_engine(ckpt_dir / "deepspeed", state["epoch"])
    show = progress and par.is_main
    windows = data.windows(cfg.model.max_len)
    steps = math.ceil(len(windows) / (cfg.train.batch_size * par.world))
    if show:
        say(f"{cfg.name}: up to {cfg.train.epochs} epochs of {steps} steps ({len(windows):,} windows, batch "
            f"{cfg.train.batch_size}{f' x {par.world} processes' if par.world > 1 else ''}); stops after "
            f"{cfg.train.patience} epochs without a better valid {SELECT_METRIC} (train.epochs, train.patience)"
            + (f"; resuming after epoch {state['epoch']}" if state["epoch"] else ""))
    while state["epoch"] < cfg.train.epochs and state["bad_epochs"] < cfg.train.patience:
        epoch = state["epoch"]
        model.train()
        t0 = time.perf_counter()
        perm = windows[np.random.default_rng(cfg.seed + epoch).permutation(len(windows))]
        par.seed_epoch(cfg.seed, epoch)
        losses = []
        bar = step_bar(show, steps, f"epoch {epoch + 1}/{cfg.train.epochs}", cfg.train.batch_size * par.world)
        for step, (part, real) in enumerate(par.batches(perm, cfg.train.batch_size), start=1):  # this rank's part
            batch = data.train_batch(part, cfg.model.max_len)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), step_items(model, batch):
                loss, value = par.loss(lambda m, b=batch: step_loss(m, b, cfg, data, log_pop, device, gather),
                                       batch[2], real)
            if not math.isfinite(value):
                raise TrainingError(f"loss became {value} at epoch {epoch + 1}, step {step}; "
                                    f"stopped. The last good checkpoint is {last if last.exists() else 'none yet'} "
                                    "(lower train.lr, or check the text vectors)")
            losses.append(value)
            if par.step(loss):  # DeepSpeed: backward, clipping and the step are the engine's
                continue
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(opt)
            scaler.update()
            bar_step(bar, float(np.mean(losses)))
        if bar is not None:
            bar.close()
        valid = par.on_main(lambda: evaluate(model, data, "valid", **eval_kw).mean(SELECT_METRIC))  # to every rank
        state["train_seconds"] += time.perf_counter() - t0
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "loss": float(np.mean(losses)), f"valid_{SELECT_METRIC}": valid,
                                 "seconds": time.perf_counter() - t0})
        tracking.log_epoch(cfg, out, state["history"][-1], main=par.is_main)  # tracking: on (MLflow); instant
        weights = par.state_dict()  # on every rank (gathered under ZeRO-3); rank 0 writes
        if valid > state["best"]:
            state.update(best=valid, best_epoch=epoch + 1, bad_epochs=0, seconds_to_best=state["train_seconds"])
            if par.is_main:
                _save(ckpt_dir / "best.pt", {"model": weights, "epoch": epoch + 1})
        else:
            state["bad_epochs"] += 1
        par.save_engine(ckpt_dir / "deepspeed", epoch + 1)  # DeepSpeed: every rank its part, before last.pt
        if par.is_main:
            _save(last, {"model": weights, "optimizer": par.optimizer_state(opt), "state": state,
                         "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                         "config": resolved(cfg),
                         "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                 "python": random.getstate()}})
        if show:
            say(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}  valid {SELECT_METRIC} {valid:.4f}  best "
                f"{state['best']:.4f}@{state['best_epoch']}  ({time.perf_counter() - t0:.1f} s"
                + (f"; {state['bad_epochs']}/{cfg.train.patience} without a better one)" if state["bad_epochs"] else ")"))

    par.barrier()  # best.pt is written
    best = torch.load(ckpt_dir / "best.pt", map_location=device, weights_only=False)
    par.load_state_dict(best["model"])
    if not (par.is_main or par.everyone_evaluates):
        return par.finish(None)  # rank 0 tests and writes; its results come back
    metrics = {}
    for split in ("valid", "test"):
        r = par.run(lambda s=split: evaluate(model, data, s, **eval_kw))
        metrics[split] = report(r, data, bootstrap=cfg.eval.bootstrap, cold_max_count=cfg.eval.cold_max_count,
                                history_buckets=cfg.eval.history_buckets, seed=cfg.seed)
        if par.is_main:
            np.save(out / f"per_user_{split}.npy", np.stack([r.users, *[r.per_user[k] for k in sorted(r.per_user)]]))
    n_total = sum(distributed.numel(p) for p in model.parameters())
    record = RunRecord(
        task="train", name=cfg.name, config=resolved(cfg), metrics=metrics, dataset=dataset_section(data),
        seeds={"run": cfg.seed, **seeds},
        timings={"train_seconds": state["train_seconds"], "seconds_to_best": state["seconds_to_best"],
                 "wall_seconds": time.perf_counter() - t_start},
        per_user_columns=["user_id", *sorted(r.per_user)], provenance=provenance(),
        sections={"best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "history": state["history"],
                  "parameters": {"trainable": sum(distributed.numel(p) for p in model.parameters() if p.requires_grad),
                                 "total": n_total,
                                 **({"encoder": text_info.get("encoder_parameters")} if text_info else {})},
                  "text_cache": text_info or None, "distributed": par.describe()})
    if par.is_main:
        write_results(out, record)
    results = record.to_dict()
    tracking.log_results(cfg, out, results, main=par.is_main)  # waits at most tracking.timeout_s, never raises
    return par.finish(results)
