"""Fine-tuned text towers: the top k layers of a language model train end to end with the head.

* ``finetune``  layers L-k..L-1 (and the final norm) are trained
* ``lora``      the same layers stay frozen and carry LoRA adapters (peft) on their linear maps

The hidden states *entering* layer L-k are read from the token-level embedding cache
(``kind: tokens``, extracted once with layer-range loading), so a step runs only k
layers, then pooling (mean / last / cls), then the MLP adapter — never the whole model,
and only for the batch's unique items.  In eval mode :meth:`LMTower.all` runs the k
layers over the whole catalogue in length-sorted chunks under no_grad and keeps the
result until the mode changes or weights are loaded (one computation per evaluation).

Full-softmax ``ce`` would run the k layers over every item at every step, so it is
refused: use ``inbatch`` (the TCF reference's default for fine-tuning) or ``bce``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tcf.encoders.pooling import l2_normalize, pool
from tcf.errors import ConfigError
from tcf.models.precision import emulate_low_precision_linears
from tcf.models.towers import adapter
from tcf.run.config import LM_TOWERS  # noqa: F401 - re-exported (the names live with the config)


def check_config(cfg) -> None:
    """Refuse settings a fine-tuned tower cannot honour, before any extraction starts."""
    m, t = cfg.model, cfg.train
    if t.loss == "ce":
        raise ConfigError(f"train.loss=ce with model.tower={m.tower} would run the top {m.finetune_layers} LM layers "
                          "over the whole catalogue at every step; use train.loss=inbatch (the TCF reference's "
                          "default for fine-tuning) or bce")
    if cfg.encoder.layer != -1:
        raise ConfigError(f"encoder.layer is {cfg.encoder.layer}; model.tower={m.tower} fine-tunes the top of the "
                          "model (encoder.layer must be -1; choose the depth with model.finetune_layers)")
    if m.finetune_layers < 1:
        raise ConfigError(f"model.finetune_layers must be >= 1, got {m.finetune_layers}")
    if m.tower == "lora" and (m.lora_r < 1 or m.lora_alpha <= 0 or not 0 <= m.lora_dropout < 1):
        raise ConfigError("model.lora_r must be >= 1, model.lora_alpha > 0 and model.lora_dropout within [0, 1)")
    if cfg.encoder.dtype == "fp16" and t.strategy == "deepspeed":
        raise ConfigError(f"encoder.dtype=fp16 with model.tower={m.tower} under train.strategy=deepspeed would train "
                          "without loss scaling (the loop's GradScaler is not used inside a DeepSpeed engine): use "
                          "encoder.dtype=bf16 (no scaling needed) or train.strategy none/ddp")


def cache_spec(cfg):
    """The encoder spec of the token cache: hidden states entering layer L-k."""
    from tcf.encoders.hf_load import describe

    n_layers, k = describe(cfg.encoder)[3], cfg.model.finetune_layers
    if not 1 <= k <= n_layers:
        raise ConfigError(f"model.finetune_layers must be within 1..{n_layers} for {cfg.encoder.model} "
                          f"({n_layers} blocks), got {k}")
    return dataclasses.replace(cfg.encoder, layer=n_layers - k)


def token_cache(cfg, dataset):
    """The token-state cache entry for the dataset (extracted on first use, or ``cache_path`` checked) and its info."""
    from tcf.encoders.cache import CacheError, read_entry
    from tcf.encoders.extract import extract, make_key

    check_config(cfg)
    spec = cache_spec(cfg)
    if cfg.cache_path:
        path = Path(cfg.cache_path)
        found = read_entry(path, verify=False)
        if found.key.get("kind") != "tokens":
            raise CacheError(f"{path}: a {found.key.get('kind')} cache; model.tower={cfg.model.tower} needs token "
                             "states (extract with kind tokens at layer L-k)")
        want = make_key(spec, dataset, kind="tokens", template=cfg.data.template, storage=found.key.get("storage"))
        entry = read_entry(path, key=want, rows=dataset.n_items + 1)  # names every field that differs
    else:
        entry = extract(dataset, spec, root=cfg.cache_root, kind="tokens", template=cfg.data.template,
                        progress=True).entry
    return entry, {"cache": str(entry.path), "key_hash": entry.manifest["key_hash"],
                   "encoder_parameters": full_parameter_count(cfg.encoder)}


def full_parameter_count(spec) -> int:
    """Parameters of the whole LM (bottom blocks in the cache, top k trained), counted on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoModel

    from tcf.encoders.hf_load import describe
    from tcf.encoders.quiet import quiet_transformers

    with quiet_transformers(), init_empty_weights():
        return sum(p.numel() for p in AutoModel.from_config(describe(spec)[2]).parameters())


class TopLayers(nn.Module):
    """Hidden states entering layer L-k -> the model's output (top k blocks, final norm, OPT's project_out)."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    @property
    def out_dim(self) -> int:
        """Width of the output: the hidden size, or what OPT-350m's ``project_out`` maps it to."""
        project_out = getattr(getattr(self.model, "decoder", None), "project_out", None)
        if project_out is not None:
            return int(project_out.out_features)
        return int(self.model.config.get_text_config().hidden_size)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] states, [B, T] mask (1 = token) -> [B, T, D_out]."""
        kw = {"inputs_embeds": states, "attention_mask": mask}
        if self.kind == "decoder":  # rotary positions counted from the mask, as in extraction
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
        return self.model(**kw).last_hidden_state


class TokenStore:
    """The cached token states [N + 1, T, D] and mask [N + 1, T] (memory maps), read by item id."""

    def __init__(self, states: np.ndarray, mask: np.ndarray):
        self.states, self.mask = states, mask
        self.lengths = torch.as_tensor(np.asarray(mask, dtype=np.int64).sum(1))  # [N + 1] real tokens per item
        self.n_rows, self.dim = states.shape[0], states.shape[2]

    def rows(self, ids: torch.Tensor, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """[n] item ids -> states [n, t, D], mask [n, t], cut to the longest of these items."""
        idx = ids.cpu().numpy()
        t = max(int(self.lengths[ids.cpu()].max()), 1)
        s = torch.from_numpy(np.ascontiguousarray(self.states[idx, :t]))
        m = torch.from_numpy(np.ascontiguousarray(self.mask[idx, :t]).astype(np.int64))
        return s.to(device=device, dtype=dtype), m.to(device)


class LMTower(nn.Module):
    """Item ids -> cached states at L-k -> top k layers -> pooling -> (L2) -> adapter -> [..., dim]."""

    def __init__(self, lm: TopLayers, tokens: TokenStore, dim: int, *, pooling: str = "mean", layers: int = 1,
                 dropout: float = 0.0, normalize: bool = True, chunk_items: int = 256, adapter_style: str = "mlp",
                 compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.lm, self.tokens, self.pooling, self.normalize = lm, tokens, pooling, normalize
        self.chunk_items = chunk_items
        self.adapter = adapter(lm.out_dim, dim, layers, dropout, adapter_style)
        self.compute_dtype = compute_dtype  # bf16 / fp16: the LM runs under autocast, its weights stay fp32
        self._all: torch.Tensor | None = None  # eval-mode catalogue, kept for one evaluation
        self._step: tuple[torch.Tensor, torch.Tensor] | None = None  # (sorted ids, vectors) of the current step
        self.register_load_state_dict_post_hook(lambda module, keys: module._forget())

    def _forget(self) -> None:
        self._all = None

    def train(self, mode: bool = True):
        self._forget()  # weights may change from here on
        return super().train(mode)

    @property
    def _dtype(self) -> torch.dtype:
        return self.compute_dtype or next(self.lm.parameters()).dtype

    def _autocast(self):
        """Mixed precision for the LM layers: matmuls in ``compute_dtype``, weights and their updates in fp32.
        Autocast's cache of cast weights is off: each weight is cast once per forward anyway, and the cache
        would keep every block's copy alive until the region ends, which under gradient checkpointing is
        more than the one block's copies a recomputed backward needs (the planner counts one block's)."""
        low = self.compute_dtype not in (None, torch.float32)
        return torch.autocast(self._device.type, dtype=self.compute_dtype, enabled=low, cache_enabled=False)

    @property
    def _device(self) -> torch.device:
        return next(self.adapter.parameters()).device

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """[n] item ids (no padding id) -> [n, D_lm] pooled LM outputs, in length-sorted chunks."""
        order = torch.argsort(self.tokens.lengths[ids.cpu()], stable=True).to(ids.device)
        parts = []
        for start in range(0, len(ids), self.chunk_items):
            chunk = ids[order[start:start + self.chunk_items]]
            states, mask = self.tokens.rows(chunk, self._dtype, self._device)
            parts.append(self.pooled(states, mask))  # [c, D_lm] fp32
        out = torch.cat(parts)
        return out[torch.argsort(order)]  # back to the order of ids

    def pooled(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[c, t, D] cached states, [c, t] mask -> [c, D_lm] fp32: the top k layers, then pooling
        (``item_token`` pooling overrides this: tcf.models.item_token)."""
        with self._autocast():
            hidden = self.lm(states, mask)
        return pool(hidden.float(), mask, self.pooling)

    def vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """[n] unique item ids -> [n, dim]; the padding id 0 gives zeros."""
        real = ids != 0
        v = self.encode(ids[real])
        if self.normalize:
            v = l2_normalize(v)
        out = self.adapter(v)
        full = out.new_zeros(len(ids), out.shape[1])
        return full.index_put((real.nonzero().squeeze(1),), out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """[...] ids -> [..., dim]: the catalogue in eval mode, else the batch's unique items only."""
        if not self.training:
            return self.all()[ids]
        flat = ids.reshape(-1)
        if self._step is not None:
            known, vecs = self._step
            pos = torch.searchsorted(known, flat).clamp_max(len(known) - 1)
            if bool((known[pos] == flat).all()):
                return vecs[pos].view(*ids.shape, -1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        return self.vectors(uniq)[inverse].view(*ids.shape, -1)

    def all(self) -> torch.Tensor:
        """[N + 1, dim], row 0 zeros.  Eval mode: computed once under no_grad and kept."""
        ids = torch.arange(self.tokens.n_rows, device=self._device)
        if self.training:
            return self.vectors(ids)
        if self._all is None:
            with torch.no_grad():
                self._all = self.vectors(ids)
        return self._all

    @contextlib.contextmanager
    def step(self, ids: torch.Tensor):
        """Inside: lookups of these ids reuse one computation (a training step's inputs and labels)."""
        uniq = torch.unique(ids.reshape(-1))
        self._step = (uniq, self.vectors(uniq)) if self.training else None
        try:
            yield
        finally:
            self._step = None


@contextlib.contextmanager
def step_items(model: nn.Module, batch):
    """Around a training step: every LM tower in ``model`` computes the batch's item ids once.

    ``batch`` = (users, inputs, labels, known); inputs and labels are the items the loss looks up.
    Models without an LM tower pass through unchanged.
    """
    towers = [m for m in model.modules() if isinstance(m, LMTower)]
    if not towers or not model.training:
        yield
        return
    ids = torch.cat([batch[1].reshape(-1), batch[2].reshape(-1)]).to(towers[0]._device)
    with contextlib.ExitStack() as stack:
        for tower in towers:
            stack.enter_context(tower.step(ids))
        yield


def param_groups(model: nn.Module, train_cfg) -> list[dict]:
    """AdamW groups: the LM's trainable parameters at ``train.lm_lr`` / ``train.lm_weight_decay``, the rest
    at the optimizer's defaults (``train.lr`` / ``train.weight_decay``)."""
    lm = {id(p) for m in model.modules() if isinstance(m, TopLayers) or getattr(m, "is_lm", False)
          for p in m.parameters()}  # is_lm: the llm head's user LM (tcf.models.llm_head.UserLM)
    rest = [p for p in model.parameters() if id(p) not in lm]
    groups = [{"params": rest}]
    lm_params = [p for p in model.parameters() if id(p) in lm and p.requires_grad]
    if lm_params:
        groups.append({"params": lm_params, "lr": train_cfg.lm_lr, "weight_decay": train_cfg.lm_weight_decay})
    return groups


def block_linears(model: nn.Module) -> list[str]:
    """Names of the linear maps inside the transformer blocks: nn.Linear, and GPT-2's Conv1D (q/k/v fused in
    ``c_attn``).  OPT's ``project_out`` sits above the blocks and is left out."""
    import re

    from transformers.pytorch_utils import Conv1D

    from tcf.models.top_layers import LAYER_LISTS

    in_block = re.compile(rf"^({'|'.join(re.escape(p) for p in LAYER_LISTS)})\.\d+\.")
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and in_block.match(n)]


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float) -> nn.Module:
    """Freeze ``model`` and put LoRA adapters on every linear map of its blocks; -> the model (changed in place)."""
    from tcf.encoders.quiet import quiet_bitsandbytes

    quiet_bitsandbytes()
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    for p in model.parameters():
        p.requires_grad_(False)
    targets = block_linears(model)
    if not targets:
        raise ConfigError(f"{type(model).__name__}: no linear maps found in its blocks for LoRA")
    conv1d = any(isinstance(model.get_submodule(n), Conv1D) for n in targets)  # weights stored [in, out]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        fan_in_fan_out=conv1d)
    return inject_adapter_in_model(config, model)


def enable_checkpointing(model) -> None:
    """Recompute each block's activations in backward.  Non-reentrant: the cached input states need no grad."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def build_lm_tower(cfg, entry, tower_class: type[LMTower] = LMTower) -> LMTower:
    """The ``finetune`` or ``lora`` tower of a RunConfig over a token-state cache entry; ``tower_class`` an
    LMTower subclass that pools otherwise (``item_token``: tcf.models.item_token, chosen by build_model)."""
    from tcf.models.top_layers import load_top_layers

    check_config(cfg)
    m = cfg.model
    hf_model, kind, n_layers, _ = load_top_layers(cfg.encoder, m.finetune_layers)
    if entry.key.get("kind") != "tokens" or entry.key.get("layer") != n_layers - m.finetune_layers:
        raise ConfigError(f"{entry.path}: cache of kind {entry.key.get('kind')} at layer {entry.key.get('layer')}; "
                          f"the tower needs token states entering layer {n_layers - m.finetune_layers}")
    if cfg.train.grad_checkpointing:
        enable_checkpointing(hf_model)
    if m.tower == "lora":
        hf_model = add_lora(hf_model, m.lora_r, m.lora_alpha, m.lora_dropout)
    compute = master_weights(hf_model)
    emulate_low_precision_linears(hf_model, compute)  # a CPU without native bf16 matmuls: the fp32 kernel
    tokens = TokenStore(entry.states, entry.mask)
    return tower_class(TopLayers(hf_model, kind), tokens, m.dim, pooling=cfg.encoder.pooling,
                       layers=m.adapter_layers, dropout=m.dropout, normalize=m.normalize_text,
                       adapter_style=m.adapter, compute_dtype=compute)


def master_weights(model: nn.Module) -> torch.dtype | None:
    """Loaded in bf16 / fp16: the trainable parameters become fp32 (AdamW's states follow them) and the
    model's low precision is returned as the compute dtype for autocast.  Updated in bf16, an update
    below a weight's resolution (2^-8 of it) rounds away and weight decay with it; fp16 also needs loss
    scaling (the loop's GradScaler).  Frozen weights (LoRA's base) keep their low precision.  -> None for fp32."""
    low = {p.dtype for p in model.parameters() if p.is_floating_point()} - {torch.float32}
    if not low:
        return None
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return low.pop()
