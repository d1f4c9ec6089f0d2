"""Where a Hugging Face model comes from and how it is read: resolution (a zoo name, a folder, a GGUF file, a
hub name), its config with layer-range cutting, its tokenizer, and length-sorted batching.

Shared by the HF encoder (:mod:`tcf.encoders.hf`), the vLLM encoder, the fine-tuned towers'
top-layer loading (:mod:`tcf.models.top_layers`) and the HF chat backend.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tcf.encoders.base import EncoderSpec
from tcf.encoders.quiet import quiet_transformers
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


def by_length(owner, lengths: list[int], step, what: str = "batch size") -> None:
    """Call ``step(indices)`` on batches of ``owner.batch_size`` indices, longest first (little padding; ``step``
    puts each result back at its index).  A batch that runs out of memory is retried at half the size, and
    ``owner.batch_size`` keeps the lowered size for later calls; out of memory at size 1 is raised."""
    import torch

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    start = 0
    while start < len(order):
        idx = order[start:start + owner.batch_size]
        try:
            step(idx)
        except torch.OutOfMemoryError:
            if owner.batch_size == 1:
                raise
            owner.batch_size = max(1, owner.batch_size // 2)
            log.warning("out of memory: %s lowered to %d", what, owner.batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start += len(idx)
