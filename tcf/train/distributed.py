"""Data-parallel training across processes: DDP (``torchrun``) and DeepSpeed ZeRO.

The training loop stays one loop.  A :class:`Parallel` (``setup(cfg)``) tells it which
windows this process trains on, runs the loss through the wrapped model, and does the
optimizer step where DeepSpeed owns it.  ``train.strategy: none`` is a pass-through.

What a step means with N processes:

* ``train.batch_size`` is per process; one step consumes ``batch_size x N`` windows of
  the epoch's permutation (seeded, the same on every rank), rank r taking every N-th
  window of the step's chunk.  The windows of a step are those one process with a
  batch of ``batch_size x N`` would take.
* Each rank's mean loss is weighted by its share of the step's label positions, so
  the gradient averaged over ranks (DDP, ZeRO) is the gradient of the mean loss over
  the whole step.  With dropout off and the full-softmax loss, N processes follow the
  loss trajectory of one process with the N-times batch (tests/test_train_distributed.py).
  ``inbatch`` takes its negatives from the labels of the whole step (every rank's part,
  gathered with gradients: :meth:`Parallel.gather_candidates`), so N processes train as
  one process with the N-times batch; ``train.gather_negatives: false`` keeps each rank's
  negatives to its own part.
* Rank 0 evaluates and writes checkpoints and results; the others wait and receive
  the validation score, so early stopping ends every rank at the same epoch.  Under
  ZeRO-3 the parameters are partitioned, so every rank gathers them and evaluates.
* Dropout draws from streams seeded by (seed, epoch, rank) when N > 1, so a resumed
  run repeats the epochs it redoes exactly.

Process groups: gloo on CPU, nccl on CUDA (one GPU per process, ``LOCAL_RANK``).
Without a launcher (no ``WORLD_SIZE``) a strategy runs as one process in an in-memory
group, with no port to collide on: that is how the DeepSpeed stages are tested on CPU.
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tcf.devices import end_group, init_group
from tcf.errors import ConfigError

WAIT = timedelta(hours=2)  # how long ranks wait at a barrier while rank 0 evaluates


def import_deepspeed():
    """DeepSpeed, imported without its import-time noise (tcf.encoders.ds), only when a strategy chooses it."""
    from tcf.encoders.ds import import_deepspeed as quietly

    return quietly()


class _Call(nn.Module):
    """Runs ``fn(model)`` as the module's forward, so that DDP's gradient hooks and
    DeepSpeed's ZeRO-3 parameter gathering see the whole step (the loss uses methods
    other than ``forward``: states, item vectors, the full catalogue)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn):
        return fn(self.model)


def rank_batches(perm: np.ndarray, batch_size: int, rank: int, world: int):
    """-> (windows, real) per step for this rank.  A rank left without windows in the
    last step gets one duplicate window with ``real=False`` (zero weight): every rank
    must run the same number of steps, or DDP / ZeRO would wait forever."""
    step = batch_size * world
    for start in range(0, len(perm), step):
        chunk = perm[start:start + step]
        mine = chunk[rank::world]
        yield (mine, True) if len(mine) else (chunk[:1], False)


def numel(p: torch.Tensor) -> int:
    """A parameter's full size, also when ZeRO-3 holds only this rank's partition of it."""
    return getattr(p, "ds_numel", None) or p.numel()


def _launched() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


class Parallel:
    def __init__(self, strategy: str = "none", *, zero_stage: int = 2, offload: bool = False, device=None):
        self.strategy, self.zero_stage, self.offload = strategy, zero_stage, offload
        self.rank = int(os.environ.get("RANK", "0")) if strategy != "none" else 0
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if strategy != "none" else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if strategy != "none" else 0
        self.device = device  # None: the loop picks (strategy none)
        self.wrapped = None  # DDP module or DeepSpeed engine, called with a loss function
        self.engine = None
        self.model = None
        self._owns_group = False
        self._real = True  # whether this rank's current step has windows of its own

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def everyone_evaluates(self) -> bool:
        """ZeRO-3 partitions the parameters: gathering them is collective, so all ranks evaluate."""
        return self.engine is not None and self.zero_stage == 3

    # -------------------------------------------------------------- set-up

    def _init_group(self, backend: str) -> None:
        if dist.is_initialized():
            return
        if _launched():
            init_group(backend, timeout=WAIT)
        else:  # one process, no launcher: an in-memory store instead of a TCP port
            init_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=WAIT)
        self._owns_group = True

    def wrap(self, model: nn.Module, opt: torch.optim.Optimizer, cfg) -> None:
        """DDP around the model, or a DeepSpeed engine around model and optimizer (its
        param groups, e.g. a separate learning rate for LM parameters, pass through)."""
        self.model = model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers (cached text vectors) are constant: no broadcast each step (the flag's name since torch 2.13)
            newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
            self.wrapped = DistributedDataParallel(_Call(model), device_ids=ids, static_graph=True, **sync)
        elif self.strategy == "deepspeed":
            deepspeed = import_deepspeed()
            self.engine, *_ = deepspeed.initialize(model=_Call(model), optimizer=opt,
                                                   config=zero_config(cfg.train, self.device))
            self.wrapped = self.engine

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Per-rank dropout streams that depend only on (seed, epoch, rank): resumable."""
        if self.world > 1:
            torch.manual_seed(seed + 1000 * epoch + self.rank)

    # -------------------------------------------------------------- a step

    def batches(self, perm: np.ndarray, batch_size: int):
        return rank_batches(perm, batch_size, self.rank, self.world)

    def loss(self, fn, labels: torch.Tensor, real: bool = True) -> tuple[torch.Tensor, float]:
        """-> (loss to back-propagate, the step's mean loss over all ranks).  ``fn(model)``
        gives this rank's mean loss; ``labels`` ([B, L], 0 = none) count its positions."""
        if self.wrapped is None:
            loss = fn(self.model)
            return loss, loss.item()
        self._real = real
        loss = self.wrapped(fn)
        count = torch.tensor([float((labels != 0).sum()) if real else 0.0], device=self.device)
        total = count.clone()
        dist.all_reduce(total)
        local = loss * (count[0] * self.world / total[0])
        value = local.detach().float().reshape(1) / self.world
        dist.all_reduce(value)
        return local, value.item()

    def gather_candidates(self, cands: torch.Tensor, vecs: torch.Tensor, draws: int):
        """In-batch candidates of the whole step: this rank's ``cands`` [M] (sorted item ids), their vectors
        [M, D] and label count -> every rank's, made unique [M'] (sorted), [M', D], and the step's label count.
        Vectors cross ranks with autograd (``torch.distributed.nn``): each rank's loss sends gradients back to
        the rank that computed a vector, and DDP's average of the weighted losses (:meth:`loss`) is then the
        gradient of the whole step's mean loss.  A rank whose step has no windows of its own adds nothing."""
        from torch.distributed.nn.functional import all_gather

        if not self._real:
            cands, vecs, draws = cands[:0], vecs[:0], 0
        sizes = torch.tensor([len(cands), draws], device=cands.device)
        every = [torch.zeros_like(sizes) for _ in range(self.world)]
        dist.all_gather(every, sizes)
        counts = [int(s[0]) for s in every]
        width = max(max(counts), 1)
        pad = width - len(cands)
        padded_ids = torch.cat([cands, cands.new_zeros(pad)])
        ids = [torch.zeros_like(padded_ids) for _ in range(self.world)]
        dist.all_gather(ids, padded_ids)
        parts = all_gather(torch.cat([vecs, vecs.new_zeros(pad, vecs.shape[1])]))
        all_ids = torch.cat([i[:n] for i, n in zip(ids, counts)])
        all_vecs = torch.cat([v[:n] for v, n in zip(parts, counts)])
        uniq, inverse = torch.unique(all_ids, sorted=True, return_inverse=True)
        first = torch.full((len(uniq),), len(all_ids), device=uniq.device, dtype=torch.long)
        first = first.scatter_reduce(0, inverse, torch.arange(len(all_ids), device=uniq.device), "amin")
        return uniq, all_vecs[first], sum(int(s[1]) for s in every)

    def step(self, loss: torch.Tensor) -> bool:
        """DeepSpeed: backward, clipping and the optimizer step are the engine's (True).
        Otherwise the loop does them (False); DDP averages gradients in backward."""
        if self.engine is None:
            return False
        self.engine.backward(loss)
        self.engine.step()
        return True

    # -------------------------------------------------------------- rank 0's work

    def gathered(self, modify: bool = False):
        """ZeRO-3: the full parameters on every rank inside (collective: all ranks enter);
        ``modify``: rank 0's changes are kept on exit.  A no-op for every other strategy.
        No forward pass inside: ZeRO-3's module hooks would release the parameters."""
        if not self.everyone_evaluates:
            return nullcontext()
        deepspeed = import_deepspeed()
        return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=0 if modify else None)

    def run(self, fn):
        """``fn()`` (an evaluation); under ZeRO-3 inside the engine's forward, where the
        parameters are gathered module by module, on every rank in step."""
        if not self.everyone_evaluates:
            return fn()
        box = []
        self.engine(lambda model: box.append(fn()))
        return box[0]

    def on_main(self, fn) -> float:
        """``fn()`` on rank 0 (on every rank under ZeRO-3), its value given to all ranks."""
        value = float(self.run(fn)) if self.is_main or self.everyone_evaluates else math.nan
        if self.world > 1:
            t = torch.tensor([value], dtype=torch.float64, device=self.device)
            dist.broadcast(t, src=0)
            value = t.item()
        return value

    def state_dict(self) -> dict:
        """The model's full weights (gathered under ZeRO-3; every rank must call it)."""
        if not self.everyone_evaluates:
            return self.model.state_dict()
        with self.gathered():  # copies: the gathered tensors are freed on leaving
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def optimizer_state(self, opt: torch.optim.Optimizer):
        """For last.pt; DeepSpeed's optimizer state is partitioned: :meth:`save_engine` keeps it."""
        return opt.state_dict() if self.engine is None else None

    def save_engine(self, folder: Path, epoch: int) -> None:
        """DeepSpeed: weights and optimizer state, each rank its partition (collective), under the tag
        ``epoch{N}``.  Written before last.pt, so last.pt never names a tag that is not complete;
        the tag before it is kept (last.pt may still name it), older ones are removed."""
        if self.engine is None:
            return
        self.engine.save_checkpoint(str(folder), tag=f"epoch{epoch}")
        if self.is_main:
            for old in folder.glob("epoch*"):
                if old.name[5:].isdigit() and int(old.name[5:]) < epoch - 1:
                    shutil.rmtree(old, ignore_errors=True)

    def load_engine(self, folder: Path, epoch: int) -> None:
        """DeepSpeed ``--resume``: the partitions saved with last.pt's epoch, by the same number of ranks."""
        if self.engine is None or epoch == 0:
            return
        if not (folder / f"epoch{epoch}").is_dir():
            raise ConfigError(f"--resume: no DeepSpeed checkpoint {folder / f'epoch{epoch}'} for the epoch in last.pt")
        path, _ = self.engine.load_checkpoint(str(folder), tag=f"epoch{epoch}", load_optimizer_states=True)
        if path is None:
            raise ConfigError(f"--resume: DeepSpeed could not load {folder / f'epoch{epoch}'} (saved by another "
                              "number of processes or ZeRO stage?)")

    def load_state_dict(self, weights: dict) -> None:
        """Load weights :meth:`state_dict` gave (every key of the model), strictly: a mismatch is an error."""
        with self.gathered(modify=True):
            self.model.load_state_dict(weights)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def finish(self, results: dict | None) -> dict:
        """Rank 0 passes its results, the others None; everyone returns rank 0's."""
        if self.world > 1:
            box = [results]
            dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
            results = box[0]
            dist.barrier()  # every rank has its copy before any rank tears the group down
        if self._owns_group and self.engine is None:  # DeepSpeed keeps global state bound to its group
            # DDP's reducer holds the group: drop it and collect first, so the group and its gloo threads end
            # here, not in the interpreter's finalisation (a rank aborted there in CI: "terminate called
            # without an active exception", SIGABRT, after its results were final)
            self.wrapped = None
            end_group()
        return results

    def describe(self) -> dict:
        out = {"strategy": self.strategy, "world_size": self.world}
        if self.strategy == "ddp":
            out["backend"] = dist.get_backend() if dist.is_initialized() else None
        if self.strategy == "deepspeed":
            out.update(zero_stage=self.zero_stage, offload=self.offload)
        return out


def zero_config(t, device: torch.device) -> dict:
    """A DeepSpeed config from ``train``: ZeRO stage, bf16 on CUDA (fp32 on CPU), optional
    optimizer offload.  The loop's own AdamW is kept (``zero_force_ds_cpu_optimizer`` off),
    so its param groups and learning rates are the ones trained with."""
    zero: dict = {"stage": t.zero_stage}
    if t.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device.type == "cuda"}
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(t.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": device.type == "cuda" and t.amp},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def setup(cfg) -> Parallel:
    """The process group and device for ``cfg.train.strategy``; a pass-through for ``none``."""
    t = cfg.train
    if t.strategy == "none":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"launched as {os.environ['WORLD_SIZE']} processes but train.strategy is none: "
                              "set train.strategy=ddp (or deepspeed), or launch one process")
        return Parallel()
    cuda = torch.cuda.is_available() and t.device in ("auto", "cuda")
    if t.device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"train.device={t.device!r} with train.strategy={t.strategy}: use auto, cuda or cpu "
                          "(each process takes the GPU of its LOCAL_RANK)")
    if t.strategy == "deepspeed":
        try:
            import_deepspeed()
        except ImportError:
            raise ConfigError("train.strategy=deepspeed needs DeepSpeed: DS_BUILD_OPS=0 pip install 'tcf[deepspeed]'") \
                from None
    par = Parallel(t.strategy, zero_stage=t.zero_stage, offload=t.offload)
    if cuda:
        torch.cuda.set_device(par.local_rank)
    par.device = torch.device("cuda", par.local_rank) if cuda else torch.device("cpu")
    if not _launched():  # DeepSpeed reads these even in one process
        os.environ.setdefault("LOCAL_RANK", "0")
    par._init_group("nccl" if cuda else "gloo")
    return par
