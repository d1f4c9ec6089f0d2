"""An LLM user head (HLLM style): a decoder language model reads the user's item vectors as its input.

Read top to bottom: item vectors from any tower [B, L, dim] -> a linear map to the LM's hidden
size -> the bottom n blocks of a causal LM (``inputs_embeds``; no embedding table, the inputs
are item vectors) and its final norm -> a linear map back to ``model.dim`` for scoring against
the same tower's item vectors.  The state at position p predicts the item at p + 1, as SASRec's.

Sequences are left-padded with item 0: padding is masked out of attention and positions are
counted from each user's first real item (as the LM's own left-padded batches count them),
so the same history gives the same states whatever its padding.

* ``llm_init``   ``pretrained`` weights, or the same config at ``random`` (HLLM's ablation)
* ``llm_layers`` n: only blocks 0..n-1 (and the final norm) are built and read from the checkpoint
* ``llm_train``  ``full`` | ``top:k`` (blocks below the top k frozen) | ``lora`` (adapters, base
  frozen) | ``frozen`` (only the two linear maps and the tower train)

The LM's trainable parameters are an AdamW group of their own (``train.lm_lr``; see
:func:`tcf.models.lm_tower.param_groups`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from tcf.errors import ConfigError, TcfError

INITS = ("pretrained", "random")


def parse_train(value: str) -> tuple[str, int]:
    """``full`` | ``frozen`` | ``lora`` | ``top:k`` -> (mode, k); k is 0 except for ``top``."""
    m = re.fullmatch(r"top:(\d+)", str(value))
    if m and int(m[1]) >= 1:
        return "top", int(m[1])
    if value in ("full", "frozen", "lora"):
        return value, 0
    raise ConfigError(f"model.llm_train must be full, frozen, lora or top:K (K >= 1), got {value!r}")


def llm_spec(m):
    """The encoder spec the user LM is read with (model and dtype; the rest is irrelevant here)."""
    from tcf.encoders.base import EncoderSpec

    return EncoderSpec(model=m.llm_model, dtype=m.llm_dtype)


def _materialize(model: nn.Module) -> None:
    """Parameters still on the meta device get real (uninitialised) storage on CPU, and every module is marked
    as not yet initialised (``from_config`` marked them done, so ``init_weights`` would skip them)."""
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
        for name, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                module._parameters[name] = nn.Parameter(torch.empty_like(p, device="cpu"), p.requires_grad)


def _top_layers():
    """The module that reads checkpoints tensor by tensor (tcf.models.top_layers; tcf.encoders.hf before it moved)."""
    try:
        from tcf.models import top_layers
    except ImportError:
        from tcf.encoders import hf as top_layers
    return top_layers


def load_bottom_layers(spec, n: int, init: str = "pretrained", seed: int = 0, dropout: float = 0.0):
    """Blocks 0..n-1 of a causal LM and its final norm, no embedding table: only those weights are read
    (``init: random`` reads none and initialises the same modules as the model's own code does; both arms
    cast only their parameters to ``spec.dtype``, so computed buffers such as the rotary frequencies stay
    fp32 in both).  ``dropout`` sets the attention dropout of configs that have one.
    -> (model, kind, n_layers of the full model).  ``model(inputs_embeds=..., attention_mask=...,
    position_ids=...)`` equals the full model's first n blocks followed by its final norm."""
    from accelerate import init_empty_weights
    from transformers import AutoModel

    from tcf.devices import torch_dtype
    from tcf.encoders.hf import describe, quiet_transformers, truncate_config

    t = _top_layers()
    if init not in INITS:
        raise ConfigError(f"model.llm_init must be one of {list(INITS)}, got {init!r}")
    source, _, config, n_layers, _ = describe(spec)
    n = n or n_layers
    if not 1 <= n <= n_layers:
        raise ConfigError(f"model.llm_layers must be within 1..{n_layers} for {spec.model} (0 = all), got {n}")
    truncate_config(config, n)
    if hasattr(config, "attention_dropout"):
        config.attention_dropout = dropout
    with quiet_transformers(), init_empty_weights(include_buffers=False):  # weights on meta until loaded
        model = AutoModel.from_config(config)
    if t.strip_embeddings(model) != "decoder" or not hasattr(model, "layers"):
        raise ConfigError(f"model.llm_model {spec.model}: the llm head needs a causal decoder with rotary "
                          "positions (Llama, Gemma, Mistral, Qwen)")
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if init == "random":
        _materialize(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.init_weights()
        for p in model.parameters():  # not model.to(): that would cast the fp32 rotary buffers as well
            p.data = p.data.to(torch_dtype(spec.dtype))
        return model, "decoder", n_layers
    names, get = t._checkpoint_reader(t._weights_folder(source, spec))
    state = {}
    for name, value in model.state_dict().items():
        if not value.is_meta:
            continue  # computed buffers (rotary frequencies) are already real
        found = next((p + name for p in t.WEIGHT_PREFIXES if p + name in names), None)
        if found is None:
            raise TcfError(f"{spec.model}: weight {name!r} not found in the checkpoint")
        w = get(found)
        state[name] = w.to(torch_dtype(spec.dtype)) if w.is_floating_point() else w
    model.load_state_dict(state, strict=False, assign=True)
    left = [k for k, w in [*model.named_parameters(), *model.named_buffers()] if w.is_meta]
    if left:
        raise TcfError(f"{spec.model}: bottom-layer weights not loaded: {left[:5]}")
    return model, "decoder", n_layers


def freeze(model: nn.Module, mode: str, k: int) -> None:
    """``frozen``: nothing trains; ``top``: the top k of the loaded blocks and the final norm train."""
    if mode == "full":
        return
    for p in model.parameters():
        p.requires_grad_(False)
    if mode != "top":
        return
    blocks = model.layers
    if k > len(blocks):
        raise ConfigError(f"model.llm_train top:{k} asks for more blocks than the {len(blocks)} loaded "
                          "(model.llm_layers)")
    for module in [*blocks[len(blocks) - k:], model.norm]:
        for p in module.parameters():
            p.requires_grad_(True)


class UserLM(nn.Module):
    """[B, L, H] inputs, [B, L] keep mask -> [B, L, H] final-norm states.  Marks the LM for ``train.lm_lr``."""

    is_lm = True  # tcf.models.lm_tower.param_groups: these parameters form the LM's AdamW group

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.model, self.compute_dtype = model, compute_dtype

    @property
    def hidden(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        mask = keep.long()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # 0 at each user's first real item
        low = self.compute_dtype not in (None, torch.float32)
        # no cache of cast weights: under gradient checkpointing it would hold every block's copy to the end of
        # the forward (tcf.models.lm_tower.LMTower._autocast)
        with torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=low, cache_enabled=False):
            out = self.model(inputs_embeds=x, attention_mask=mask, position_ids=positions).last_hidden_state
        return out.float()


class LLMHead(nn.Module):
    """Item tower -> Linear(dim, H) -> dropout -> user LM (bottom n blocks) -> Linear(H, dim).
    ``model.dropout`` acts where SASRec's does on its input (the item vectors entering the sequence model)
    and as the LM's attention dropout; the Llama-style blocks have no other dropout."""

    def __init__(self, tower: nn.Module, lm: UserLM, dim: int, dropout: float = 0.0):
        super().__init__()
        self.tower, self.lm, self.dim = tower, lm, dim
        self.proj_in = nn.Linear(dim, lm.hidden)
        self.drop = nn.Dropout(dropout)
        self.proj_out = nn.Linear(lm.hidden, dim)

    def states(self, users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """[B] users (unused), [B, L] left-padded items -> [B, L, dim] next-item states."""
        keep = seq != 0  # [B, L]
        x = self.drop(self.proj_in(self.tower(seq)))  # [B, L, H]
        h = self.lm(x, keep)  # [B, L, H]; padding queries give finite values that no loss reads
        return self.proj_out(h) * keep.unsqueeze(-1)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower(ids)

    def all_items(self) -> torch.Tensor:
        return self.tower.all()


def build_llm_head(cfg, tower: nn.Module, n_items: int | None = None, n_users: int | None = None) -> LLMHead:
    """The ``llm`` head of a RunConfig over an item tower: load, freeze / LoRA, checkpointing, fp32 masters.
    (The head builders' signature, tcf.extensions.HEADS; item and user counts are not needed.)"""
    from tcf.models.lm_tower import add_lora, enable_checkpointing, master_weights
    from tcf.models.precision import emulate_low_precision_linears

    m = cfg.model
    mode, k = parse_train(m.llm_train)
    model, _, _ = load_bottom_layers(llm_spec(m), m.llm_layers, m.llm_init, seed=cfg.seed, dropout=m.dropout)
    if cfg.train.grad_checkpointing:
        enable_checkpointing(model)
    if mode == "lora":
        model = add_lora(model, m.lora_r, m.lora_alpha, m.lora_dropout)
    else:
        freeze(model, mode, k)
    compute = master_weights(model)
    emulate_low_precision_linears(model, compute)  # a CPU without native bf16 matmuls: the fp32 kernel
    return LLMHead(tower, UserLM(model, compute), m.dim, m.dropout)
