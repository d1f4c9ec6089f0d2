"""Hugging Face ``transformers`` encoder: any encoder or decoder, a zoo name, a folder or a GGUF file.

Layer-range loading: for ``layer`` below the last, the model is built with only the
first ``layer`` blocks (``num_hidden_layers`` cut in its config) and its final norm
removed, so the weights of the blocks above are never loaded and the output equals
the full model's ``hidden_states[layer]``.  That is how a cache of layer L-k states
is made for a model that does not fit in memory whole.  Resolution and loading live in
:mod:`tcf.encoders.hf_load`, the top-layer loading of fine-tuned towers in
:mod:`tcf.models.top_layers` (both still importable from here).

Batches are formed from texts sorted by token length (little padding) and the
results are put back in input order; the batch size halves on out-of-memory.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np

from tcf.devices import pick_device, torch_dtype  # noqa: F401 - re-exported
from tcf.encoders.base import Embedded, Encoder, EncoderSpec, TokenStates, encoder_key
from tcf.encoders.hf_load import (  # noqa: F401 - resolution and loading, re-exported
    FINAL_NORMS,
    by_length,
    describe,
    drop_final_norm,
    hub_revision,
    load_tokenizer,
    resolve_model,
    text_config,
    tokenize,
    truncate_config,
)
from tcf.encoders.pooling import pool
from tcf.encoders.quiet import quiet_transformers  # noqa: F401 - re-exported
from tcf.errors import TcfError

log = logging.getLogger(__name__)


# Part of every cache key: bump it whenever a change here alters the vectors computed for the same
# weights and settings, so caches written by the older code are recomputed instead of silently reused.
# 2: RoBERTa-style models (MPNet, XLM-R) number their own positions from padding_idx + 1.
CODE_VERSION = 2


class HFEncoder(Encoder):
    @classmethod
    def key_for(cls, spec: EncoderSpec) -> dict:
        _, identity, _, _, layer_index = describe(spec)
        return {**encoder_key(spec, identity, layer_index), "code_version": CODE_VERSION}

    def __init__(self, spec: EncoderSpec):
        import torch

        self.spec = spec
        self._torch = torch
        source, self.identity, config, self.num_layers, self.layer_index = describe(spec)
        kw = {"revision": spec.revision} if isinstance(source, str) and spec.revision else {}
        partial = self.layer_index < self.num_layers
        if partial:
            truncate_config(config, self.layer_index)
        load = {"config": config, "dtype": torch_dtype(spec.dtype), **kw}
        if spec.quantization:
            load["quantization_config"] = self._bnb_config()
        if spec.device_map:
            load["device_map"] = spec.device_map
        self.tokenizer = load_tokenizer(source, spec)
        with quiet_transformers():
            model = self._load_model(str(source), load)
        self.dropped = drop_final_norm(model) if partial else []
        model.eval()
        self.model = model
        self.runner = self._place(model)  # what a forward pass calls: the model, or an engine around it
        # RoBERTa-style embeddings (RoBERTa, XLM-R, MPNet) number positions from padding_idx + 1 and
        # skip pads themselves; positions from 0 would shift every token of theirs
        self._takes_positions = ("position_ids" in inspect.signature(model.forward).parameters
                                 and getattr(getattr(model, "embeddings", None), "padding_idx", None) is None)
        tc = text_config(config)
        self.dim = int(getattr(tc, "hidden_size", 0) or model.get_input_embeddings().embedding_dim)
        if not partial and getattr(getattr(model, "decoder", None), "project_out", None) is not None:
            self.dim = int(model.decoder.project_out.out_features)
        # partitioned (ZeRO-3) parameters report their full size in ds_numel
        self.n_parameters = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        self.batch_size = spec.batch_size  # lowered on out-of-memory, kept for later batches

    def _load_model(self, source: str, load: dict):
        from transformers import AutoModel

        return AutoModel.from_pretrained(source, **load)

    def _place(self, model):
        """Move the model to its device (none with device_map / bitsandbytes: already placed)."""
        self.device = None if (self.spec.device_map or self.spec.quantization) else pick_device(self.spec.device)
        if self.device is not None:
            model.to(self.device)
        return model

    def _bnb_config(self):
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise TcfError("encoder.quantization needs bitsandbytes: pip install 'tcf[quant]'")
        from transformers import BitsAndBytesConfig

        if self.spec.quantization == "int8":
            # bitsandbytes logs this on every matmul; the cast to fp16 is how int8 matmul works
            logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch_dtype("bf16" if self.spec.dtype == "fp32"
                                                                     else self.spec.dtype))

    # ------------------------------------------------------------ tokenisation and batching

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], int, int]:
        return tokenize(self.tokenizer, texts, self.spec.max_tokens)

    def _forward(self, input_ids, mask):
        torch = self._torch
        dev = self.device or self.model.get_input_embeddings().weight.device
        args = {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev)}
        if self._takes_positions:  # positions from the mask: left padding must not shift them
            args["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0).to(dev)
        with torch.inference_mode():
            return self.runner(**args).last_hidden_state, args["attention_mask"]

    def _run(self, ids: list[list[int]], consume) -> None:
        """Forward texts longest first, in batches; an out-of-memory batch is retried at half size."""

        def step(idx):
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, padding=True, return_tensors="pt")
            consume(idx, *self._forward(batch["input_ids"], batch["attention_mask"]))

        by_length(self, [len(x) for x in ids], step)

    # ------------------------------------------------------------ public

    def embed(self, texts: list[str]) -> Embedded:
        ids, n_trunc, n_empty = self.tokenize(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)

        def consume(idx, states, mask):
            out[idx] = pool(states, mask, self.spec.pooling).cpu().numpy()

        self._run(ids, consume)
        return Embedded(out, int(sum(len(x) for x in ids)), n_trunc, n_empty)

    def token_states(self, texts: list[str]) -> TokenStates:
        T = self.spec.max_tokens
        ids, n_trunc, _ = self.tokenize(texts)
        states_out = np.zeros((len(texts), T, self.dim), dtype=np.float32)
        mask_out = np.zeros((len(texts), T), dtype=np.int8)

        def consume(idx, states, mask):
            states, mask = states.float().cpu().numpy(), mask.cpu().numpy().astype(bool)
            for row, i in enumerate(idx):  # store right-aligned to position 0 whatever the padding side
                real = states[row][mask[row]]
                states_out[i, :len(real)] = real
                mask_out[i, :len(real)] = 1

        self._run(ids, consume)
        return TokenStates(states_out, mask_out, n_trunc)

    def close(self) -> None:
        self.model = self.runner = None
        if self.device and self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


# moved to tcf.models.top_layers (fine-tuning); imported from there on first use so encoders stay below models
TOP_LAYER_NAMES = ("LAYER_LISTS", "WEIGHT_PREFIXES", "load_top_layers", "renumber_blocks", "strip_embeddings",
                   "top_config")


def __getattr__(name: str):
    if name in TOP_LAYER_NAMES:
        import tcf.models.top_layers

        return getattr(tcf.models.top_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
