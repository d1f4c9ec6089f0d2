"""Top-k fine-tuning of models with learned absolute positions: OPT (both released layouts) and GPT-2.

OPT and GPT-2 add their positions (and OPT-350m its ``project_in``) before the first block,
so the hidden states entering block L-k already carry them: the top blocks, the final norm
and OPT's ``project_out`` are all that is left to run.  The tests hold the tower to the full
model's output, run a training epoch on each and check where LoRA attaches
(tests/test_planner_commands.py runs the fine-tuning commands ``tcf plan`` prints for them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tinymodels
from tcf.encoders.hf import load_tokenizer, tokenize
from tcf.encoders.pooling import pool
from tcf.train import loop
from test_finetune import K, cfg_for, tower_for

# family -> (tinymodels kind, config overrides)
FAMILIES = {
    "opt": ("opt", {}),  # pre-LN blocks and a final layer norm (125m, 1.3b ... 175b)
    "opt-350m": ("opt", {"word_embed_proj_dim": 16, "do_layer_norm_before": False}),  # project_in/out, post-LN
    "gpt2": ("gpt2", {}),
    "gpt2-scaled": ("gpt2", {"scale_attn_by_inverse_layer_idx": True}),  # attention scaled by 1 / (layer + 1)
}
LORA_TARGETS = {"opt": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
                "gpt2": {"c_attn", "c_proj", "c_fc"}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("absolute-positions")
    return {name: tinymodels.build(kind, root / name, layers=4, **kw) for name, (kind, kw) in FAMILIES.items()}


def full_model_pooled(folder, texts: list[str], max_tokens: int, pooling: str) -> np.ndarray:
    """The whole model run the plain transformers way (right padding, its own positions), then pooled."""
    from transformers import AutoModel

    from tcf.encoders.base import EncoderSpec

    tok = load_tokenizer(str(folder), EncoderSpec(model=str(folder), padding_side="right"))
    ids = tokenize(tok, texts, max_tokens)[0]
    batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    assert not bool(batch["attention_mask"].all()), "right padding is present in the batch"
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return pool(states, batch["attention_mask"], pooling).numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_tower_equals_the_full_model(tiny_dataset, models, tmp_path, family, pooling):
    cfg = cfg_for(tiny_dataset, models[family], tmp_path, f"encoder.pooling={pooling}", "encoder.padding_side=right",
                  "encoder.max_tokens=64")
    tower = tower_for(cfg, tiny_dataset, storage="fp32").eval()
    ids = torch.arange(1, tiny_dataset.n_items + 1)
    lengths = tower.tokens.lengths[ids]
    assert lengths.min() < lengths.max() <= cfg.encoder.max_tokens  # one chunk, padded on the right
    with torch.no_grad():
        got = tower.encode(ids).numpy()
    texts = tiny_dataset.item_texts(tiny_dataset.template)[1:]
    want = full_model_pooled(models[family], texts, cfg.encoder.max_tokens, pooling)
    assert got.shape == want.shape  # OPT-350m: project_out back to the 16-d embedding width
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    entering = pool(torch.from_numpy(np.asarray(tower.tokens.states[1:])), torch.from_numpy(
        np.asarray(tower.tokens.mask[1:])), pooling).numpy()
    if entering.shape == want.shape:
        assert not np.allclose(entering, want, atol=1e-2), "the top layers are run, not skipped"


def _block_params(tower) -> dict:
    return {n: p for n, p in tower.lm.model.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("family", ["opt", "opt-350m", "gpt2"])
def test_lora_attaches_to_every_linear_map_of_the_blocks(tiny_dataset, models, tmp_path, family):
    tower = tower_for(cfg_for(tiny_dataset, models[family], tmp_path, "model.tower=lora", "model.lora_r=4"),
                      tiny_dataset)
    trainable = {n: p for n, p in tower.lm.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) > 0
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any(p.requires_grad for p in _block_params(tower).values()), "the base weights are frozen"
    adapted = {n.split(".lora_")[0].split(".")[-1] for n in trainable}
    assert adapted == LORA_TARGETS[family.split("-")[0]]
    assert not any("project_out" in n for n in trainable), "LoRA goes on the blocks, not the output projection"
    per_block = len(LORA_TARGETS[family.split("-")[0]]) + family.startswith("gpt2")  # GPT-2: attn and mlp c_proj
    assert len({n.split(".lora_")[0] for n in trainable}) == K * per_block


@pytest.mark.parametrize("family", ["opt", "opt-350m", "gpt2"])
@pytest.mark.parametrize("tower", ["finetune", "lora"])
def test_one_epoch_of_fine_tuning(tiny_dataset, models, tmp_path, family, tower):
    cfg = cfg_for(tiny_dataset, models[family], tmp_path, f"model.tower={tower}")
    r = loop.train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(r["history"][0]["loss"])
    assert 0 <= r["metrics"]["test"]["metrics"]["ndcg@10"]["mean"] <= 1
    p = r["parameters"]
    assert (p["trainable"] == p["total"]) == (tower == "finetune")
    trained = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)["model"]
    if tower == "lora":
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items()), "the adapters learned"


@pytest.mark.parametrize("family", ["opt", "opt-350m", "gpt2"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_dataset, models, tmp_path, family):
    """tcf plan prints train.grad_checkpointing=true for OPT when the activations do not fit otherwise."""
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        cfg = cfg_for(tiny_dataset, models[family], tmp_path, f"train.grad_checkpointing={on}")
        tower = tower_for(cfg, tiny_dataset).train()
        assert any(getattr(m, "gradient_checkpointing", False) for m in tower.lm.modules()) == on
        # dropout stays on: checkpointing replays the same masks (same seed, RNG state restored)
        tower(torch.arange(1, 9)).square().sum().backward()
        grads.append([p.grad.clone() for p in tower.lm.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
