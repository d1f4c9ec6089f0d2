"""Every fine-tuning command ``tcf plan`` prints is one ``tcf train`` accepts: for the OPT family by name
(its configs are built in), and run for an epoch on tiny OPT stand-ins of both released layouts."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

import tinymodels
from tcf.experiments import planner as P
from tcf.experiments.config import load_config
from tcf.models.lm_tower import check_config
from tcf.train import loop
from test_finetune import K

STAND_INS = {"opt": {}, "opt-350m": {"word_embed_proj_dim": 16, "do_layer_norm_before": False}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt-stand-ins")
    return {name: tinymodels.build("opt", root / name, layers=4, **kw) for name, kw in STAND_INS.items()}


def plan_sets(command: str) -> list[str]:
    """The ``--set`` overrides of a printed ``tcf train`` command."""
    words = shlex.split(command)
    assert "train" in words and "--set" in words
    return words[words.index("--set") + 1:]


@pytest.mark.parametrize("size", list(P.OPT_ARCH))
@pytest.mark.parametrize("gpus", ["0", "1x24GB", "1x80GB", "8x80GB"])
def test_every_opt_fine_tuning_command_is_accepted(size, gpus):
    printed = 0
    for k in sorted({1, 2, P.OPT_ARCH[size][0] // 4}):
        for batch in (4, 64):
            ft = P.plan(f"facebook/opt-{size}", P.hardware(gpus, "512GB"), items=1682, finetune_layers=k,
                        batch=batch)["finetune"]
            if ft["chosen"] is None:
                assert "command" not in ft and ft["why_not"]
                continue
            cfg = load_config(None, plan_sets(ft["command"]))
            check_config(cfg)  # what tcf train checks before any extraction
            assert (cfg.model.tower, cfg.model.finetune_layers, cfg.train.batch_size) == ("finetune", k, batch)
            assert cfg.train.loss == "inbatch"
            printed += 1
    # OPT-175b on one 24 GB GPU: one block (1.8B parameters) with its gradients and gathered copy does not fit
    assert printed or (size, gpus) == ("175b", "1x24GB"), "some fine-tuning of every OPT size fits these machines"


@pytest.mark.parametrize("family", ["opt", "opt-350m"])
@pytest.mark.parametrize("gpus", ["0", "1x2GB"])
def test_the_printed_command_runs_on_a_tiny_opt(tiny_dataset, models, tmp_path, family, gpus):
    plan = P.plan(str(models[family]), P.hardware(gpus, "16GB"), dataset=str(tiny_dataset.path), tokens=12,
                  batch=16, finetune_layers=K)
    sets = plan_sets(plan["finetune"]["command"])
    cfg = load_config(None, [f"data.dataset={tiny_dataset.path}", f"encoder.model={models[family]}",
                             "encoder.max_tokens=12", f"cache_root={tmp_path / 'cache'}", "model.dim=16",
                             "model.max_len=8", "train.epochs=1", "eval.bootstrap=50", *sets])
    r = loop.train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(r["history"][0]["loss"])
