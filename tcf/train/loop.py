"""Train a head + tower, choose the checkpoint on validation, test it once, write results.json.

The run folder holds ``checkpoints/last.pt`` (written after every epoch, atomically:
``--resume`` continues from it) and ``checkpoints/best.pt`` (best validation NDCG@10),
and at the end ``results.json`` with metrics (valid and test, 95% CIs, slices), the
resolved config, seeds, package versions, git revision, hardware, timings and
parameter counts.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tcf import tracking
from tcf.devices import pick_device as device_named
from tcf.encoders.zoo import file_hash
from tcf.errors import TcfError
from tcf.eval.ranking import evaluate, report
from tcf.fsutil import atomic_path
from tcf.models import build_model
from tcf.models.inputs import text_inputs
from tcf.models.inputs import text_inputs as text_vectors  # noqa: F401 - the old name
from tcf.models.lm_tower import param_groups, step_items
from tcf.provenance import peak_memory, provenance, reset_peak_rss
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
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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


@dataclasses.dataclass
class Training:
    """What one run's steps share: the config, its folder, the data, the model and how it is stepped."""

    cfg: RunConfig
    out: Path
    par: distributed.Parallel
    device: torch.device
    data: SeqData
    text_info: dict | None
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    log_pop: torch.Tensor
    gather: object
    amp: bool
    eval_kw: dict
    seeds: dict
    t_start: float

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.pt"


def new_state() -> dict:
    return {"epoch": 0, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": [], "train_seconds": 0.0,
            "seconds_to_best": None}


def set_up(cfg: RunConfig, out: Path) -> Training:
    """Seeds, threads, process group, data, text inputs, model, optimizer and loss scaler of a run."""
    from tcf.data import dataset_for

    t_start = time.perf_counter()
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    seeds = seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    par = distributed.setup(cfg)  # train.strategy: this process's rank, group and device
    device = par.device or pick_device(cfg.train.device)
    dataset = dataset_for(cfg.data)
    data = SeqData(dataset)
    vectors, text_info = text_inputs(cfg, dataset)  # pooled vectors, token-state cache entry, or none
    model = build_model(cfg, data.n_items, data.n_users, vectors).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.train), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    # fp16 LM layers (fp32 master weights, autocast): scale the loss so small gradients do not underflow
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.model.tower in LM_TOWERS and cfg.encoder.dtype == "fp16"
                                  and cfg.train.strategy != "deepspeed")
    eval_kw = dict(ks=tuple(cfg.eval.ks), max_len=cfg.model.max_len, mask_history=cfg.eval.mask_history,
                   batch_users=cfg.eval.batch_users, device=device, ranker=cfg.eval.ranker,
                   faiss_index=cfg.eval.faiss_index)
    return Training(cfg=cfg, out=out, par=par, device=device, data=data, text_info=text_info, model=model, opt=opt,
                    scaler=scaler, log_pop=label_log_probs(data, device),
                    gather=par.gather_candidates if cfg.train.gather_negatives and par.world > 1 else None,
                    amp=cfg.train.amp and device.type == "cuda", eval_kw=eval_kw, seeds=seeds, t_start=t_start)


def resume_from_last(run: Training) -> dict:
    """Load last.pt (same config only) into the model, optimizer, scaler and random streams; -> the loop state."""
    if not run.last.is_file():
        raise TrainingError(f"--resume: no checkpoint at {run.last}")
    ck = torch.load(run.last, map_location=run.device, weights_only=False)
    changes = config_changes(ck["config"], resolved(run.cfg))
    if changes:
        raise TrainingError(f"--resume: {run.last} was made with another config ({'; '.join(changes[:5])}); "
                            "use a new --out")
    run.model.load_state_dict(ck["model"])  # strict: last.pt holds the full state of the model this config builds
    if ck["optimizer"] is not None:  # DeepSpeed keeps its (partitioned) optimizer state in its own checkpoint
        run.opt.load_state_dict(ck["optimizer"])
    if ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    set_rng_states(ck["rng"], run.device)
    return ck["state"]


def rng_states(device: torch.device) -> dict:
    """Every generator a resumed run must continue: torch's CPU one and, on a GPU, the run's device's; NumPy;
    Python.  Under DDP each rank's streams are reseeded per epoch (distributed.seed_epoch), so the main rank's
    are all a checkpoint needs."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_states(rng: dict, device: torch.device) -> None:
    """Restore :func:`rng_states`.  The states go back as CPU byte tensors, whatever device the checkpoint was
    loaded onto (``map_location`` moves them with the weights; the generators take CPU tensors only); the GPU
    state only where the checkpoint has one and the run is on a GPU (older checkpoints and CPU runs have none)."""
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)


def train_epoch(run: Training, windows: np.ndarray, epoch: int, show: bool) -> list[float]:
    """One pass over this rank's part of the epoch's permutation; -> the step losses."""
    cfg, par, data, device = run.cfg, run.par, run.data, run.device
    run.model.train()
    perm = windows[np.random.default_rng(cfg.seed + epoch).permutation(len(windows))]
    par.seed_epoch(cfg.seed, epoch)
    losses = []
    bar = step_bar(show, steps_per_epoch(run, len(windows)), f"epoch {epoch + 1}/{cfg.train.epochs}", cfg.train.batch_size * par.world)
    for step, (part, real) in enumerate(par.batches(perm, cfg.train.batch_size), start=1):  # this rank's part
        batch = data.train_batch(part, cfg.model.max_len)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp), step_items(run.model, batch):
            loss, value = par.loss(lambda m, b=batch: step_loss(m, b, cfg, data, run.log_pop, device, run.gather),
                                   batch[2], real)
        if not math.isfinite(value):
            raise TrainingError(f"loss became {value} at epoch {epoch + 1}, step {step}; "
                                f"stopped. The last good checkpoint is {run.last if run.last.exists() else 'none yet'} "
                                "(lower train.lr, or check the text vectors)")
        losses.append(value)
        if par.step(loss):  # DeepSpeed: backward, clipping and the step are the engine's
            continue
        optimizer_step(run, loss)
        bar_step(bar, float(np.mean(losses)))
    if bar is not None:
        bar.close()
    return losses


def optimizer_step(run: Training, loss: torch.Tensor) -> None:
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.train.grad_clip > 0:
        run.scaler.unscale_(run.opt)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip)
    run.scaler.step(run.opt)
    run.scaler.update()


def end_epoch(run: Training, state: dict, losses: list[float], t0: float, show: bool) -> None:
    """Validate, log the epoch, keep best.pt on a better validation score, write last.pt."""
    cfg, par = run.cfg, run.par
    valid = par.on_main(lambda: evaluate(run.model, run.data, "valid", **run.eval_kw).mean(SELECT_METRIC))  # to all
    state["train_seconds"] += time.perf_counter() - t0
    state["epoch"] = epoch = state["epoch"] + 1
    state["history"].append({"epoch": epoch, "loss": float(np.mean(losses)), f"valid_{SELECT_METRIC}": valid,
                             "seconds": time.perf_counter() - t0})
    tracking.log_epoch(cfg, run.out, state["history"][-1], main=par.is_main)  # tracking: on (MLflow); instant
    weights = par.state_dict()  # on every rank (gathered under ZeRO-3); rank 0 writes
    if valid > state["best"]:
        state.update(best=valid, best_epoch=epoch, bad_epochs=0, seconds_to_best=state["train_seconds"])
        if par.is_main:
            _save(run.ckpt_dir / "best.pt", {"model": weights, "epoch": epoch})
    else:
        state["bad_epochs"] += 1
    par.save_engine(run.ckpt_dir / "deepspeed", epoch)  # DeepSpeed: every rank its part, before last.pt
    if par.is_main:
        _save(run.last, {"model": weights, "optimizer": par.optimizer_state(run.opt), "state": state,
                         "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
                         "config": resolved(cfg),
                         "rng": rng_states(run.device)})
    if show:
        say(f"epoch {epoch}: loss {np.mean(losses):.4f}  valid {SELECT_METRIC} {valid:.4f}  best "
            f"{state['best']:.4f}@{state['best_epoch']}  ({time.perf_counter() - t0:.1f} s"
            + (f"; {state['bad_epochs']}/{cfg.train.patience} without a better one)" if state["bad_epochs"] else ")"))


def stops(train_cfg, state: dict) -> bool:
    """Early stopping: ``patience`` epochs without a better validation score, once ``min_epochs`` have run.

    A run that would have stopped at or after ``min_epochs`` anyway stops at the same epoch, so raising
    ``min_epochs`` changes only the runs that patience ended before it."""
    return state["bad_epochs"] >= train_cfg.patience and state["epoch"] >= train_cfg.min_epochs


def steps_per_epoch(run: Training, n_windows: int) -> int:
    return math.ceil(n_windows / (run.cfg.train.batch_size * run.par.world))


def announce(run: Training, n_windows: int, state: dict) -> None:
    cfg, world = run.cfg, run.par.world
    say(f"{cfg.name}: up to {cfg.train.epochs} epochs of {steps_per_epoch(run, n_windows)} steps ({n_windows:,} windows, batch "
        f"{cfg.train.batch_size}{f' x {world} processes' if world > 1 else ''}); stops after "
        f"{cfg.train.patience} epochs without a better valid {SELECT_METRIC}"
        + (f", not before epoch {cfg.train.min_epochs} (train.epochs, train.patience, train.min_epochs)"
           if cfg.train.min_epochs else " (train.epochs, train.patience)")
        + (f"; resuming after epoch {state['epoch']}" if state["epoch"] else ""))


def final_test(run: Training, state: dict) -> RunRecord:
    """Load best.pt, evaluate it on valid and test (per-user scores saved beside), -> the results record."""
    cfg, par, model, data = run.cfg, run.par, run.model, run.data
    metrics = {}
    for split in ("valid", "test"):
        r = par.run(lambda s=split: evaluate(model, data, s, **run.eval_kw))
        metrics[split] = report(r, data, bootstrap=cfg.eval.bootstrap, cold_max_count=cfg.eval.cold_max_count,
                                history_buckets=cfg.eval.history_buckets, seed=cfg.seed)
        if par.is_main:
            np.save(run.out / f"per_user_{split}.npy",
                    np.stack([r.users, *[r.per_user[k] for k in sorted(r.per_user)]]))
    n_total = sum(distributed.numel(p) for p in model.parameters())
    return RunRecord(
        task="train", name=cfg.name, config=resolved(cfg), metrics=metrics, dataset=dataset_section(data),
        seeds={"run": cfg.seed, **run.seeds},
        timings={"train_seconds": state["train_seconds"], "seconds_to_best": state["seconds_to_best"],
                 "wall_seconds": time.perf_counter() - run.t_start, **peak_memory()},
        per_user_columns=["user_id", *sorted(r.per_user)], provenance=provenance(),
        sections={"best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "history": state["history"],
                  "parameters": {"trainable": sum(distributed.numel(p) for p in model.parameters() if p.requires_grad),
                                 "total": n_total,
                                 **({"encoder": run.text_info.get("encoder_parameters")} if run.text_info else {})},
                  "text_cache": run.text_info or None, "distributed": par.describe(),
                  # which weights these numbers are from: a report re-scoring the run checks the file against it
                  # (the same hash as zero-shot candidate keys' hard_run: tcf.encoders.zoo.file_hash)
                  "checkpoint": {"best_sha256": file_hash(run.ckpt_dir / "best.pt")[:16]}})


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    reset_peak_rss()  # the record's peak is this run's (set-up, a fine-tuned tower's cache, training, test)
    run = set_up(cfg, Path(out))
    par = run.par
    state = resume_from_last(run) if resume else new_state()
    par.wrap(run.model, run.opt, cfg)  # DDP, or a DeepSpeed engine around model and optimizer
    if resume:
        par.load_engine(run.ckpt_dir / "deepspeed", state["epoch"])
    show = progress and par.is_main
    windows = run.data.windows(cfg.model.max_len)
    if show:
        announce(run, len(windows), state)
    while state["epoch"] < cfg.train.epochs and not stops(cfg.train, state):
        t0 = time.perf_counter()
        losses = train_epoch(run, windows, state["epoch"], show)
        end_epoch(run, state, losses, t0, show)

    par.barrier()  # best.pt is written
    best = torch.load(run.ckpt_dir / "best.pt", map_location=run.device, weights_only=False)
    par.load_state_dict(best["model"])
    if not (par.is_main or par.everyone_evaluates):
        return par.finish(None)  # rank 0 tests and writes; its results come back
    record = final_test(run, state)
    if par.is_main:
        write_results(run.out, record)
    results = record.to_dict()
    tracking.log_results(cfg, run.out, results, main=par.is_main)  # waits at most tracking.timeout_s, never raises
    return par.finish(results)
