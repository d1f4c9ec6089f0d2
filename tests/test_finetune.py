"""Fine-tuned (``finetune``) and LoRA (``lora``) item towers: the top k LM layers from cached states at L-k."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tcf.encoders.cache import CacheError
from tcf.encoders.extract import extract
from tcf.encoders.hf import HFEncoder
from tcf.errors import ConfigError
from tcf.eval.ranking import evaluate
from tcf.experiments.config import load_config
from tcf.models import build_model
from tcf.models.lm_tower import LMTower, build_lm_tower, cache_spec, param_groups, step_items, token_cache
from tcf.train import loop
from tcf.train.data import SeqData

K = 2  # top layers fine-tuned (of the tiny models' 4)


def cfg_for(dataset, model, tmp_path, *overrides):
    return load_config(None, [f"data.dataset={dataset.path}", f"encoder.model={model}", "encoder.max_tokens=12",
                              f"cache_root={tmp_path / 'cache'}", "model.dim=16", "model.max_len=8",
                              "model.tower=finetune", f"model.finetune_layers={K}", "train.loss=inbatch",
                              "train.epochs=1", "train.batch_size=16", "eval.bootstrap=50", *overrides])


def tower_for(cfg, dataset, storage="fp16") -> LMTower:
    entry = extract(dataset, cache_spec(cfg), root=cfg.cache_root, kind="tokens", storage=storage).entry
    return build_lm_tower(cfg, entry)


def full_weights(folder) -> dict:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder)).state_dict()


def shifted(name: str, n_layers: int = 4) -> str:
    """A top-model parameter name -> the full model's name for the same weight."""
    return re.sub(r"^(layers|encoder\.layer)\.(\d+)\.", lambda m: f"{m.group(1)}.{int(m.group(2)) + n_layers - K}.",
                  name)


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("tower", ["finetune", "lora"])
@pytest.mark.parametrize("head", ["sasrec", "dssm"])
def test_every_head_and_lm_tower_one_epoch(tiny_dataset, tiny_models, tmp_path, family, tower, head):
    cfg = cfg_for(tiny_dataset, tiny_models[family], tmp_path, f"model.head={head}", f"model.tower={tower}")
    r = loop.train(cfg, tmp_path / "run", progress=False)
    for split in ("valid", "test"):
        assert 0 <= r["metrics"][split]["metrics"]["ndcg@10"]["mean"] <= 1
    assert np.isfinite(r["history"][0]["loss"])
    p = r["parameters"]
    assert p["encoder"] == _parameter_count(tiny_models[family])  # the whole LM, bottom blocks included
    assert (p["trainable"] == p["total"]) == (tower == "finetune")
    trained = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)["model"]
    original = full_weights(tiny_models[family])
    base = {k: v for k, v in trained.items() if k.startswith("tower.lm.model.") and "lora_" not in k}
    assert base, "the checkpoint holds the LM's top layers"
    changed = [k for k, v in base.items()
               if not torch.equal(v, original[shifted(k.removeprefix("tower.lm.model.").replace(".base_layer", ""))])]
    if tower == "finetune":
        assert changed, "fine-tuning moved the top layers' weights"
    else:
        assert not changed, "LoRA leaves the base weights as they were"
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items()), "the adapters learned"


def _parameter_count(folder) -> int:
    from transformers import AutoModel

    return sum(p.numel() for p in AutoModel.from_pretrained(str(folder)).parameters())


@pytest.mark.parametrize("family", ["llama", "gemma3", "bert"])
@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_split_at_layer_l_minus_k_equals_the_full_model(tiny_dataset, tiny_models, tmp_path, family, pooling):
    cfg = cfg_for(tiny_dataset, tiny_models[family], tmp_path, f"encoder.pooling={pooling}",
                  "encoder.padding_side=left")
    tower = tower_for(cfg, tiny_dataset, storage="fp32").eval()
    ids = torch.arange(1, tiny_dataset.n_items + 1)
    with torch.no_grad():
        got = tower.encode(ids).numpy()
        entering = tower.tokens.states[1:].sum(1)  # something that is not the output
    full = HFEncoder(cfg.encoder).embed(tiny_dataset.item_texts(tiny_dataset.template)[1:]).vectors
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=1e-5)
    assert not np.allclose(entering, full, atol=1e-2), "the top layers are run, not skipped"


def test_fp16_token_cache_is_close_to_the_full_model(tiny_dataset, tiny_model, tmp_path):
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path)
    with torch.no_grad():
        got = tower_for(cfg, tiny_dataset).eval().encode(torch.arange(1, tiny_dataset.n_items + 1)).numpy()
    full = HFEncoder(cfg.encoder).embed(tiny_dataset.item_texts(tiny_dataset.template)[1:]).vectors
    np.testing.assert_allclose(got, full, atol=1e-2)


@pytest.mark.parametrize("family", ["llama", "gemma3", "bert"])
def test_only_the_top_k_layers_are_loaded_and_trained(tiny_dataset, tiny_models, tmp_path, family):
    tower = tower_for(cfg_for(tiny_dataset, tiny_models[family], tmp_path), tiny_dataset)
    original = full_weights(tiny_models[family])
    lm = dict(tower.lm.model.named_parameters())
    top = {n for n in original if re.match(rf"^(layers|encoder\.layer)\.({4 - K}|{4 - K + 1})\.", n)}
    assert {shifted(n) for n in lm} - {"norm.weight"} == top  # no bottom block, no embedding table
    assert ("norm.weight" in lm) == ("norm.weight" in original)  # the final norm, where the model has one
    for name, p in lm.items():
        assert p.requires_grad
        torch.testing.assert_close(p.detach(), original[shifted(name)].to(p.dtype))
    assert all(p.requires_grad for p in tower.adapter.parameters())


def test_lora_trains_only_its_adapters(tiny_dataset, tiny_model, tmp_path):
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path, "model.tower=lora", "model.lora_r=4")
    tower = tower_for(cfg, tiny_dataset)
    trainable = [n for n, p in tower.lm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    frozen = [n for n, p in tower.lm.named_parameters() if not p.requires_grad]
    assert any(n.endswith("q_proj.base_layer.weight") for n in frozen)
    assert {n.split(".lora_")[0].split(".")[-1] for n in trainable} >= {"q_proj", "v_proj", "up_proj", "down_proj"}
    assert all("lora_A.default.weight" not in n or tower.lm.get_parameter(n).shape[0] == 4 for n in trainable)


def test_a_cache_for_other_texts_is_refused(tiny_dataset, tiny_model, tmp_path):
    other = cfg_for(tiny_dataset, tiny_model, tmp_path, "data.template={title} (again)")
    entry, _ = token_cache(other, tiny_dataset)
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path, f"cache_path={entry.path}")
    with pytest.raises(CacheError, match="text_fingerprint"):
        token_cache(cfg, tiny_dataset)
    deeper = cfg_for(tiny_dataset, tiny_model, tmp_path, f"cache_path={entry.path}", "data.template={title} (again)",
                     "model.finetune_layers=1")
    with pytest.raises(CacheError, match="layer: cache has 2, wanted 3"):
        token_cache(deeper, tiny_dataset)
    pooled = extract(tiny_dataset, cfg.encoder, root=tmp_path / "cache").entry
    with pytest.raises(CacheError, match="needs token states"):
        token_cache(cfg_for(tiny_dataset, tiny_model, tmp_path, f"cache_path={pooled.path}"), tiny_dataset)
    assert token_cache(cfg_for(tiny_dataset, tiny_model, tmp_path, f"cache_path={entry.path}",
                               "data.template={title} (again)"), tiny_dataset)[0].path == entry.path


def test_full_softmax_and_bad_settings_are_refused(tiny_dataset, tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="use train.loss=inbatch"):
        token_cache(cfg_for(tiny_dataset, tiny_model, tmp_path, "train.loss=ce"), tiny_dataset)
    with pytest.raises(ConfigError, match="encoder.layer must be -1"):
        token_cache(cfg_for(tiny_dataset, tiny_model, tmp_path, "encoder.layer=2"), tiny_dataset)
    with pytest.raises(ConfigError, match=r"model.finetune_layers must be within 1..4"):
        token_cache(cfg_for(tiny_dataset, tiny_model, tmp_path, "model.finetune_layers=5"), tiny_dataset)


def _count_lm_calls(tower, monkeypatch) -> list:
    calls = []
    real = tower.lm.forward
    monkeypatch.setattr(tower.lm, "forward", lambda s, m: calls.append(len(s)) or real(s, m))
    return calls


def test_a_step_runs_the_lm_once_over_the_batchs_unique_items(tiny_dataset, tiny_model, tmp_path, monkeypatch):
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path)
    data = SeqData(tiny_dataset)
    entry, _ = token_cache(cfg, tiny_dataset)
    model = build_model(cfg, data.n_items, data.n_users, entry).train()
    calls = _count_lm_calls(model.tower, monkeypatch)
    batch = data.train_batch(data.windows(8)[:16], 8)
    log_pop = torch.zeros(data.n_items + 1)
    with step_items(model, batch):
        loss = loop.step_loss(model, batch, cfg, data, log_pop, "cpu")
    unique = torch.unique(torch.cat([batch[1].flatten(), batch[2].flatten()]))
    assert calls == [len(unique[unique != 0])]  # one pass, the batch's real items only
    loss.backward()
    assert all(p.grad is not None for p in model.tower.lm.parameters())


def test_the_catalogue_is_computed_once_per_evaluation(tiny_dataset, tiny_model, tmp_path, monkeypatch):
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path, "model.head=dssm", "model.user_tower=mean")
    data = SeqData(tiny_dataset)
    model = build_model(cfg, data.n_items, data.n_users, token_cache(cfg, tiny_dataset)[0]).train()
    calls = _count_lm_calls(model.tower, monkeypatch)
    first = evaluate(model, data, "valid", max_len=8, batch_users=4).mean()  # 8 user chunks
    assert calls == [data.n_items] and model.training
    evaluate(model, data, "valid", max_len=8, batch_users=4)
    assert len(calls) == 2  # recomputed for the next evaluation (the weights may have changed)
    assert evaluate(model, data, "valid", max_len=8, batch_users=64).mean() == pytest.approx(first)


def test_lm_parameters_get_their_own_learning_rate(tiny_dataset, tiny_model, tmp_path):
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path, "train.lm_lr=3e-5", "train.lm_weight_decay=0.1")
    data = SeqData(tiny_dataset)
    model = build_model(cfg, data.n_items, data.n_users, token_cache(cfg, tiny_dataset)[0])
    rest, lm = param_groups(model, cfg.train)
    assert {id(p) for p in lm["params"]} == {id(p) for p in model.tower.lm.parameters()}
    assert (lm["lr"], lm["weight_decay"]) == (3e-5, 0.1) and "lr" not in rest
    assert len(rest["params"]) + len(lm["params"]) == len(list(model.parameters()))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dataset, tiny_model, tmp_path):
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        tower = tower_for(cfg_for(tiny_dataset, tiny_model, tmp_path, f"train.grad_checkpointing={on}"),
                          tiny_dataset).train()
        assert any(getattr(m, "gradient_checkpointing", False) for m in tower.lm.modules()) == on
        tower(torch.arange(1, 9)).square().sum().backward()
        grads.append([p.grad.clone() for p in tower.lm.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
