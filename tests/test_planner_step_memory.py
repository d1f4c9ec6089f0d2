"""The planner's fine-tuning memory is sized from what a ``tcf train`` step really runs: the top k blocks over
every distinct item of the step's sequences (``step_items``), not over ``--batch`` texts; checked against the
bytes autograd saves in real training steps of a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tinymodels
from tcf.data import prepare
from tcf.experiments import planner as P
from tcf.experiments.config import load_config
from tcf.models import build_model
from tcf.models.lm_tower import step_items, token_cache
from tcf.train import loop
from tcf.train.data import SeqData

T, K, B, MAX_LEN = 8, 2, 16, 8


@pytest.fixture(scope="module")
def opt64(tmp_path_factory):
    """A tiny OPT wide enough (64-d, ffn 128) that its top blocks hold most of a step's activations."""
    return tinymodels.build("opt", tmp_path_factory.mktemp("opt64") / "opt", layers=4, hidden=64)


@pytest.fixture(scope="module")
def wide_dataset(tmp_path_factory):
    """More items than a step's sequences hold, with popular ones repeating across users."""
    return prepare("synthetic", None, tmp_path_factory.mktemp("data") / "wide",
                   source_options={"n_users": 60, "n_items": 300, "n_topics": 4, "min_len": 5, "max_len": 14})


def saved_bytes(params: set, fn) -> tuple[int, object]:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (each storage once, weights not)."""
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(saved.values()), out


def epoch_steps(data: SeqData, seed: int = 0):
    """The batches of epoch 0, in the order tcf train draws them (one process)."""
    windows = data.windows(MAX_LEN)
    perm = windows[np.random.default_rng(seed).permutation(len(windows))]
    return [data.train_batch(perm[s:s + B], MAX_LEN) for s in range(0, len(perm), B)]


@pytest.mark.parametrize("loss", ["inbatch", "bce"])
def test_estimate_is_within_25_percent_of_what_autograd_saves(wide_dataset, opt64, tmp_path, loss):
    cfg = load_config(None, [f"data.dataset={wide_dataset.path}", f"encoder.model={opt64}", f"encoder.max_tokens={T}",
                             f"cache_root={tmp_path / 'cache'}", "model.dim=16", f"model.max_len={MAX_LEN}",
                             "model.tower=finetune", f"model.finetune_layers={K}", f"train.loss={loss}",
                             f"train.batch_size={B}"])
    data = SeqData(wide_dataset)
    entry, _ = token_cache(cfg, wide_dataset)
    assert int(np.asarray(entry.mask[1:]).sum(1).min()) == T  # every text fills the T tokens the plan sizes for
    torch.manual_seed(0)
    model = build_model(cfg, data.n_items, data.n_users, entry).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    log_pop = torch.zeros(data.n_items + 1)
    runs, measured = [], []
    real = model.tower.lm.forward
    model.tower.lm.forward = lambda s, m: runs.append(len(s)) or real(s, m)
    for batch in epoch_steps(data):
        runs.clear()

        def step(b=batch):
            with step_items(model, b):
                return loop.step_loss(model, b, cfg, data, log_pop, "cpu")

        n, loss_value = saved_bytes(params, step)
        measured.append((n, sum(runs)))
        loss_value.backward()  # the step is a real one
    plan = P.plan(str(opt64), P.hardware("0", "16GB"), dataset=str(wide_dataset.path), tokens=T, batch=B,
                  finetune_layers=K, dtype="fp32", loss=loss, max_len=MAX_LEN)
    step_plan = plan["activations"]["step"]
    most_bytes, most_items = max(b for b, _ in measured), max(n for _, n in measured)
    if loss == "inbatch":  # the same draws as the loop: the same items, exactly
        assert step_plan["items"] == most_items and step_plan["how"] == "sampled"
    else:  # bce: the negatives are drawn at random, the count is an estimate
        assert abs(step_plan["items"] - most_items) <= 0.1 * most_items
    assert most_items > 2 * B, "a step runs the LM over many more texts than --batch"
    estimate = plan["activations"]["finetune"]["activations"]
    assert 0.75 * most_bytes <= estimate <= 1.25 * most_bytes, (estimate, most_bytes)
    print(f"{loss}: estimate {estimate:,} B for {step_plan['items']} items; measured {most_bytes:,} B "
          f"({estimate / most_bytes:.3f}x) over {most_items} items")


def test_ce_sizes_every_item_and_is_not_offered(wide_dataset, opt64):
    kw = dict(dataset=str(wide_dataset.path), tokens=T, batch=B, finetune_layers=K, dtype="fp32", max_len=MAX_LEN)
    inbatch = P.plan(str(opt64), P.hardware("0", "16GB"), loss="inbatch", **kw)
    ce = P.plan(str(opt64), P.hardware("0", "16GB"), loss="ce", **kw)
    assert ce["activations"]["step"]["items"] >= wide_dataset.n_items  # the catalogue, every step
    assert ce["activations"]["finetune"]["activations"] > 2 * inbatch["activations"]["finetune"]["activations"]
    assert "command" not in ce["finetune"] and "train.loss=ce" in ce["finetune"]["why_not"]


def test_without_interactions_the_items_are_bounded(opt64):
    p = P.plan(str(opt64), P.hardware("0", "16GB"), items=100_000, tokens=T, batch=B, finetune_layers=K,
               max_len=MAX_LEN)
    assert p["activations"]["step"]["items"] == B * (MAX_LEN + 1) and p["activations"]["step"]["how"] == "bound"
    small = P.plan(str(opt64), P.hardware("0", "16GB"), items=50, tokens=T, batch=B, finetune_layers=K,
                   max_len=MAX_LEN)
    assert small["activations"]["step"]["items"] == 50  # never more than the catalogue


def test_the_command_carries_what_was_sized(wide_dataset, opt64):
    p = P.plan(str(opt64), P.hardware("0", "16GB"), dataset=str(wide_dataset.path), tokens=T, batch=B,
               finetune_layers=K, loss="bce", max_len=MAX_LEN)
    sets = p["finetune"]["command"].split(" --set ")[1].split()
    assert {"train.loss=bce", f"train.batch_size={B}", f"model.max_len={MAX_LEN}", "encoder.dtype=bf16"} <= set(sets)
    assert f"{p['activations']['step']['items']} item texts" in P.render(p)
