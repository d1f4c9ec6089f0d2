"""The scale planner: what a model costs and which loading strategy a run needs, before any weight is read.

The model's real config is instantiated on PyTorch's ``meta`` device (tensors with a
shape and no storage), so the parameter count is exact and instant even for
OPT-175B.  What is exact and what is estimated is kept apart in every plan:

* exact: parameters (total, per block, above layer L-k, loaded by layer-range loading),
  weight bytes of every precision (bitsandbytes int8 / nf4 layouts included), and the
  cache files on disk (``np.save`` headers included);
* estimated: activation memory, usable memory per device (fixed reserves), FLOPs and time
  at an assumed throughput.  Extraction activations are a closed form.  Fine-tuning ones
  are counted: the top blocks run forward on the meta device and every tensor autograd
  saves is summed, times the item texts one ``tcf train`` step really runs them over (the
  distinct items of its sequences, sampled from the dataset as the loop draws them).

The OPT family is known offline by hub name: its configs are built from the OPT paper
(Zhang et al. 2022, Table 1: layers, heads, d_model; ffn = 4 d_model, vocab 50272,
2048 positions) with the two quirks of the released OPT-350m checkpoint (512-d token
embeddings projected to 1024, and post-layer-norm blocks).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tcf.errors import ConfigError, TcfError

GiB = 1024**3

# OPT paper, Table 1: size -> (layers, heads, d_model)
OPT_ARCH = {"125m": (12, 12, 768), "350m": (24, 16, 1024), "1.3b": (24, 32, 2048), "2.7b": (32, 32, 2560),
            "6.7b": (32, 32, 4096), "13b": (40, 40, 5120), "30b": (48, 56, 7168), "66b": (64, 72, 9216),
            "175b": (96, 96, 12288)}
# the sizes the paper names the models by (rounded, as in GPT-3's Table 2.1)
OPT_PUBLISHED = {"125m": 125e6, "350m": 350e6, "1.3b": 1.3e9, "2.7b": 2.7e9, "6.7b": 6.7e9, "13b": 13e9,
                 "30b": 30e9, "66b": 66e9, "175b": 175e9}
_OPT_NAME = re.compile(r"^(?:facebook/)?opt-([0-9.]+[mb])$", re.IGNORECASE)

# Reserves (assumptions, not measurements): CUDA context and kernels take about 1 GiB of
# every GPU and the caching allocator fragments ~10%; the OS and the process need some RAM.
GPU_RESERVE_BYTES, GPU_USABLE_FRACTION = 1 * GiB, 0.90
CPU_RESERVE_BYTES, CPU_USABLE_FRACTION = 2 * GiB, 0.90
ADAMW_BYTES_PER_PARAM = 16  # weights 4 + grads 4 + AdamW m 4 + v 4 (fp32 or bf16 mixed precision alike)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DEFAULT_TFLOPS = {"gpu": 100.0, "cpu": 0.15}  # effective, per device; the CPU figure is benchmarks/README.md's
HOST_TO_GPU_BYTES_PER_S = 25e9  # PCIe 4.0 x16 in practice: what CPU-offloaded weights stream through


# ---------------------------------------------------------------- hardware

@dataclass(frozen=True)
class Hardware:
    n_gpus: int
    gpu_bytes: int  # per GPU
    cpu_bytes: int

    @property
    def gpu_usable(self) -> int:
        return max(0, int(self.gpu_bytes * GPU_USABLE_FRACTION) - GPU_RESERVE_BYTES)

    @property
    def cpu_usable(self) -> int:
        return max(0, int(self.cpu_bytes * CPU_USABLE_FRACTION) - CPU_RESERVE_BYTES)

    def describe(self) -> str:
        gpus = f"{self.n_gpus} x {self.gpu_bytes / GiB:g} GiB GPU" if self.n_gpus else "no GPU"
        return f"{gpus}, {self.cpu_bytes / GiB:g} GiB CPU memory"


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(t|tb|tib|g|gb|gib|m|mb|mib)?\s*$", re.IGNORECASE)


def parse_bytes(text: str, what: str) -> int:
    """'80GB' / '80GiB' / '0.5TB' -> bytes.  Sizes are binary: an '80GB' card holds ~80 GiB."""
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"{what}: cannot read {text!r} as a size (e.g. 80GB, 512GB, 1TB)")
    unit = (m.group(2) or "g").lower()[0]
    return int(float(m.group(1)) * {"m": 1024**2, "g": GiB, "t": 1024**4}[unit])


def parse_gpus(text: str) -> tuple[int, int]:
    """'8x80GB' -> (8, bytes per GPU); '80GB' is one GPU; '0', 'none' or 'cpu' is none."""
    t = str(text).strip().lower()
    if t in ("0", "none", "cpu", ""):
        return 0, 0
    n, sep, size = t.partition("x")
    if not sep:
        if not _SIZE.match(t):
            raise ConfigError(f"--gpus: cannot read {text!r}; write COUNTxSIZE, e.g. 8x80GB, or 0 for CPU only")
        n, size = "1", t
    if not n.strip().isdigit():
        raise ConfigError(f"--gpus: cannot read {text!r}; write COUNTxSIZE, e.g. 8x80GB, or 0 for CPU only")
    count = int(n)
    return count, (parse_bytes(size, "--gpus") if count else 0)


def hardware(gpus: str, cpu_mem: str) -> Hardware:
    n, per = parse_gpus(gpus)
    return Hardware(n, per, parse_bytes(cpu_mem, "--cpu-mem"))


# ---------------------------------------------------------------- configs

def opt_config(size: str):
    """The OPTConfig of a released OPT model, from the paper's architecture table (no download)."""
    from transformers import OPTConfig

    layers, heads, d = OPT_ARCH[size]
    quirk = size == "350m"  # the released 350m: 512-d embeddings with in/out projections, post-LN blocks
    return OPTConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=4 * d,
                     vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=512 if quirk else d,
                     do_layer_norm_before=not quirk, pad_token_id=1, bos_token_id=2, eos_token_id=2)


def opt_size(name: str) -> str | None:
    """'facebook/opt-66b' / 'opt-66b' -> '66b'; None for other names; an OPT size that does not exist is refused."""
    m = _OPT_NAME.match(name.strip())
    if not m:
        return None
    size = m.group(1).lower()
    if size not in OPT_ARCH:
        raise ConfigError(f"--model {name}: the OPT family has the sizes {', '.join(OPT_ARCH)} (OPT paper, Table 1)")
    return size


def load_config(model: str):
    """A model name / folder / config.json -> (config, where it came from).  Reads no weights."""
    from tcf.encoders import zoo

    size = opt_size(model)
    if size:
        return opt_config(size), f"OPT paper Table 1 (built in; {model} needs no download)"
    path = Path(model).expanduser()
    if model in zoo.ZOO or path.suffix == ".gguf":
        from tcf.encoders.base import EncoderSpec
        from tcf.encoders.hf import resolve_model

        folder, identity = resolve_model(EncoderSpec(model=model))  # GGUF: converted once, as extraction does
        return _read_config(Path(folder) / "config.json", model), f"{identity} ({folder})"
    if path.exists() or model.startswith((".", "/", "~")):
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise TcfError(f"{path}: no config.json there; {_MODEL_HELP}")
        return _read_config(file, model), str(path)
    return _hub_config(model), f"{model} (Hugging Face hub or its local cache)"


_MODEL_HELP = ("--model takes an OPT hub name (facebook/opt-125m ... facebook/opt-175b), a zoo name (tcf extract "
               "--list-models), a model folder, a config.json or a .gguf file")


def _read_config(file: Path | str, model: str, **kw):
    from transformers import AutoConfig

    from tcf.encoders.hf import quiet_transformers

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(str(file), **kw)
    except (OSError, ValueError, KeyError) as e:
        raise TcfError(f"cannot read the config of {model!r} ({file}): {str(e).splitlines()[0].rstrip('.')}. "
                       f"{_MODEL_HELP}") from None


def _hub_config(name: str):
    """A hub name's config: from the local Hugging Face cache, else from the hub unless it is offline."""
    from huggingface_hub import constants

    try:
        return _read_config(name, name, local_files_only=True)
    except TcfError:
        if constants.HF_HUB_OFFLINE:
            raise TcfError(f"{name}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE); "
                           f"{_MODEL_HELP}") from None
    return _read_config(name, name)


# ---------------------------------------------------------------- the model, measured on the meta device

@dataclass(frozen=True)
class Arch:
    """What the plan needs from a model, counted on its meta-device instance."""

    n_params: int
    n_layers: int
    hidden: int  # width of the hidden states (token cache rows)
    out_dim: int  # width of the final output (pooled vectors; OPT-350m projects to 512)
    ffn: int
    heads: int
    block_params: tuple[int, ...]  # per transformer block, bottom to top
    top_extra_params: int  # above the last block: final norm, output projection
    linear_weights: int  # elements of nn.Linear / Conv1D weight matrices (what bitsandbytes quantizes)
    linear_rows: int  # their output rows (int8 keeps one fp32 scale per row)
    model_class: str

    @property
    def embedding_params(self) -> int:
        return self.n_params - sum(self.block_params) - self.top_extra_params

    def top_params(self, k: int) -> int:
        """Trainable parameters of a top-k fine-tuned tower: the last k blocks and what sits above them."""
        return sum(self.block_params[self.n_layers - k:]) + self.top_extra_params


def meta_model(config):
    """Instantiate ``AutoModel`` for ``config`` with no storage (the class extraction loads)."""
    import torch
    from transformers import AutoModel

    from tcf.encoders.hf import quiet_transformers

    with torch.device("meta"), quiet_transformers():
        return AutoModel.from_config(config)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _blocks(model, n_layers: int):
    """The ModuleList holding the transformer blocks: the largest list of ``n_layers`` modules."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    if not lists:
        raise TcfError(f"{type(model).__name__}: no list of {n_layers} blocks found; cannot plan per layer")
    return max(lists, key=count_params)


def _top_extra(model) -> int:
    from tcf.encoders.hf import FINAL_NORMS

    total = 0
    for owner in (model, getattr(model, "decoder", None), getattr(model, "model", None)):
        for attr in (*FINAL_NORMS, "project_out"):
            mod = getattr(owner, attr, None) if owner is not None else None
            if mod is not None and hasattr(mod, "parameters"):
                total += count_params(mod)
    return total


def measure(config, keep: int | None = None) -> Arch:
    """Count everything the plan needs on a meta-device instance of ``config`` (exact, no memory).

    With ``keep``, the model layer-range loading builds for hidden states at layer ``keep``:
    the first ``keep`` blocks and no final norm / output projection, made exactly as the hf
    backend makes it (config cut, final norm dropped), so the counts match what it loads.
    """
    import copy

    from tcf.encoders.hf import drop_final_norm, text_config, truncate_config

    if keep is not None:
        config = copy.deepcopy(config)
        truncate_config(config, keep)
    model = meta_model(config)
    if keep is not None:
        drop_final_norm(model)
    tc = text_config(config)
    n_layers = int(tc.num_hidden_layers)
    blocks = _blocks(model, n_layers) if n_layers else []
    hidden = int(tc.hidden_size)
    project_out = getattr(getattr(model, "decoder", None), "project_out", None)
    linear_weights, linear_rows = _linears(model)
    ffn = next((int(v) for v in (getattr(tc, a, None) for a in ("intermediate_size", "ffn_dim", "n_inner")) if v),
               4 * hidden)
    return Arch(n_params=count_params(model), n_layers=n_layers, hidden=hidden,
                out_dim=int(project_out.out_features) if project_out is not None else hidden, ffn=ffn,
                heads=int(tc.num_attention_heads), block_params=tuple(count_params(b) for b in blocks),
                top_extra_params=_top_extra(model), linear_weights=linear_weights, linear_rows=linear_rows,
                model_class=type(model).__name__)


def _linears(model) -> tuple[int, int]:
    """(weight elements, output rows) of the layers bitsandbytes replaces: nn.Linear and GPT-2's Conv1D."""
    import torch
    from transformers.pytorch_utils import Conv1D

    weights = rows = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, Conv1D)):
            weights += m.weight.numel()
            rows += m.weight.shape[0] if isinstance(m, torch.nn.Linear) else m.weight.shape[1]
    return weights, rows


# ---------------------------------------------------------------- bytes: weights, cache files

def weight_bytes(arch: Arch, precision: str, dtype: str = "bf16") -> int:
    """Bytes of the weight tensors (exact; allocator padding excluded).

    int8 (bitsandbytes LLM.int8): Linear weights 1 byte each + one fp32 scale per output row.
    int4 (nf4, no double quantization, as the hf backend loads it): 0.5 byte + one fp32 absmax per
    64 weights.  Everything else (embeddings, norms, biases) stays in ``dtype``.
    """
    if precision in DTYPE_BYTES:
        return arch.n_params * DTYPE_BYTES[precision]
    rest = (arch.n_params - arch.linear_weights) * DTYPE_BYTES[dtype]
    if precision == "int8":
        return arch.linear_weights + 4 * arch.linear_rows + rest
    if precision == "int4":
        return arch.linear_weights // 2 + 4 * -(-arch.linear_weights // 64) + rest
    raise ConfigError(f"precision must be one of fp32, bf16, fp16, int8, int4, got {precision!r}")


def npy_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Size of the file ``np.save`` writes for an array of ``shape`` and ``dtype`` (header included)."""
    import numpy as np

    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    n = 1
    for s in shape:
        n *= s
    return len(buf.getvalue()) + n * np.dtype(dtype).itemsize


def cache_files(n_items: int, tokens: int, out_dim: int, hidden: int) -> dict:
    """The cache entry files for a dataset of ``n_items`` (row 0 is the padding item), exactly."""
    rows = n_items + 1
    pooled = {"vectors.npy": npy_bytes((rows, out_dim), "float32")}
    states = {"states.npy": npy_bytes((rows, tokens, hidden), "float16"), "mask.npy": npy_bytes((rows, tokens), "int8")}
    return {"pooled": {"files": pooled, "bytes": sum(pooled.values()), "storage": "fp32", "shape": [rows, out_dim]},
            "tokens": {"files": states, "bytes": sum(states.values()), "storage": "fp16",
                       "shape": [rows, tokens, hidden],
                       # storage auto keeps states that exceed fp16's range (Gemma's) in fp32
                       "bytes_if_fp32": sum(states.values()) + npy_bytes((rows, tokens, hidden), "float32")
                       - states["states.npy"]}}


# ---------------------------------------------------------------- activations (estimates)

def inference_activation_bytes(arch: Arch, batch: int, tokens: int, act_bytes: int) -> int:
    """Peak transient memory of one forward batch without autograd (ESTIMATE).

    One block is alive at a time: residual and normed input (2d), q, k, v and attention
    output (4d), the MLP's hidden and activated states (2 ffn) per token, plus eager
    attention's scores and probabilities (2 x heads x T^2 per text; sdpa / flash attention
    do not materialise them), plus the fp32 copy of the output handed back.
    """
    bt = batch * tokens
    return act_bytes * (bt * (6 * arch.hidden + 2 * arch.ffn) + 2 * batch * arch.heads * tokens**2) + bt * arch.hidden * 4


def training_layer_activation_bytes(arch: Arch, batch: int, tokens: int) -> int:
    """Activations autograd keeps for one block in 16-bit training (ESTIMATE, an upper bound).

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models", eq. 1): s b h (34 + 5 a s / h) bytes, with dropout masks and eager attention;
    written here with the MLP width as a parameter: s b (18 d + 4 ffn) + 5 a s^2 b.
    tests/test_planner.py measures what autograd really saves for OPT blocks (0.66-0.93x of it).
    The fallback of item_activations for models whose code does not run on the meta device:
    it does not know the MLP's activation (GPT-2's gelu_new keeps 2.5x what OPT's ReLU does).
    """
    sb = batch * tokens
    return sb * (18 * arch.hidden + 4 * arch.ffn) + 5 * arch.heads * tokens * sb


# ---------------------------------------------------------------- fine-tuning: what one training step runs

FINETUNE_LOSSES = ("inbatch", "bce", "ce")
STEP_SAMPLES = 200  # training steps drawn to find the largest (a dataset's epoch, or its first 200 steps)


@dataclass(frozen=True)
class StepItems:
    """How many item texts one ``tcf train`` step runs the top k blocks over, and the loss's logits.

    ``tcf.models.lm_tower.step_items`` runs the blocks once over the distinct items of the
    step's input and label sequences (``train.batch_size`` windows of up to ``max_len + 1``
    items each): far more texts than windows.  ``bce`` looks its negatives up outside that
    set (one more pass over them); ``ce`` scores every item (the whole catalogue, every step).
    """

    items: int  # sized for: the largest sampled step (or the bound)
    mean: float  # the average sampled step
    positions: int  # label positions of that step: rows of the loss's logits
    candidates: int  # columns of the loss's logits (inbatch: distinct labels; ce: every item + padding)
    how: str  # 'sampled' (steps drawn from the dataset as tcf train draws them) | 'bound' (no interactions known)
    steps: int  # steps sampled (0 for a bound)


def step_bound(batch: int, max_len: int, loss: str, n_items: int | None) -> StepItems:
    """Without interactions: every item of every window distinct (an upper bound), capped by the catalogue."""
    def cap(n: int) -> int:
        return min(n, n_items) if n_items else n

    positions = batch * max_len
    items = cap(batch * (max_len + 1)) + (cap(positions) if loss == "bce" else 0)
    if loss == "ce":
        items += n_items or 0
    candidates = (n_items or 0) + 1 if loss == "ce" else cap(positions)
    return StepItems(items, float(items), positions, candidates, "bound", 0)


def sample_steps(dataset, batch: int, max_len: int, loss: str, seed: int = 0) -> StepItems:
    """Draw steps as ``tcf train`` does (``SeqData.windows`` in the permutation of epoch 0 with ``seed``, cut in
    ``batch`` windows per process) and count the texts each runs through the top blocks (see StepItems)."""
    import numpy as np

    from tcf.run.seqdata import SeqData

    data = SeqData(dataset)
    windows = data.windows(max_len)
    perm = windows[np.random.default_rng(seed).permutation(len(windows))]
    negatives = np.random.default_rng(seed)
    steps = []  # (items, positions, candidates) per step
    for start in range(0, len(perm), batch)[:STEP_SAMPLES]:
        _, inputs, labels, _ = (t.numpy() for t in data.train_batch(perm[start:start + batch], max_len))
        y = labels[labels != 0]
        items = len(np.union1d(inputs[inputs != 0], y))
        if loss == "bce":  # drawn uniformly (outside the user's items, which changes little)
            items += len(np.unique(negatives.integers(1, data.n_items + 1, len(y))))
        if loss == "ce":
            items += data.n_items
        steps.append((items, len(y), data.n_items + 1 if loss == "ce" else len(np.unique(y))))
    if not steps:
        raise ConfigError(f"{dataset.path}: no training windows (every user has fewer than 4 interactions)")
    items, positions, candidates = max(steps)
    return StepItems(items, float(np.mean([s[0] for s in steps])), positions, candidates, "sampled", len(steps))


@dataclass(frozen=True)
class ItemActivations:
    """Bytes autograd keeps for backward per item text of ``tokens`` tokens in a fine-tuning step's forward.
    Everything saved has the texts as its leading dimension, so a step keeps ``items`` times these."""

    per_block: int  # one of the top k blocks
    above: int  # above the blocks: final norm, project_out, pooling, L2 normalisation
    block_input: int  # the hidden states entering one block (what gradient checkpointing keeps per block)
    measured: bool  # True: counted running the model's own code on the meta device; False: closed form


def item_activations(config, arch: Arch, tokens: int, dtype: str, pooling: str = "mean",
                     attention_dropout: float | None = None, lora: tuple | None = None) -> ItemActivations:
    """Per-text activations: measured on the meta device (top_saved_bytes, one text) where the model's code
    runs there, else the closed form (Korthikanti et al.)."""
    block_input = tokens * arch.hidden * DTYPE_BYTES[dtype]
    try:
        top1 = top_saved_bytes(config, 1, 1, tokens, dtype, pooling, attention_dropout, lora)
        top2 = (top_saved_bytes(config, 2, 1, tokens, dtype, pooling, attention_dropout, lora) if arch.n_layers > 1
                else 2 * top1)
    except Exception:  # noqa: BLE001 - code that does not run on meta, or a model tcf train refuses: closed form
        per_block = training_layer_activation_bytes(arch, 1, tokens) * DTYPE_BYTES[dtype] // 2
        return ItemActivations(per_block, 0, block_input, False)
    return ItemActivations(top2 - top1, 2 * top1 - top2, block_input, True)


def top_saved_bytes(config, k: int, items: int, tokens: int, dtype: str, pooling: str = "mean",
                    attention_dropout: float | None = None, lora: tuple | None = None) -> int:
    """Bytes autograd saves when the top ``k`` blocks of ``config`` (and what sits above them) run forward in
    training over ``items`` texts of ``tokens`` tokens, then pooling: counted, not estimated.

    The top model is built as ``tcf train`` builds it (``load_top_layers``: the top k blocks, the
    embeddings replaced by pass-throughs) on the meta device, so its own code runs on tensors with a
    shape and no storage; every tensor it saves for backward is counted once per storage.  The mask
    is handed over prepared ([items, 1, T, T]) so no mask code needs data.  Checked on an H200
    (bf16, OPT-125m-wide blocks, 770 texts x 32 tokens): 0.98x what a real step saves with sdpa
    attention, 0.92x with eager; tests/test_planner_step_memory.py checks a CPU step.
    ``attention_dropout``: set on configs that have one (the llm head sets it from ``model.dropout``; its masks
    are saved too); None keeps the checkpoint's own.  ``lora``: (rank, alpha, dropout) adapters on every linear
    map of the blocks, the base frozen (``model.llm_train: lora``): the adapters' dropped inputs and dropout
    masks are counted, the frozen maps' inputs are not.
    """
    import torch

    from tcf.encoders.hf import strip_embeddings, text_config, top_config, torch_dtype
    from tcf.encoders.pooling import l2_normalize, pool

    n = int(text_config(config).num_hidden_layers)
    top = top_config(config, n, k)
    if attention_dropout is not None and hasattr(text_config(top), "attention_dropout"):
        text_config(top).attention_dropout = attention_dropout
    model = meta_model(top).to(torch_dtype(dtype))
    kind = strip_embeddings(model)  # ConfigError: tcf train cannot fine-tune this model
    if lora is not None:
        from tcf.models.lm_tower import add_lora

        with torch.device("meta"):
            add_lora(model, *lora)  # fp32 adapters beside the frozen base, as tcf train builds them
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    model.train()
    # a storage's identity: on meta every data_ptr() is 0, _cdata is the address of the storage object
    weights = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            saved[storage._cdata] = storage.nbytes()
        return t

    meta = {"device": "meta"}
    states = torch.empty(items, tokens, int(text_config(config).hidden_size), dtype=torch_dtype(dtype), **meta)
    kw = {"inputs_embeds": states, "attention_mask": torch.zeros(items, 1, tokens, tokens, dtype=states.dtype, **meta)}
    if kind == "decoder":
        kw["position_ids"] = torch.zeros(items, tokens, dtype=torch.long, **meta)
    mask = torch.ones(items, tokens, dtype=torch.long, **meta)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        l2_normalize(pool(model(**kw).last_hidden_state, mask, pooling))
    return sum(saved.values())


def finetune_bytes(arch: Arch, k: int, item: ItemActivations, step: StepItems, checkpointing: bool,
                   dtype: str = "bf16") -> dict:
    """Memory of one training step of the top ``k`` blocks on cached layer L-k states (the lower blocks never
    run): weights, gradients and AdamW states, and the activations of ``step.items`` texts plus the loss's
    logits (an fp32 log-softmax output and a bool mask, [positions, candidates]).

    In bf16 / fp16 the trainable weights are fp32 masters run under autocast (``lm_tower.master_weights``):
    the matmuls keep their low-precision copies of the weights for backward too (one block's at a time
    with gradient checkpointing); ``weight_copies`` says how much of ``activations`` that is (DeepSpeed
    holds the weights in bf16 itself: its options count the gathered block instead).
    """
    params = arch.top_params(k)
    copies = 0
    if dtype != "fp32":
        copies = DTYPE_BYTES[dtype] * (max(arch.block_params, default=0) if checkpointing else params)
    if checkpointing:  # each block's input kept, one block recomputed at a time during backward
        blocks = k * item.block_input + item.per_block
    else:
        blocks = k * item.per_block
    acts = step.items * (blocks + item.above) + step.positions * step.candidates * 5 + copies
    return {"trainable_params": params, "weights_grads_adamw": params * ADAMW_BYTES_PER_PARAM, "activations": acts,
            "weight_copies": copies, "total": params * ADAMW_BYTES_PER_PARAM + acts}


def flops_per_token(arch: Arch, tokens: int, n_params: int | None = None) -> int:
    """Forward FLOPs per token (ESTIMATE): 2 x non-embedding parameters + attention (2 x 2 x L x T x d)."""
    n = (n_params if n_params is not None else arch.n_params) - arch.embedding_params
    return 2 * n + 4 * len(arch.block_params) * tokens * arch.hidden


# ---------------------------------------------------------------- the llm head: a user LM over item vectors

def llm_trainable(arch: Arch, n: int, train: str, lora: int) -> int:
    """Trainable parameters of the llm head's user LM (bottom ``n`` blocks + final norm) under ``model.llm_train``;
    ``lora``: the adapters' parameter count (lora_params)."""
    from tcf.models.llm_head import parse_train

    mode, k = parse_train(train)
    bottom = sum(arch.block_params[:n]) + arch.top_extra_params
    return {"full": bottom, "frozen": 0, "lora": lora,
            "top": sum(arch.block_params[max(n - k, 0):n]) + arch.top_extra_params}[mode]


def lora_params(config, n: int, r: int) -> int:
    """Parameters of rank-``r`` LoRA adapters on every linear map of the bottom ``n`` blocks (meta device)."""
    import copy

    import torch

    from tcf.encoders.hf import truncate_config

    config = copy.deepcopy(config)
    truncate_config(config, n)
    model = meta_model(config)
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.startswith("layers."))


def llm_head_bytes(config, n: int, *, train: str = "full", batch: int = 256, max_len: int = 50, dim: int = 64,
                   dtype: str = "fp32", checkpointing: bool = False, lora_r: int = 8, lora_alpha: int = 16,
                   lora_dropout: float = 0.05, dropout: float = 0.0) -> dict:
    """Memory of one training step of the llm head's user LM (``model.head: llm``), as finetune_bytes sizes the
    item tower's: its weights (frozen ones in ``dtype``, trainable ones fp32 masters with gradients and AdamW
    states), the two projections to and from ``model.dim``, and the activations of ``batch`` sequences of
    ``max_len`` item vectors through all n blocks (the input always wants gradients: the projection and the
    item tower below train, so frozen blocks keep theirs too; an over-estimate for them, since a frozen linear map
    keeps no input).  Per-sequence activations are measured on the
    meta device as the item tower's per-text ones are (item_activations, tokens = max_len), with ``dropout``
    (``model.dropout``) as the blocks' attention dropout, plus the input dropout's mask.  In bf16 / fp16 the
    trainable weights are fp32 masters under autocast, whose low-precision copies are kept for backward
    (``weight_copies``, counted in ``activations``; one block's at a time with gradient checkpointing), as
    finetune_bytes counts them for the item tower."""
    arch = measure(config)
    n = n or arch.n_layers
    params = sum(arch.block_params[:n]) + arch.top_extra_params  # the LM's bottom n blocks and final norm
    lm = llm_trainable(arch, n, train, lora_params(config, n, lora_r) if train == "lora" else 0)
    frozen = params - (0 if train == "lora" else lm)  # LoRA adds its adapters beside the frozen base
    trainable = lm + 2 * dim * arch.hidden + dim + arch.hidden  # + Linear(dim, H) and Linear(H, dim)
    seq = item_activations(config, arch, max_len, dtype, attention_dropout=dropout,
                           lora=(lora_r, lora_alpha, lora_dropout) if train == "lora" else None)
    if checkpointing:  # each block's input kept, one block recomputed at a time in backward
        acts = batch * (n * seq.block_input + seq.per_block + seq.above)
    else:
        acts = batch * (n * seq.per_block + seq.above)
    if dropout > 0:  # the input dropout's mask over the projected item vectors, one byte an element
        acts += batch * max_len * arch.hidden
    copies = 0
    if dtype != "fp32":
        per_block = lm if train == "lora" else max(arch.block_params[:n], default=0)
        copies = DTYPE_BYTES[dtype] * (min(lm, per_block) if checkpointing else lm)
    acts += copies
    states = frozen * DTYPE_BYTES[dtype] + trainable * ADAMW_BYTES_PER_PARAM
    return {"blocks": n, "params": params, "trainable_params": trainable, "frozen_weights": frozen * DTYPE_BYTES[dtype],
            "weights_grads_adamw": trainable * ADAMW_BYTES_PER_PARAM, "activations": acts, "weight_copies": copies,
            "total": states + acts, "activations_measured": seq.measured}


def llm_head_plan(model: str, *, layers: int = 0, train: str = "full", batch: int = 256, max_len: int = 50,
                  dim: int = 64, dtype: str = "fp32", lora_r: int = 8, lora_alpha: int = 16,
                  lora_dropout: float = 0.05, dropout: float = 0.0, hw: Hardware | None = None) -> dict:
    """``tcf plan --llm-layers N``: the llm head's user LM (``model`` as ``model.llm_model``), sized with and
    without gradient checkpointing (see llm_head_bytes); with ``hw``, the ways to train it there, as for the
    item tower's fine-tuning (``job``)."""
    config, _ = load_config(model)
    if dtype == "fp16":  # model.llm_dtype has no fp16 (it would need loss scaling): what it would run is bf16
        dtype = "bf16"
    kw = dict(batch=batch, max_len=max_len, dim=dim, dtype=dtype, lora_r=lora_r, lora_alpha=lora_alpha,
              lora_dropout=lora_dropout, dropout=dropout)
    out = {"settings": {"llm_layers": layers, "llm_train": train, "batch": batch, "max_len": max_len, "dim": dim,
                        "dtype": dtype, "dropout": dropout},
           "step": llm_head_bytes(config, layers, train=train, **kw),
           "step_checkpointing": llm_head_bytes(config, layers, train=train, checkpointing=True, **kw)}
    if hw is not None:
        out["job"] = _llm_head_job(model, config, hw, layers, train, out, kw)
    return out


def _llm_head_job(model: str, config, hw: Hardware, layers: int, train: str, sized: dict, kw: dict) -> dict:
    """One device as asked, then with gradient checkpointing, then (for ``full``) LoRA with checkpointing: the
    first that fits is chosen, with the ``tcf train`` settings that run it.  The user LM trains on one device
    (several processes under DDP each hold all of it, with ``train.batch_size`` per process)."""
    n, where = hw.n_gpus, "GPU" if hw.n_gpus else "CPU"
    cands = [(f"one {where}, llm_train={train}", sized["step"], train, False),
             (f"one {where}, llm_train={train}, gradient checkpointing", sized["step_checkpointing"], train, True)]
    if train == "full":
        cands.append((f"one {where}, llm_train=lora (rank {kw['lora_r']}), gradient checkpointing",
                      llm_head_bytes(config, layers, train="lora", checkpointing=True, **kw), "lora", True))
    opts = []
    for name, need, mode, ckpt in cands:
        opt = Option(name, need["total"] if n else 0, 0 if n else need["total"], min(n, 1),
                     "adapters only: not the model that full fine-tuning trains" if mode != train else "", "")
        opts.append((opt, mode, ckpt))
    chosen = next(((o, m, c) for o, m, c in opts if fits(o, hw)), None)
    out = {"job": f"train the llm head's user LM ({model}, bottom {sized['step']['blocks']} blocks, {kw['batch']} "
                  f"sequences of {kw['max_len']} items per step, {kw['dtype']})",
           "options": [{"name": o.name, "per_gpu_bytes": o.per_gpu, "cpu_bytes": o.cpu, "fits": fits(o, hw),
                        "note": o.note} for o, _, _ in opts],
           "chosen": chosen and chosen[0].name,
           "note": "the user LM and its two projections only: the item tower below it and the loss's logits are "
                   "sized by the lines above (CONFIG is the run's experiment file)"}
    if chosen is None:
        out["why_not"] = (f"the user LM cannot be trained on {hw.describe()} at --batch {kw['batch']}: lower "
                          "--batch, --llm-layers or --max-len, or freeze more of it (--llm-train top:K)")
    else:
        _, mode, ckpt = chosen
        sets = ["model.head=llm", f"model.llm_model={model}", f"model.llm_layers={layers}", f"model.llm_train={mode}",
                f"model.llm_dtype={kw['dtype']}", f"model.dim={kw['dim']}", f"model.max_len={kw['max_len']}",
                f"model.dropout={kw['dropout']:g}", f"train.batch_size={kw['batch']}",
                f"train.grad_checkpointing={str(ckpt).lower()}"]
        if mode == "lora":
            sets += [f"model.lora_r={kw['lora_r']}", f"model.lora_alpha={kw['lora_alpha']}",
                     f"model.lora_dropout={kw['lora_dropout']:g}"]
        out["command"] = f"tcf train --config CONFIG --set {' '.join(sets)}"
        out["command_note"] = ("model.dropout, model.lora_* and train.grad_checkpointing also act on a fine-tuned or "
                               "LoRA item tower, sized by the lines above")
    return out


def render_llm_head(h: dict) -> list[str]:
    s, f0, f1 = h["settings"], h["step"], h["step_checkpointing"]
    return [f"llm head   user LM: bottom {f0['blocks']} blocks ({f0['params']:,} parameters), llm_train={s['llm_train']}: "
            f"{f0['trainable_params']:,} trainable with the projections, weights+grads+AdamW "
            f"{_gib(f0['weights_grads_adamw'])} + frozen {_gib(f0['frozen_weights'])} (exact); activations "
            f"{_gib(f0['activations'])} ({_gib(f1['activations'])} with gradient checkpointing) for {s['batch']} "
            f"sequences x {s['max_len']} items in {s['dtype']} (estimate); total {_gib(f0['total'])} "
            f"({_gib(f1['total'])})"]


# ---------------------------------------------------------------- strategies

@dataclass(frozen=True)
class Option:
    name: str
    per_gpu: int  # bytes needed on each GPU (0 = CPU only)
    cpu: int  # bytes needed in CPU memory
    gpus: int  # GPUs used
    note: str
    flags: str  # tcf extract flags that select it
    launcher: str = ""  # prefix: torchrun / env
    parallel: int = 1  # devices working at once (data or tensor parallel); sharding by layers works one at a time


def extraction_options(arch: Arch, hw: Hardware, job: dict, dtype: str) -> list[Option]:
    """Every way to run one extraction job, in the order tcf prefers them (same vectors first)."""
    B, T, n = job["batch"], job["tokens"], hw.n_gpus
    act16 = inference_activation_bytes(arch, B, T, 2)
    w = {p: weight_bytes(arch, p, dtype) for p in ("fp32", dtype, "int8", "int4")}
    if n == 0:
        act32 = inference_activation_bytes(arch, B, T, 4)
        cpu = [Option("fp32 on CPU", 0, w["fp32"] + act32, 0, "fastest precision on CPU (bf16 and "
                       "bitsandbytes were slower on the 2-core machine, benchmarks/README.md)", "--dtype fp32 --device cpu"),
                Option(f"{dtype} on CPU", 0, w[dtype] + act16, 0, "half the memory of fp32",
                       f"--dtype {dtype} --device cpu"),
                Option("int8 on CPU", 0, w["int8"] + act16, 0, "bitsandbytes; vectors change (benchmarks/README.md)",
                       f"--dtype {dtype} --quantization int8 --device cpu"),
                Option("int4 on CPU", 0, w["int4"] + act16, 0, "bitsandbytes nf4; vectors change most",
                       f"--dtype {dtype} --quantization int4 --device cpu")]
        return [o for i, o in enumerate(cpu) if i == 0 or o.name != cpu[0].name]  # --dtype fp32: listed once
    tp = _tensor_parallel(arch, hw, w[dtype], act16)
    per_block = max(arch.block_params, default=0) * DTYPE_BYTES[dtype]
    embed = arch.embedding_params * DTYPE_BYTES[dtype]
    dp = f"torchrun --nproc-per-node {n} -m tcf.cli" if n > 1 else ""
    # GPU options read the checkpoint shard by shard straight to the GPUs: little CPU memory
    opts = [Option(f"{dtype} on one GPU" + (f", data parallel over {n}" if n > 1 else ""), w[dtype] + act16,
                   0, n, "every GPU holds the whole model; items are split across processes",
                   f"--dtype {dtype}", dp, max(n, 1))]
    if job["kind"] == "pooled" and tp:
        opts.append(Option(f"vLLM tensor parallel {tp}", -(-w[dtype] // tp) + act16, 0, tp,
                           "final-layer pooled vectors only", f"--backend vllm --dtype {dtype}",
                           f"TCF_VLLM_TP={tp}", tp))
    if n > 1:
        opts.append(Option(f"{dtype}, device_map sharding over {n}", -(-w[dtype] // n) + act16, 0, n,
                           "accelerate splits the blocks across GPUs; one GPU works at a time",
                           f"--dtype {dtype} --device-map auto"))
    for q in ("int8", "int4"):
        opts.append(Option(f"{q} on one GPU", w[q] + act16, 0, 1, "bitsandbytes; vectors change "
                           "(benchmarks/README.md measures by how much)", f"--dtype {dtype} --quantization {q}"))
        if n > 1:
            opts.append(Option(f"{q}, device_map sharding over {n}", -(-w[q] // n) + act16, 0, n,
                               "bitsandbytes; vectors change", f"--dtype {dtype} --quantization {q} --device-map auto"))
    opts.append(Option(f"DeepSpeed ZeRO-3, CPU offload, {n} GPU(s)", max(2 * per_block, embed) + act16, w[dtype], n,
                       "weights live in CPU memory and stream through the GPUs layer by layer (slow: PCIe-bound); "
                       "every process runs every item", f"--backend deepspeed --dtype {dtype} --set zero_stage=3 "
                       "offload=true", f"torchrun --nproc-per-node {n} -m tcf.cli"))
    return opts


def _tensor_parallel(arch: Arch, hw: Hardware, weights: int, act: int) -> int | None:
    """The smallest power-of-two tensor-parallel size (dividing the heads) whose weight slice fits a GPU."""
    tp = 1
    while tp <= hw.n_gpus:
        if arch.heads % tp == 0 and -(-weights // tp) + act <= hw.gpu_usable:
            return tp
        tp *= 2
    return None


def fits(opt: Option, hw: Hardware) -> bool:
    return opt.per_gpu <= hw.gpu_usable and opt.cpu <= hw.cpu_usable and opt.gpus <= hw.n_gpus


def finetune_options(arch: Arch, hw: Hardware, job: dict) -> list[dict]:
    """Top-k fine-tuning on the layer L-k cache: one device, checkpointing, or ZeRO-3 (with optimizer offload),
    each with the ``tcf train`` settings that run it."""
    k, n = job["k"], hw.n_gpus
    plain, ckpt = (finetune_bytes(arch, k, job["item"], job["step"], c, job["dtype"]) for c in (False, True))
    states = plain["weights_grads_adamw"]
    opts = []
    where = "GPU" if n else "CPU"
    for label, need, sets in (("", plain, {}), (" with gradient checkpointing", ckpt, {"grad_checkpointing": True})):
        opt = Option(f"one {where}{label}", need["total"] if n else 0, 0 if n else need["total"], min(n, 1),
                     "", "")
        opts.append({"option": opt, "train": sets})
    zero3 = {"grad_checkpointing": True, "strategy": "deepspeed", "zero_stage": 3}
    acts = ckpt["activations"] - ckpt["weight_copies"]
    if n > 1:
        shard = states // n + acts
        opts.append({"option": Option(f"DeepSpeed ZeRO-3 over {n} GPUs, gradient checkpointing", shard, 0, n,
                                      "weights, gradients and AdamW states partitioned", ""), "train": zero3})
    if n:
        # AdamW moments and fp32 master weights move to CPU memory (ZeRO-Offload); weights and gradients stay
        # partitioned on the GPUs, one block at a time gathered whole
        gather = 2 * max(arch.block_params[arch.n_layers - k:], default=0) * 2
        per_gpu = acts + states // (2 * n) + gather
        opts.append({"option": Option(f"DeepSpeed ZeRO-3 over {n} GPU(s), AdamW states offloaded to CPU", per_gpu,
                                      states, n, "AdamW steps run on the CPU (slow)", ""),
                     "train": {**zero3, "offload": True}})
    return opts


def finetune_command(k: int, n_gpus: int, train: dict, max_len: int, dtype: str) -> str:
    """The ``tcf train`` command line of one fine-tuning option (CONFIG: the run's experiment file).  It sets
    what the memory was sized for, whatever CONFIG says: loss, batch size, sequence length, and the dtype of
    the top blocks (fp32 weights under bf16 autocast keep ~1.4x the activations of bf16 weights on an H200)."""
    sets = ["model.tower=finetune", f"model.finetune_layers={k}", f"model.max_len={max_len}", f"encoder.dtype={dtype}",
            *(f"train.{key}={str(v).lower() if isinstance(v, bool) else v}" for key, v in train.items())]
    launch = f"torchrun --standalone --nproc-per-node {n_gpus} -m tcf" if train.get("strategy") else "tcf"
    return f"{launch} train --config CONFIG --set {' '.join(sets)}"


def train_deepspeed_config(train: dict) -> dict:
    """The DeepSpeed config ``tcf train`` builds for these ``train.*`` settings on CUDA (tcf/train/distributed.py);
    ``train_micro_batch_size_per_gpu`` is the config's ``train.batch_size`` (the default shown)."""
    import torch

    from tcf.run.config import TrainConfig
    from tcf.train.distributed import zero_config

    return zero_config(TrainConfig(**train), torch.device("cuda"))


# ---------------------------------------------------------------- the plan

def plan(model: str, hw: Hardware, *, items: int | None = None, tokens: int = 64, batch: int = 64,
         finetune_layers: int = 2, dtype: str = "bf16", dataset: str | None = None,
         tflops: float | None = None, loss: str = "inbatch", max_len: int = 50) -> dict:
    """Everything ``tcf plan`` reports, as one JSON-ready dict (exact and estimated numbers marked).

    ``batch``: texts per extraction forward, and ``train.batch_size`` (windows per step) for fine-tuning;
    ``loss`` and ``max_len``: the fine-tuning run's ``train.loss`` and ``model.max_len``.
    """
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"--dtype must be one of {list(DTYPE_BYTES)}, got {dtype!r}")
    if tokens < 1 or batch < 1 or max_len < 1:
        raise ConfigError("--tokens, --batch and --max-len must be >= 1")
    if loss not in FINETUNE_LOSSES:
        raise ConfigError(f"--loss must be one of {list(FINETUNE_LOSSES)}, got {loss!r}")
    ds = _load_dataset(dataset) if dataset is not None else None
    if ds is not None:
        items = ds.n_items
    config, source = load_config(model)
    arch = measure(config)
    k = finetune_layers
    if not 0 <= k <= arch.n_layers:
        raise ConfigError(f"--finetune-layers {k} is outside 0..{arch.n_layers} for {model} ({arch.n_layers} blocks)")
    cut = measure(config, keep=arch.n_layers - k) if k else arch
    ft = None
    if k:
        def steps(b: int) -> StepItems:
            return sample_steps(ds, b, max_len, loss) if ds is not None else step_bound(b, max_len, loss, items)

        ft = {"steps": steps, "step": steps(batch), "item": item_activations(config, arch, tokens, dtype),
              "loss": loss, "max_len": max_len, "dtype": dtype, "refused": finetune_refusal(config, loss, k)}
    out = {"model": model, "source": source, "model_class": arch.model_class, "hardware": dataclasses.asdict(hw),
           "hardware_text": hw.describe(), "settings": {"items": items, "tokens": tokens, "batch": batch,
                                                        "finetune_layers": k, "dtype": dtype, "loss": loss,
                                                        "max_len": max_len},
           "parameters": _parameters(arch, cut, k), "weights": _weights(arch, cut, dtype),
           "activations": _activations(arch, batch, tokens, k, dtype, ft)}
    size = opt_size(model)
    if size:
        out["parameters"]["published"] = _published(size, arch.n_params)
    out["cache"] = _cache(arch, items, tokens, k)
    jobs = [{"name": "extract pooled vectors (final layer)", "kind": "pooled", "arch": arch,
             "flags": f"--kind pooled --max-tokens {tokens} --batch-size {batch}"}]
    if k:
        jobs.append({"name": f"extract layer {arch.n_layers - k} token states (for top-{k} fine-tuning)",
                     "kind": "tokens", "arch": cut,
                     "flags": f"--kind tokens --layer {arch.n_layers - k} --max-tokens {tokens} --batch-size {batch}"})
    out["extraction"] = [_extraction_plan(j, hw, dtype, model, dataset, items, tokens, batch, tflops) for j in jobs]
    out["finetune"] = _finetune_plan(arch, hw, k, batch, tokens, ft) if k else None
    return out


def _load_dataset(path: str):
    from tcf.data import load_dataset

    return load_dataset(path, verify=False)


def finetune_refusal(config, loss: str, k: int) -> str | None:
    """Why ``tcf train`` would refuse this fine-tuning run (None: it runs it), checked as it checks."""
    from tcf.encoders.hf import strip_embeddings, text_config, top_config

    if loss == "ce":
        return (f"tcf train refuses train.loss=ce with a fine-tuned tower: it would run the top {k} blocks over "
                "the whole catalogue at every step (sized above); use --loss inbatch or bce")
    try:
        strip_embeddings(meta_model(top_config(config, int(text_config(config).num_hidden_layers), 1)))
    except ConfigError as e:
        return f"tcf train cannot fine-tune this model: {e}"
    return None


def _parameters(arch: Arch, cut: Arch, k: int) -> dict:
    return {"exact": True, "total": arch.n_params, "embeddings_and_other": arch.embedding_params,
            "blocks": arch.n_layers, "per_block": max(arch.block_params, default=0), "top_k_trainable": arch.top_params(k) if k
            else 0, "layer_range_loaded": cut.n_params, "hidden": arch.hidden, "pooled_dim": arch.out_dim,
            "ffn": arch.ffn, "heads": arch.heads}


def _published(size: str, count: int) -> dict:
    """How the exact count compares with the size the OPT paper names the model by (a rounded name)."""
    named = OPT_PUBLISHED[size]
    note = ("the released checkpoint embeds tokens in 512 dimensions and projects them to 1024, which the name "
            "does not reflect" if size == "350m" else "the names are rounded, as in GPT-3's Table 2.1")
    return {"name": size.upper(), "count": int(named), "relative_difference": (count - named) / named, "note": note}


def _weights(arch: Arch, cut: Arch, dtype: str) -> dict:
    precisions = ("fp32", "bf16", "int8", "int4")
    return {"exact": True, "note": "tensor bytes; CUDA context and allocator padding not included",
            "full": {p: weight_bytes(arch, p, dtype) for p in precisions},
            "layer_range": {p: weight_bytes(cut, p, dtype) for p in precisions}}


def _activations(arch: Arch, batch: int, tokens: int, k: int, dtype: str, ft: dict | None) -> dict:
    out = {"exact": False, "note": "extraction: a closed-form estimate (eager attention, an upper bound for sdpa / "
           "flash attention); fine-tuning: the bytes autograd saves, counted on the meta device for the step's "
           "items (see tcf/experiments/planner.py top_saved_bytes)",
           "extraction": inference_activation_bytes(arch, batch, tokens, DTYPE_BYTES[dtype])}
    if k:
        out["step"] = dataclasses.asdict(ft["step"])
        out["per_item"] = dataclasses.asdict(ft["item"])
        out["finetune"] = finetune_bytes(arch, k, ft["item"], ft["step"], False, dtype)
        out["finetune_checkpointing"] = finetune_bytes(arch, k, ft["item"], ft["step"], True, dtype)
    return out


def _cache(arch: Arch, items: int | None, tokens: int, k: int) -> dict:
    per_item = cache_files(1, tokens, arch.out_dim, arch.hidden)
    out = {"exact": True, "note": "bytes of the .npy files (row 0 = padding item); manifest.json not included",
           "per_item": {kind: v["bytes"] - cache_files(0, tokens, arch.out_dim, arch.hidden)[kind]["bytes"]
                        for kind, v in per_item.items()}}
    if items is not None:
        files = cache_files(items, tokens, arch.out_dim, arch.hidden)
        out["pooled"] = files["pooled"]
        if k:
            out["tokens"] = {**files["tokens"], "layer": arch.n_layers - k}
    return out


def _extraction_plan(job: dict, hw: Hardware, dtype: str, model: str, dataset: str | None, items: int | None,
                     tokens: int, batch: int, tflops: float | None) -> dict:
    arch = job["arch"]
    opts = extraction_options(arch, hw, {"kind": job["kind"], "batch": batch, "tokens": tokens}, dtype)
    chosen = next((o for o in opts if fits(o, hw)), None)
    out = {"job": job["name"], "loaded_parameters": arch.n_params,
           "options": [{"name": o.name, "per_gpu_bytes": o.per_gpu, "cpu_bytes": o.cpu, "gpus": o.gpus,
                        "fits": fits(o, hw), "note": o.note} for o in opts],
           "chosen": chosen.name if chosen else None}
    if chosen is None:
        short = min(opts, key=lambda o: max(o.per_gpu - hw.gpu_usable, o.cpu - hw.cpu_usable))
        out["why_not"] = (f"nothing fits {hw.describe()}; closest: {short.name} needs "
                          f"{_gib(short.per_gpu)} per GPU and {_gib(short.cpu)} CPU memory")
        return out
    ds = dataset or "DATASET"
    cmd = f"tcf extract --dataset {ds} --model {model} {job['flags']} {chosen.flags}"
    if chosen.launcher.endswith("tcf.cli"):
        cmd = f"{chosen.launcher} {cmd[len('tcf '):]}"
    elif chosen.launcher:
        cmd = f"{chosen.launcher} {cmd}"
    out["command"] = cmd
    if "deepspeed" in chosen.flags:
        from tcf.encoders.ds import zero3_config

        out["deepspeed_config"] = zero3_config(offload=True)
        out["deepspeed_note"] = "built by the deepspeed backend itself from zero_stage / offload (tcf/encoders/ds.py)"
    if items is not None:
        n_tok = items * tokens
        flops = flops_per_token(arch, tokens) * n_tok
        devices = chosen.parallel
        rate = (tflops or DEFAULT_TFLOPS["gpu" if hw.n_gpus else "cpu"]) * 1e12 * devices
        seconds = flops / rate
        if "offload" in chosen.flags:  # every batch streams all weights from CPU memory
            seconds = max(seconds, -(-items // batch) * weight_bytes(arch, dtype) / HOST_TO_GPU_BYTES_PER_S)
        out["time"] = {"exact": False, "flops": flops, "tokens_upper_bound": n_tok, "tflops_per_device": rate / 1e12
                       / devices, "devices_working": devices, "seconds": seconds,
                       "offload_bound": "offload" in chosen.flags}
    return out


def _finetune_plan(arch: Arch, hw: Hardware, k: int, batch: int, tokens: int, ft: dict) -> dict:
    step = ft["step"]
    opts = finetune_options(arch, hw, {"k": k, "item": ft["item"], "step": step, "dtype": ft["dtype"]})
    chosen = next((o for o in opts if fits(o["option"], hw)), None)
    how = {"sampled": f"the largest of {step.steps} steps drawn from the dataset as tcf train draws them "
                      f"(mean {step.mean:,.0f})",
           "bound": "an upper bound: every item of every sequence distinct; give --dataset to sample"}[step.how]
    out = {"job": f"fine-tune the top {k} of {arch.n_layers} blocks on the layer {arch.n_layers - k} cache "
                  f"({batch} sequences of up to {ft['max_len'] + 1} items per step, train.loss={ft['loss']}: "
                  f"{step.items:,} item texts x {tokens} tokens through the top blocks; {how})",
           "options": [{"name": o["option"].name, "per_gpu_bytes": o["option"].per_gpu, "cpu_bytes": o["option"].cpu,
                        "fits": fits(o["option"], hw), "note": o["option"].note} for o in opts],
           "chosen": None if ft["refused"] else chosen and chosen["option"].name,
           "note": "activations per process (train.batch_size is per process under DDP / DeepSpeed); the "
                   "recommender head (SASRec / DSSM) is not counted, the loss's logits are; CONFIG is the run's "
                   "experiment file"}
    if ft["refused"]:
        out["why_not"] = ft["refused"]
    elif chosen is None:
        out["why_not"] = f"the top {k} blocks cannot be trained on {hw.describe()} at --batch {batch}; " + \
            _smaller_batch(arch, hw, k, batch, ft)
    else:
        train = {"loss": ft["loss"], "batch_size": batch, **chosen["train"]}
        out["command"] = finetune_command(k, hw.n_gpus, train, ft["max_len"], ft["dtype"])
        if train.get("strategy") == "deepspeed":
            out["deepspeed_config"] = train_deepspeed_config(train)
            out["deepspeed_note"] = ("built by tcf train itself from train.zero_stage / train.offload / "
                                     "train.batch_size / train.grad_clip (tcf/train/distributed.py zero_config)")
    return out


def _smaller_batch(arch: Arch, hw: Hardware, k: int, batch: int, ft: dict) -> str:
    """The largest power-of-two fraction of ``batch`` whose step fits (in-batch negatives change with it)."""
    b = batch // 2
    while b >= 1:
        opts = finetune_options(arch, hw, {"k": k, "item": ft["item"], "step": ft["steps"](b), "dtype": ft["dtype"]})
        fit = next((o["option"].name for o in opts if fits(o["option"], hw)), None)
        if fit:
            return f"train.batch_size={b} fits ({fit}), or lower --finetune-layers"
        b //= 2
    return "not even one sequence per step fits; lower --finetune-layers or --tokens"


# ---------------------------------------------------------------- text

def _gib(n: float) -> str:
    if n >= 1024 * GiB:
        return f"{n / 1024**4:,.2f} TiB"
    if n >= GiB:
        return f"{n / GiB:,.2f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB"


def render(p: dict) -> str:
    """The plan as text for a terminal."""
    s, par, w, a = p["settings"], p["parameters"], p["weights"], p["activations"]
    lines = [f"model      {p['model']}  [{p['model_class']}; config from {p['source']}]",
             f"hardware   {p['hardware_text']}",
             (f"parameters {par['total']:,} (exact, meta device): {par['blocks']} blocks x {par['per_block']:,}, "
              f"embeddings and other {par['embeddings_and_other']:,}; hidden {par['hidden']}, ffn {par['ffn']}, "
              f"heads {par['heads']}"),
             *([f"           the OPT paper names it {pub['name']}: {pub['relative_difference']:+.2%} ({pub['note']})"]
               if (pub := par.get("published")) else []),
             "weights    (exact tensor bytes) " + ", ".join(f"{k} {_gib(v)}" for k, v in w["full"].items())]
    if s["finetune_layers"]:
        k = s["finetune_layers"]
        lines.append(f"           layer-range loading of the first {par['blocks'] - k} blocks: "
                     f"{par['layer_range_loaded']:,} parameters, " +
                     ", ".join(f"{q} {_gib(v)}" for q, v in w["layer_range"].items()))
    lines.append(f"activations (estimate) extraction, {s['batch']} texts x {s['tokens']} tokens in {s['dtype']}: "
                 f"{_gib(a['extraction'])}")
    if s["finetune_layers"]:
        f0, f1, st = a["finetune"], a["finetune_checkpointing"], a["step"]
        lines.append(f"           top-{s['finetune_layers']} fine-tuning: {f0['trainable_params']:,} trainable "
                     f"parameters, weights+grads+AdamW {_gib(f0['weights_grads_adamw'])} (exact), activations "
                     f"{_gib(f0['activations'])} ({_gib(f1['activations'])} with gradient checkpointing) for "
                     f"{st['items']:,} item texts x {s['tokens']} tokens per step of {s['batch']} sequences "
                     f"({'sampled from the dataset' if st['how'] == 'sampled' else 'upper bound'}, "
                     f"train.loss={s['loss']})")
    c = p["cache"]
    if "pooled" in c:
        lines.append(f"cache      (exact) pooled {c['pooled']['shape']} fp32: {_gib(c['pooled']['bytes'])}")
        if "tokens" in c:
            t = c["tokens"]
            lines.append(f"           layer {t['layer']} token states {t['shape']} fp16 + mask: {_gib(t['bytes'])}")
    else:
        lines.append(f"cache      (exact) per item: pooled {c['per_item']['pooled']:,} B, token states "
                     f"{c['per_item']['tokens']:,} B (give --items or --dataset for totals)")
    for e in p["extraction"]:
        lines += _render_job(e)
    if p["finetune"]:
        lines += _render_job(p["finetune"])
    if p.get("llm_head"):
        lines += render_llm_head(p["llm_head"])
        if p["llm_head"].get("job"):
            lines += _render_job(p["llm_head"]["job"])
    return "\n".join(lines)


def _render_job(e: dict) -> list[str]:
    lines = ["", f"{e['job']}:"]
    for o in e["options"]:
        need = f"{_gib(o['per_gpu_bytes'])}/GPU" if o["per_gpu_bytes"] else ""
        cpu = f"{_gib(o['cpu_bytes'])} CPU" if o["cpu_bytes"] else ""
        mark = "->" if o["name"] == e["chosen"] else ("ok" if o["fits"] else "  ")
        lines.append(f"  {mark} {o['name']:58s} {', '.join(x for x in (need, cpu) if x)}"
                     + (f"  ({o['note']})" if o.get("note") else ""))
    if e["chosen"] is None:
        lines.append(f"  NOT POSSIBLE: {e.get('why_not')}")
    if "command" in e:
        lines.append(f"  run: {e['command']}")
    if "command_note" in e:
        lines.append(f"  note: {e['command_note']}")
    if "time" in e:
        t = e["time"]
        lines.append(f"  time (estimate): {t['flops']:.3g} FLOPs over at most {t['tokens_upper_bound']:,} tokens, "
                     f"{t['seconds']:,.0f} s at {t['tflops_per_device']:g} TFLOP/s x {t['devices_working']} "
                     "(--tflops)" + (f"; bound by streaming the weights at {HOST_TO_GPU_BYTES_PER_S / 1e9:g} GB/s "
                                     "per batch" if t["offload_bound"] else ""))
    if "deepspeed_config" in e:
        lines.append("  DeepSpeed config: " + json.dumps(e["deepspeed_config"]))
    return lines
