"""Data-parallel training on CPU: DDP with torchrun (gloo), DeepSpeed ZeRO 1/2/3, resume; the FAISS ranker.

Every distributed run is compared with the plain loop: with dropout off and the full-softmax
loss, N processes with batch b follow the loss and validation trajectory of one process
with batch N x b (each rank's loss weighted by its share of the step's label positions).
Multi-GPU NCCL runs need GPUs and are not run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tcf.errors import ConfigError
from tcf.experiments.config import load_config
from tcf.train import distributed, loop
from tcf.train.distributed import rank_batches

TORCHRUN = Path(sys.executable).parent / "torchrun"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_k, None)


def sets(dataset, *extra):
    return [f"data.dataset={dataset.path}", "model.dim=16", "model.max_len=8", "train.epochs=3", "train.patience=100",
            "eval.bootstrap=50", "model.dropout=0", *extra]


def trajectory(r: dict) -> tuple[list, list]:
    return [h["loss"] for h in r["history"]], [h["valid_ndcg@10"] for h in r["history"]]


def assert_same_run(a: dict, b: dict) -> None:
    (la, va), (lb, vb) = trajectory(a), trajectory(b)
    assert la == pytest.approx(lb, rel=1e-5) and va == pytest.approx(vb, abs=1e-6)
    ta, tb = a["metrics"]["test"]["metrics"], b["metrics"]["test"]["metrics"]
    assert {k: v["mean"] for k, v in ta.items()} == pytest.approx({k: v["mean"] for k, v in tb.items()}, abs=1e-6)


def run(cmd: list, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=ENV, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def torchrun(n: int, *args) -> list:
    return [TORCHRUN, "--standalone", "--nproc-per-node", n, *args]  # --standalone: a free port


# ---------------------------------------------------------------- fast

def test_rank_batches_cover_the_single_process_batches():
    perm = np.arange(23)
    single = [perm[s:s + 8] for s in range(0, 23, 8)]
    ranks = [list(rank_batches(perm, 4, r, 2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)  # the same number of steps on every rank
    for step, whole in enumerate(single):
        got = np.sort(np.concatenate([ranks[r][step][0] for r in range(2) if ranks[r][step][1]]))
        np.testing.assert_array_equal(got, whole)
    # 3 windows left for 2 ranks x 4: both have real work; 1 window left for 3 ranks: two get a zero-weight stand-in
    tail = [list(rank_batches(np.arange(11), 4, r, 2))[-1][1] for r in range(2)]
    assert tail == [True, True]
    last = [list(rank_batches(np.arange(13), 4, r, 3))[-1] for r in range(3)]
    assert [real for _, real in last] == [True, False, False] and all(len(w) == 1 for w, _ in last)


def test_bad_settings_are_named(monkeypatch):
    with pytest.raises(ConfigError, match="train.strategy must be one of"):
        load_config(None, ["train.strategy=fsdp"])
    with pytest.raises(ConfigError, match="train.zero_stage must be 1, 2 or 3"):
        load_config(None, ["train.zero_stage=4"])
    with pytest.raises(ConfigError, match="eval.ranker must be one of"):
        load_config(None, ["eval.ranker=annoy"])
    with pytest.raises(ConfigError, match="eval.faiss_index must be flat or hnsw"):
        load_config(None, ["eval.faiss_index=ivfpq"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="launched as 2 processes but train.strategy is none"):
        distributed.setup(load_config(None, []))


GROUP_LEFT_OPEN = """
import torch
import torch.distributed as dist
from torch import nn
from tcf.train.distributed import Parallel
real = dist.destroy_process_group
def destroy(*a, **k):
    print("destroyed", flush=True)
    real(*a, **k)
dist.destroy_process_group = destroy
par = Parallel("ddp", device=torch.device("cpu"))
par._init_group("gloo")
model = nn.Linear(2, 2)
par.wrap(model, None, None)  # DDP's reducer holds the group; nothing ends it before exit
"""


def test_a_group_tcf_started_is_destroyed_at_exit_when_nothing_ended_it():
    """A gloo group alive during Python's finalisation aborted a finished rank in CI (SIGABRT): the group
    tcf starts is destroyed by an exit handler, while the interpreter is whole."""
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE")}
    r = subprocess.run([sys.executable, "-c", GROUP_LEFT_OPEN], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["destroyed"]


def test_ddp_in_one_process_equals_the_plain_loop(tiny_dataset, tmp_path):
    plain = loop.train(load_config(None, sets(tiny_dataset, "train.batch_size=16")), tmp_path / "a", progress=False)
    ddp = loop.train(load_config(None, sets(tiny_dataset, "train.batch_size=16", "train.strategy=ddp")),
                     tmp_path / "b", progress=False)
    assert ddp["distributed"] == {"strategy": "ddp", "world_size": 1, "backend": "gloo"}
    assert plain["distributed"] == {"strategy": "none", "world_size": 1}
    assert_same_run(ddp, plain)
    assert not torch.distributed.is_initialized()  # the group it made is gone


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_faiss_ranker_equals_matmul(tiny_dataset, tmp_path, kind):
    """Exact flat search gives the matmul's metrics user by user, with and without the history
    masked; hnsw over 40 items (efSearch 128) finds the same neighbours."""
    from tcf.eval.ranking import evaluate
    from tcf.models import build_model
    from tcf.train.data import SeqData

    cfg = load_config(None, sets(tiny_dataset, "train.epochs=2"))
    loop.train(cfg, tmp_path / "run", progress=False)
    data = SeqData(tiny_dataset)
    model = build_model(cfg, data.n_items, data.n_users)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)["model"])
    for mask in (True, False):
        kw = {"ks": (1, 5, 10, 20, 50), "max_len": 8, "mask_history": mask, "batch_users": 7}
        a = evaluate(model, data, "test", **kw)
        b = evaluate(model, data, "test", ranker="faiss", faiss_index=kind, **kw)
        assert a.per_user.keys() == b.per_user.keys()
        for k in a.per_user:
            np.testing.assert_allclose(b.per_user[k], a.per_user[k], atol=1e-9, err_msg=f"{k} mask={mask}")
        np.testing.assert_array_equal(a.targets, b.targets)
    assert a.mean("hr@50") == 1.0  # K beyond the 40 items: every target found, the deepest search


# ---------------------------------------------------------------- slow: real launches

@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_the_doubled_batch(tiny_dataset, tmp_path):
    run(torchrun(2, "-m", "tcf", "train", "--quiet", "--out", tmp_path / "ddp", "--set",
                 *sets(tiny_dataset, "train.batch_size=8", "train.strategy=ddp")))
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["distributed"] == {"strategy": "ddp", "world_size": 2, "backend": "gloo"}
    single = loop.train(load_config(None, sets(tiny_dataset, "train.batch_size=16")), tmp_path / "one",
                        progress=False)
    assert_same_run(ddp, single)
    # and not a run that ignored the other rank: one process with batch 8 takes other steps
    half = loop.train(load_config(None, sets(tiny_dataset, "train.batch_size=8")), tmp_path / "half", progress=False)
    assert trajectory(half)[0] != pytest.approx(trajectory(ddp)[0], rel=1e-5)


@pytest.mark.slow
def test_ddp_inbatch_negatives_from_every_rank_equal_one_process_with_the_doubled_batch(tiny_dataset, tmp_path):
    """In-batch negatives gathered from both ranks (the default): the candidates, the logQ correction's
    label count and the gradient are those of one process with the doubled batch.  With
    train.gather_negatives=false each rank sees only its own labels, and the runs differ."""
    inb = ("train.loss=inbatch",)
    run(torchrun(2, "-m", "tcf", "train", "--quiet", "--out", tmp_path / "ddp", "--set",
                 *sets(tiny_dataset, "train.batch_size=8", "train.strategy=ddp", *inb)))
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    single = loop.train(load_config(None, sets(tiny_dataset, "train.batch_size=16", *inb)), tmp_path / "one",
                        progress=False)
    assert_same_run(ddp, single)
    run(torchrun(2, "-m", "tcf", "train", "--quiet", "--out", tmp_path / "local", "--set",
                 *sets(tiny_dataset, "train.batch_size=8", "train.strategy=ddp", "train.gather_negatives=false", *inb)))
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    assert trajectory(local)[0] != pytest.approx(trajectory(single)[0], rel=1e-5)


# a child that partitions every parameter under ZeRO-3 (DeepSpeed keeps small ones whole by default);
# mode "kill": SIGKILL right after last.pt for epoch 2 is written; "resume": --resume
ZERO_CHILD = """
import json, os, signal, sys
from tcf.experiments.config import load_config
from tcf.train import distributed, loop
real = distributed.zero_config
def zero_config(t, device):
    c = real(t, device)
    c["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return c
distributed.zero_config = zero_config
save = loop._save
def kill_after_epoch_2(path, state):
    save(path, state)
    if path.name == "last.pt" and state["state"]["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
mode = sys.argv[2]
if mode == "kill":
    loop._save = kill_after_epoch_2
r = loop.train(load_config(None, sys.argv[3:]), sys.argv[1], progress=False, resume=mode == "resume")
print(json.dumps(r, default=float))
# each rank's own file too: two ranks' long lines on one pipe can interleave (writes over 4 KiB are not atomic)
with open(os.path.join(sys.argv[1], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
    json.dump(r, f, default=float)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage, offload", [(1, False), (2, False), (2, True), (3, False)])
def test_deepspeed_zero_stages_in_one_cpu_process(tiny_dataset, tmp_path, stage, offload):
    pytest.importorskip("deepspeed")
    extra = ["train.batch_size=16", "train.strategy=deepspeed", f"train.zero_stage={stage}", f"train.offload={offload}"]
    out = run([sys.executable, "-c", ZERO_CHILD, tmp_path / "ds", "fresh", *sets(tiny_dataset, *extra)])
    ds = json.loads(out.stdout.strip().splitlines()[-1])
    assert ds["distributed"] == {"strategy": "deepspeed", "world_size": 1, "zero_stage": stage, "offload": offload}
    assert (tmp_path / "ds" / "results.json").is_file() and (tmp_path / "ds" / "checkpoints" / "best.pt").is_file()
    assert ds["parameters"]["trainable"] > 0  # counted on the gathered model, not the empty ZeRO-3 partitions
    single = loop.train(load_config(None, sets(tiny_dataset, "train.batch_size=16")), tmp_path / "one",
                        progress=False)
    assert ds["parameters"] == single["parameters"]
    assert_same_run(ds, single)


@pytest.mark.slow
@pytest.mark.parametrize("offload", [False, True])
def test_finetuned_lm_tower_under_zero3_equals_the_plain_loop(tiny_dataset, tiny_model, tmp_path, offload):
    """What `tcf plan` tells a top-k fine-tuning run that needs ZeRO-3: the LM layers and their own
    learning rate go through DeepSpeed's partitioning (and CPU optimizer offload) unchanged."""
    pytest.importorskip("deepspeed")
    lm = [f"encoder.model={tiny_model}", "encoder.max_tokens=12", f"cache_root={tmp_path / 'cache'}",
          "model.tower=finetune", "model.finetune_layers=2", "train.loss=inbatch", "train.epochs=2",
          "train.batch_size=16", "train.grad_checkpointing=true"]
    extra = [*lm, "train.strategy=deepspeed", "train.zero_stage=3", f"train.offload={offload}"]
    out = run([sys.executable, "-c", ZERO_CHILD, tmp_path / "ds", "fresh", *sets(tiny_dataset, *extra)])
    ds = json.loads(out.stdout.strip().splitlines()[-1])
    assert ds["distributed"] == {"strategy": "deepspeed", "world_size": 1, "zero_stage": 3, "offload": offload}
    single = loop.train(load_config(None, sets(tiny_dataset, *lm)), tmp_path / "one", progress=False)
    assert ds["parameters"] == single["parameters"] and ds["parameters"]["trainable"] > 0
    assert_same_run(ds, single)


@pytest.mark.slow
def test_deepspeed_zero3_two_processes_equal_one_process(tiny_dataset, tmp_path):
    """Partitioned parameters, gathered for evaluation and checkpoints by both ranks in step."""
    pytest.importorskip("deepspeed")
    extra = ["train.batch_size=8", "train.strategy=deepspeed", "train.zero_stage=3"]
    out = run(torchrun(2, "--no-python", sys.executable, "-c", ZERO_CHILD, tmp_path / "ds", "fresh",
                       *sets(tiny_dataset, *extra)))
    assert out.returncode == 0
    ranks = [json.loads((tmp_path / "ds" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks) == 2 and ranks[0]["metrics"] == ranks[1]["metrics"]
    single = loop.train(load_config(None, sets(tiny_dataset, "train.batch_size=16")), tmp_path / "one",
                        progress=False)
    assert_same_run(ranks[0], single)


# rank 0 dies (SIGKILL) right after writing last.pt for epoch 2; torchrun then stops rank 1
KILL_CHILD = """
import os, signal, sys, torch
from tcf.experiments.config import load_config
from tcf.train import loop
real = loop._save
def save(path, state):
    real(path, state)
    if path.name == "last.pt" and state["state"]["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
loop._save = save
loop.train(load_config(None, sys.argv[2:]), sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_ddp_killed_then_resumed_equals_an_uninterrupted_run(tiny_dataset, tmp_path):
    """With dropout on: each rank's dropout stream is seeded per epoch, so redone epochs repeat."""
    s = sets(tiny_dataset, "train.batch_size=8", "train.strategy=ddp", "train.epochs=4", "model.dropout=0.3")
    r = subprocess.run([str(c) for c in torchrun(2, "--no-python", sys.executable, "-c", KILL_CHILD,
                                                 tmp_path / "killed", *s)],
                       capture_output=True, text=True, timeout=600, env=ENV, check=False)
    assert r.returncode != 0
    ck = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    assert ck["state"]["epoch"] == 2 and not (tmp_path / "killed" / "results.json").exists()
    run(torchrun(2, "-m", "tcf", "train", "--quiet", "--resume", "--out", tmp_path / "killed", "--set", *s))
    run(torchrun(2, "-m", "tcf", "train", "--quiet", "--out", tmp_path / "clean", "--set", *s))
    resumed, clean = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("killed", "clean"))
    assert resumed["epochs_run"] == 4 and len(resumed["history"]) == 4
    assert trajectory(resumed) == trajectory(clean)
    assert resumed["metrics"]["test"]["metrics"] == clean["metrics"]["test"]["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_killed_then_resumed_equals_an_uninterrupted_run(tiny_dataset, tmp_path, stage):
    """The partitioned optimizer state comes back from DeepSpeed's own checkpoint (checkpoints/deepspeed/epochN)."""
    pytest.importorskip("deepspeed")
    s = sets(tiny_dataset, "train.batch_size=16", "train.strategy=deepspeed", f"train.zero_stage={stage}",
             "train.epochs=4", "model.dropout=0.3")
    killed = subprocess.run([sys.executable, "-c", ZERO_CHILD, str(tmp_path / "killed"), "kill", *s],
                            capture_output=True, text=True, timeout=600, env=ENV, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints" / "deepspeed").glob("epoch*")) == \
        ["epoch1", "epoch2"]
    resumed = json.loads(run([sys.executable, "-c", ZERO_CHILD, tmp_path / "killed", "resume", *s])
                         .stdout.strip().splitlines()[-1])
    clean = json.loads(run([sys.executable, "-c", ZERO_CHILD, tmp_path / "clean", "fresh", *s])
                       .stdout.strip().splitlines()[-1])
    assert resumed["epochs_run"] == 4 and trajectory(resumed) == trajectory(clean)
    assert resumed["metrics"]["test"]["metrics"] == clean["metrics"]["test"]["metrics"]
    assert sorted(p.name for p in (tmp_path / "clean" / "checkpoints" / "deepspeed").glob("epoch*")) == \
        ["epoch3", "epoch4"]
