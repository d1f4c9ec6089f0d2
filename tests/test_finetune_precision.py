"""Fine-tuning in bf16 / fp16: the trainable LM weights and AdamW's states stay fp32 (autocast computes in
the low precision), so updates below bf16's resolution still move the weights; fp16 trains with loss scaling."""

from __future__ import annotations

import pytest
import torch

from tcf.experiments.config import load_config
from tcf.models import build_model
from tcf.models.lm_tower import LMTower, param_groups, step_items, token_cache
from tcf.train import loop
from tcf.train.data import SeqData


def cfg_for(dataset, model, tmp_path, *overrides):
    return load_config(None, [f"data.dataset={dataset.path}", f"encoder.model={model}", "encoder.max_tokens=12",
                              f"cache_root={tmp_path / 'cache'}", "model.dim=16", "model.max_len=8",
                              "model.tower=finetune", "model.finetune_layers=2", "train.loss=inbatch",
                              "train.epochs=1", "train.batch_size=16", "eval.bootstrap=0", "model.dropout=0",
                              *overrides])


def lm_weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.tower.lm.named_parameters()}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_trainable_lm_weights_are_fp32_and_compute_is_low_precision(tiny_dataset, tiny_model, tmp_path, dtype):
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path, f"encoder.dtype={dtype}")
    data = SeqData(tiny_dataset)
    model = build_model(cfg, data.n_items, data.n_users, token_cache(cfg, tiny_dataset)[0])
    tower = model.tower
    assert isinstance(tower, LMTower) and tower.compute_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert {p.dtype for p in tower.lm.parameters()} == {torch.float32}
    seen = []
    linear = next(m for m in tower.lm.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    tower.eval().all()
    hook.remove()
    assert seen and set(seen) == {tower.compute_dtype}  # the layers' matmuls ran in the low precision


def test_updates_below_bf16_resolution_still_change_the_weights(tiny_dataset, tiny_model, tmp_path):
    """AdamW moves each weight by about lm_lr per step: 1e-5 is below half a bf16 ulp (2^-9 relative) of any
    weight above 0.005, so weights kept in bf16 would not move at all."""
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path, "encoder.dtype=bf16", "train.lm_lr=1e-5",
                  "train.lm_weight_decay=0")
    data = SeqData(tiny_dataset)
    model = build_model(cfg, data.n_items, data.n_users, token_cache(cfg, tiny_dataset)[0]).train()
    before = lm_weights(model)
    opt = torch.optim.AdamW(param_groups(model, cfg.train), lr=cfg.train.lr)
    log_pop = loop.label_log_probs(data, "cpu")
    for w in (data.windows(8)[:16], data.windows(8)[16:32]):
        batch = data.train_batch(w, 8)
        with step_items(model, batch):
            loss = loop.step_loss(model, batch, cfg, data, log_pop, "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = lm_weights(model)
    big = [n for n, w in before.items() if w.ndim == 2]
    moved = sum(int((after[n] != before[n]).sum()) for n in big) / sum(before[n].numel() for n in big)
    assert moved > 0.9, moved


def test_fp16_fine_tuning_runs_with_loss_scaling(tiny_dataset, tiny_model, tmp_path):
    cfg = cfg_for(tiny_dataset, tiny_model, tmp_path, "encoder.dtype=fp16", "train.epochs=2")
    r = loop.train(cfg, tmp_path / "run", progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in r["history"])
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert ck["scaler"] is not None and ck["scaler"]["scale"] > 0
    assert all(v.dtype == torch.float32 for k, v in ck["model"].items() if k.startswith("tower.lm."))


def test_fp16_under_deepspeed_is_refused(tiny_dataset, tiny_model, tmp_path):
    """Inside a DeepSpeed engine the loop's GradScaler is not used: fp16 there would train unscaled."""
    from tcf.errors import ConfigError
    from tcf.models.lm_tower import check_config

    with pytest.raises(ConfigError, match="without loss scaling"):
        check_config(cfg_for(tiny_dataset, tiny_model, tmp_path, "encoder.dtype=fp16", "train.strategy=deepspeed"))
    check_config(cfg_for(tiny_dataset, tiny_model, tmp_path, "encoder.dtype=bf16", "train.strategy=deepspeed"))
