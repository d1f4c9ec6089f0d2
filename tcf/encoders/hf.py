"""Hugging Face ``transformers`` encoder: any encoder or decoder, a zoo name, a folder or a GGUF file.

Layer-range loading: for ``layer`` below the last, the model is built with only the
first ``layer`` blocks (``num_hidden_layers`` cut in its config) and its final norm
removed, so the weights of the blocks above are never loaded and the output equals
the full model's ``hidden_states[layer]``.  That is how a cache of layer L-k states
is made for a model that does not fit in memory whole.

Batches are formed from texts sorted by token length (little padding) and the
results are put back in input order; the batch size halves on out-of-memory.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np

from tcf.devices import pick_device, torch_dtype  # noqa: F401 - re-exported
from tcf.encoders.base import Embedded, Encoder, EncoderSpec, TokenStates, encoder_key
from tcf.encoders.pooling import pool
from tcf.encoders.quiet import quiet_transformers  # noqa: F401 - re-exported
from tcf.errors import ConfigError, TcfError

log = logging.getLogger(__name__)
FINAL_NORMS = ("norm", "final_layer_norm", "ln_f", "final_layernorm")


def resolve_model(spec: EncoderSpec):
    """-> (folder to load, identity).  GGUF files are converted once to a safetensors folder."""
    from tcf.encoders import zoo

    if spec.model in zoo.ZOO:
        m = zoo.resolve(spec.model)
        return m.folder, m.identity
    path = Path(spec.model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TcfError(f"{path}: GGUF file not found")
        return zoo.converted_folder(path), f"{path.name}:{zoo.file_hash(path)[:16]}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TcfError(f"{path}: not a model folder (config.json missing)")
        return path, f"{path.name}:{zoo.folder_identity(path)[:16]}"
    if path.exists() or spec.model.startswith((".", "/", "~")):
        raise TcfError(f"{spec.model}: not a model folder or .gguf file")
    # a hub name: resolved from the local Hugging Face cache, or downloaded where a hub is reachable
    return spec.model, f"{spec.model}@{spec.revision or 'main'}"


def hub_revision(name: str, revision: str | None) -> str | None:
    """The commit a hub name resolves to in the local HF cache, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json", revision=revision)
        if isinstance(hit, str):
            return Path(hit).parent.name  # snapshots/<commit>/config.json
    except Exception:  # noqa: BLE001 - a cache probe must never break loading
        return None
    return None


def text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def truncate_config(config, n_layers: int) -> None:
    """Keep only the first ``n_layers`` blocks in a config (and per-layer lists that go with them)."""
    tc = text_config(config)
    tc.num_hidden_layers = n_layers
    for attr in ("layer_types",):
        value = getattr(tc, attr, None)
        if isinstance(value, list):
            setattr(tc, attr, value[:n_layers])


def drop_final_norm(model) -> list[str]:
    """Replace the final norm (and OPT's output projection) by identity; returns what was dropped."""
    dropped = []
    for owner in (model, getattr(model, "decoder", None), getattr(model, "model", None)):
        if owner is None:
            continue
        for attr in (*FINAL_NORMS, "project_out"):
            if getattr(owner, attr, None) is not None and hasattr(owner, attr):
                if attr == "project_out" or not isinstance(getattr(owner, attr), (list, tuple)):
                    setattr(owner, attr, None if attr == "project_out" else _identity())
                    dropped.append(attr)
    return dropped


def _identity():
    import torch

    return torch.nn.Identity()


def describe(spec: EncoderSpec):
    """Resolve the model and read its config (no weights): -> (source, identity, config, n_layers, layer_index)."""
    from transformers import AutoConfig

    source, identity = resolve_model(spec)
    kw = {"revision": spec.revision} if isinstance(source, str) and spec.revision else {}
    if isinstance(source, str):  # hub name
        identity = f"{source}@{hub_revision(source, spec.revision) or spec.revision or 'main'}"
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(str(source), **kw)
    except OSError as e:
        raise TcfError(f"cannot load model {spec.model!r}: {e}. Offline machines need a zoo name "
                       f"({', '.join(_zoo_names())}), a local folder or a .gguf file") from None
    n_layers = int(text_config(config).num_hidden_layers)
    if not -(n_layers + 1) <= spec.layer <= n_layers:
        raise ConfigError(f"encoder.layer {spec.layer} is outside -{n_layers + 1}..{n_layers} for {spec.model} "
                          f"({n_layers} blocks; 0 = embeddings, -1 = final output)")
    return source, identity, config, n_layers, spec.layer % (n_layers + 1)


def _zoo_names():
    from tcf.encoders.zoo import ZOO

    return sorted(ZOO)


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[list[list[int]], int, int]:
    """Token ids per text, cut at ``max_tokens`` keeping special tokens; -> (ids, n_truncated, n_empty).

    A text with no token at all becomes the single padding token (and is counted).
    """
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    long = [i for i, x in enumerate(ids) if len(x) > max_tokens]
    if long:
        cut = tokenizer([texts[i] for i in long], add_special_tokens=True, truncation=True,
                        max_length=max_tokens)["input_ids"]
        for i, x in zip(long, cut):
            ids[i] = x
    empty = [i for i, x in enumerate(ids) if not x]
    for i in empty:
        ids[i] = [tokenizer.pad_token_id]
    return ids, len(long), len(empty)


def load_tokenizer(source, spec: EncoderSpec):
    from transformers import AutoTokenizer

    kw = {"revision": spec.revision} if isinstance(source, str) and spec.revision else {}
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(source), **kw)
    tok.padding_side = spec.padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


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
        torch = self._torch
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        start = 0
        while start < len(order):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, padding=True, return_tensors="pt")
            try:
                states, mask = self._forward(batch["input_ids"], batch["attention_mask"])
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory: batch size lowered to %d", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            consume(idx, states, mask)
            start += len(idx)

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


# ------------------------------------------------------------ top-layer loading (fine-tuning)

# decoders (Llama, Gemma, Mistral, Qwen), BERT-style encoders, OPT, GPT-2
LAYER_LISTS = ("layers", "encoder.layer", "decoder.layers", "h")
WEIGHT_PREFIXES = ("", "model.", "bert.", "roberta.", "model.language_model.", "language_model.model.",
                   "language_model.", "transformer.")


def _passthrough():
    """A module that returns ``inputs_embeds`` unchanged: stands in for the embedding table / layer."""
    import torch

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
    import torch

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
        model.wte, model.wpe, model.drop = _passthrough(), _no_positions(), _identity()
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
        import torch

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
