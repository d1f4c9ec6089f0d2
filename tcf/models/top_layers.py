"""Top-layer loading for fine-tuned towers: the model's top ``k`` blocks, final norm and OPT's ``project_out``,
built from its config on the meta device and filled with only those weights from the checkpoint.

What runs before the first block (token lookup, learned positions, BERT's embedding LayerNorm, OPT's
``project_in``, GPT-2's embedding dropout) is replaced by pass-throughs: the cached hidden states
entering block L-k already carry it.  :mod:`tcf.models.lm_tower` trains what this gives.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tcf.devices import torch_dtype
from tcf.encoders.base import EncoderSpec
from tcf.encoders.hf_load import describe, text_config
from tcf.encoders.quiet import quiet_transformers
from tcf.errors import ConfigError, TcfError

# decoders (Llama, Gemma, Mistral, Qwen), BERT-style encoders, OPT, GPT-2
LAYER_LISTS = ("layers", "encoder.layer", "decoder.layers", "h")
WEIGHT_PREFIXES = ("", "model.", "bert.", "roberta.", "model.language_model.", "language_model.model.",
                   "language_model.", "transformer.")


def _passthrough():
    """A module that returns ``inputs_embeds`` unchanged: stands in for the embedding table / layer."""
    class InputsEmbeds(torch.nn.Module):
        def forward(self, input_ids=None, inputs_embeds=None, **_):
            if inputs_embeds is None:
                raise TcfError("the top-layer model has no embedding table; it takes cached hidden states only")
            return inputs_embeds

    return InputsEmbeds()


def top_config(config, n_layers: int, k: int):
    """A copy of ``config`` with only the top ``k`` blocks (per-layer lists cut from the top)."""
    import copy

    config = copy.deepcopy(config)
    tc = text_config(config)
    tc.num_hidden_layers = k
    for attr in ("layer_types",):
        value = getattr(tc, attr, None)
        if isinstance(value, list):
            setattr(tc, attr, value[n_layers - k:])
    return config


def _no_positions():
    """A module that adds nothing: stands in for learned absolute positions already in the cached states."""
    class NoPositions(torch.nn.Module):
        def forward(self, *args, **_):
            anchor = next(a for a in args if isinstance(a, torch.Tensor))
            return anchor.new_zeros((), dtype=torch.float32)  # 0-d: broadcasts, and keeps the states' dtype

    return NoPositions()


def strip_embeddings(model) -> str:
    """Replace what runs before the first block by pass-throughs; -> 'decoder' or 'encoder' (how to call it).

    The cached states are the hidden states *entering* a block, so whatever the model does before its
    first block is already in them: token lookup, Gemma's scaling, BERT's position/type embeddings and
    LayerNorm, OPT's learned positions and ``project_in`` (350m), GPT-2's ``wpe`` and embedding dropout.
    What is left is the blocks, the final norm and OPT's ``project_out``.
    """
    decoder = getattr(model, "decoder", None)
    if hasattr(decoder, "layers") and hasattr(decoder, "embed_positions"):  # OPT
        decoder.embed_tokens, decoder.embed_positions = _passthrough(), _no_positions()
        decoder.project_in = None
        return "decoder"
    if hasattr(model, "h") and hasattr(model, "wpe"):  # GPT-2
        model.wte, model.wpe, model.drop = _passthrough(), _no_positions(), torch.nn.Identity()
        return "decoder"
    if hasattr(model, "layers") and hasattr(model, "embed_tokens"):
        if not hasattr(model, "rotary_emb") or hasattr(model, "embed_positions"):
            raise ConfigError(f"{type(model).__name__}: fine-tuning top layers needs a decoder with rotary positions "
                              "(Llama, Gemma, Mistral, Qwen), OPT, GPT-2 or a BERT-style encoder")
        model.embed_tokens = _passthrough()
        return "decoder"
    if hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer"):
        model.embeddings = _passthrough()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # the [CLS] pooler is never used by tcf's pooling
        return "encoder"
    raise ConfigError(f"{type(model).__name__}: fine-tuning top layers supports Llama/Gemma-style decoders, OPT, "
                      "GPT-2 and BERT-style encoders only")


def renumber_blocks(model, shift: int) -> None:
    """Give the top blocks (built as 0..k-1) back what depends on their depth L-k..L-1.

    GPT-2 with ``scale_attn_by_inverse_layer_idx`` divides its attention scores by (layer + 1).
    Only the scale moves: ``layer_idx`` also indexes the KV cache, which the top model never uses.
    """
    for i, block in enumerate(getattr(model, "h", None) or []):
        attn = block.attn
        if getattr(attn, "scale_attn_by_inverse_layer_idx", False):
            attn.scaling = attn.scaling * (i + 1) / (i + shift + 1)


def _checkpoint_reader(folder: Path):
    """-> (names available, get(name) -> tensor), reading only the tensors asked for."""
    import json

    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        where = {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    elif (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            where = {k: folder / "model.safetensors" for k in f.keys()}
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True)
        return set(state), state.__getitem__
    else:
        raise TcfError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")

    def get(name):
        with safe_open(str(where[name]), "pt") as f:
            return f.get_tensor(name)

    return set(where), get


def _weights_folder(source, spec: EncoderSpec) -> Path:
    if not isinstance(source, str):
        return Path(source)
    from huggingface_hub import snapshot_download  # a hub name: its local snapshot (downloaded where reachable)

    return Path(snapshot_download(source, revision=spec.revision, allow_patterns=["*.json", "*.safetensors", "*.bin"]))


def load_top_layers(spec: EncoderSpec, k: int):
    """The model's top ``k`` blocks (L-k..L-1, renumbered 0..k-1), its final norm and OPT's ``project_out``,
    without the blocks below or the embedding table: only those weights are read.  -> (model, kind, n_layers, identity).

    ``model(inputs_embeds=hidden_states_entering_block_L-k, attention_mask=...)`` then equals the
    full model's output (``kind``: 'decoder' also wants ``position_ids``).
    """
    import re

    from accelerate import init_empty_weights
    from transformers import AutoModel

    if spec.quantization:
        raise ConfigError("encoder.quantization is not supported for fine-tuned towers; use dtype bf16/fp16")
    source, identity, config, n_layers, _ = describe(spec)
    if not 1 <= k <= n_layers:
        raise ConfigError(f"model.finetune_layers must be within 1..{n_layers} for {spec.model} ({n_layers} blocks), "
                          f"got {k}")
    with quiet_transformers(), init_empty_weights(include_buffers=False):  # weights on meta until loaded
        model = AutoModel.from_config(top_config(config, n_layers, k))
    kind = strip_embeddings(model)
    renumber_blocks(model, n_layers - k)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no generation: a KV cache would only hold memory
    names, get = _checkpoint_reader(_weights_folder(source, spec))
    shift = n_layers - k
    layer_key = re.compile(rf"^({'|'.join(re.escape(p) for p in LAYER_LISTS)})\.(\d+)\.")
    dtype = torch_dtype(spec.dtype)
    state = {}
    for name, value in model.state_dict().items():
        if not value.is_meta:
            continue  # computed buffers (rotary frequencies) are already real
        want = layer_key.sub(lambda m: f"{m.group(1)}.{int(m.group(2)) + shift}.", name)
        found = next((p + want for p in WEIGHT_PREFIXES if p + want in names), None)
        if found is None:
            raise TcfError(f"{spec.model}: weight {want!r} (for {name}) not found in the checkpoint")
        tensor = get(found)
        state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    model.load_state_dict(state, strict=False, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise TcfError(f"{spec.model}: top-layer weights not loaded: {left[:5]}")
    return model, kind, n_layers, identity
