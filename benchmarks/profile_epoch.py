"""Where one training epoch of a run spends its time: phases of each step, validation, checkpointing, and the
top operators under torch.profiler.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_epoch.py experiments/study-ml100k.yaml \
        --match finetune-minilm-l6-bf16-s2020-sasrec-2 [--set train.epochs=1] [--steps N] [--ops 15] \
        [--native-low-precision]

The run is the experiment's first run whose id contains --match; it is set up exactly as `tcf train` sets it up
(tcf.train.loop.set_up: data, caches, model, optimizer) in a temporary folder, and one epoch's steps are replayed
with the loop's own functions (step_items, step_loss, optimizer_step, evaluate), timed phase by phase:

  batch      building the step's windows (SeqData.train_batch)
  items      the LM tower's forward over the step's unique items (top k blocks + pooling + adapter)
  head+loss  the user model's forward and the loss
  backward   loss.backward() (through the head and the k blocks)
  optimizer  clipping and AdamW
  validation one full-ranking pass over the validation users (the catalogue through the k blocks, no grad)
  checkpoint writing a last.pt-sized checkpoint (model + optimizer state), as end_epoch does every epoch

Prints a markdown table (seconds, share of the epoch) and the operators with the most self CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcf.eval.ranking import evaluate  # noqa: E402
from tcf.experiments.sweep import load_experiment  # noqa: E402
from tcf.models.lm_tower import step_items  # noqa: E402
from tcf.train import loop  # noqa: E402


def pick(config: str, match: str, overrides: list[str]):
    exp = load_experiment(config, overrides)
    for run in exp.runs:
        if match in run.id:
            return run
    sys.exit(f"no run of {exp.name} has {match!r} in its id (tcf sweep {config} --list)")


def profile_epoch(run_cfg, steps: int | None, n_ops: int) -> None:
    phases = dict.fromkeys(["batch", "items", "head+loss", "backward", "optimizer", "validation", "checkpoint"], 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = loop.set_up(run_cfg, Path(tmp))
        run.par.wrap(run.model, run.opt, run_cfg)
        setup_s = time.perf_counter() - t0
        cfg, data, device = run.cfg, run.data, run.device
        windows = data.windows(cfg.model.max_len)
        perm = windows[np.random.default_rng(cfg.seed).permutation(len(windows))]
        batches = [perm[i:i + cfg.train.batch_size] for i in range(0, len(perm), cfg.train.batch_size)][:steps]
        run.model.train()
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities) as prof:
            t_epoch = time.perf_counter()
            for part in batches:
                t = time.perf_counter()
                batch = data.train_batch(part, cfg.model.max_len)
                phases["batch"] += time.perf_counter() - t
                with contextlib.ExitStack() as stack:
                    t = time.perf_counter()
                    stack.enter_context(step_items(run.model, batch))
                    phases["items"] += time.perf_counter() - t
                    t = time.perf_counter()
                    loss, _ = run.par.loss(lambda m, b=batch: loop.step_loss(m, b, cfg, data, run.log_pop, device,
                                                                             run.gather), batch[2], True)
                    phases["head+loss"] += time.perf_counter() - t
                t = time.perf_counter()
                run.opt.zero_grad(set_to_none=True)
                loss.backward()
                phases["backward"] += time.perf_counter() - t
                t = time.perf_counter()
                if cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.train.grad_clip)
                run.opt.step()
                phases["optimizer"] += time.perf_counter() - t
            t = time.perf_counter()
            evaluate(run.model, data, "valid", **run.eval_kw).mean("ndcg@10")
            phases["validation"] += time.perf_counter() - t
            t = time.perf_counter()
            torch.save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict()}, Path(tmp) / "last.pt")
            phases["checkpoint"] += time.perf_counter() - t
            epoch_s = time.perf_counter() - t_epoch
    print(f"\n{cfg.name}: {len(batches)} steps of up to {cfg.train.batch_size} windows, tower {cfg.model.tower}, "
          f"head {cfg.model.head}, encoder {cfg.encoder.model if cfg.model.tower != 'id' else '-'} "
          f"({cfg.encoder.dtype}), torch threads {torch.get_num_threads()}; set-up {setup_s:.1f} s (not in the epoch)\n")
    print("| phase | seconds | share of the epoch |\n|---|---:|---:|")
    for name, s in phases.items():
        print(f"| {name} | {s:.2f} | {100 * s / epoch_s:.1f}% |")
    print(f"| **epoch (profiled)** | **{epoch_s:.2f}** | 100% |\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n_ops))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--match", required=True, help="a part of the run id (tcf sweep CONFIG --list)")
    ap.add_argument("--set", nargs="*", default=[], help="overrides, as for tcf sweep")
    ap.add_argument("--steps", type=int, help="only the first N steps (default: the whole epoch)")
    ap.add_argument("--ops", type=int, default=15, help="operators to list")
    ap.add_argument("--native-low-precision", action="store_true",
                    help="keep PyTorch's own bf16 / fp16 kernels on a CPU without native ones (tcf emulates them "
                         "through the fp32 kernel there: tcf.models.precision), to time the difference")
    args = ap.parse_args()
    if args.native_low_precision:
        from tcf.models import precision

        precision.native_low_precision = lambda dtype: True
    profile_epoch(pick(args.config, args.match, args.set).config, args.steps, args.ops)


if __name__ == "__main__":
    main()
