"""One typed config per run, loaded from YAML with ``--set key=value`` overrides.

Unknown keys are rejected by name; the resolved config is written into every result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tcf.config import from_dict, load_yaml, merge, parse_overrides, to_dict
from tcf.encoders.base import EncoderSpec
from tcf.errors import ConfigError

HEADS = ("sasrec", "dssm")
TOWERS = ("id", "frozen", "id+text", "finetune", "lora")
LOSSES = ("ce", "inbatch", "bce")
STRATEGIES = ("none", "ddp", "deepspeed")
RANKERS = ("matmul", "faiss")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "ml-100k"  # a dataset folder, or a source name prepared under `root` on first use
    root: str = "data"
    template: str | None = None  # item text template for text towers (default: the dataset's)


@dataclass(frozen=True)
class ModelConfig:
    head: str = "sasrec"  # sasrec | dssm
    tower: str = "id"  # id | frozen | id+text | finetune (top k LM layers trained) | lora (adapters on them)
    dim: int = 64
    n_layers: int = 2  # sasrec blocks
    n_heads: int = 2
    dropout: float = 0.2
    max_len: int = 50  # the most recent items a user state looks at
    adapter_layers: int = 1  # frozen text: depth of the MLP adapter
    normalize_text: bool = True  # L2-normalise cached text vectors before the adapter
    fusion: str = "add"  # id+text: add | concat
    user_tower: str = "id"  # dssm: id | mean
    mlp_layers: int = 0  # dssm: MLP layers on each tower
    finetune_layers: int = 2  # finetune / lora: k, the top LM layers run (from cached states entering layer L-k)
    lora_r: int = 8  # lora: adapter rank
    lora_alpha: int = 16
    lora_dropout: float = 0.05

    def __post_init__(self):
        if self.head not in HEADS:
            raise ConfigError(f"model.head must be one of {list(HEADS)}, got {self.head!r}")
        if self.tower not in TOWERS:
            raise ConfigError(f"model.tower must be one of {list(TOWERS)}, got {self.tower!r}")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "ce"  # ce (full softmax) | inbatch (logQ-corrected, own items masked) | bce (one sampled negative)
    epochs: int = 200
    batch_size: int = 256  # training windows (sequences of up to max_len + 1 items) per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    logq: bool = True  # inbatch: subtract log popularity
    temperature: float = 1.0  # inbatch / ce logits are divided by it
    strategy: str = "none"  # none | ddp (torchrun) | deepspeed (ZeRO): see tcf/train/distributed.py
    zero_stage: int = 2  # deepspeed: ZeRO stage 1, 2 or 3
    offload: bool = False  # deepspeed: optimizer states in CPU memory (ZeRO-Offload)
    device: str = "auto"
    amp: bool = True  # bf16 autocast where the device supports it (CUDA)
    threads: int = 0  # torch threads on CPU (0 = leave as is)
    lm_lr: float = 1e-4  # finetune / lora: learning rate of the LM parameters (their own AdamW group)
    lm_weight_decay: float = 0.01
    grad_checkpointing: bool = False  # finetune / lora: recompute the LM layers' activations in backward

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if self.zero_stage not in (1, 2, 3):
            raise ConfigError(f"train.zero_stage must be 1, 2 or 3, got {self.zero_stage}")


@dataclass(frozen=True)
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    mask_history: bool = True  # the user's earlier items cannot be recommended (the TCF protocol)
    batch_users: int = 512
    ranker: str = "matmul"  # matmul (chunked, exact) | faiss (inner-product index over the item vectors)
    faiss_index: str = "flat"  # ranker faiss: flat (exact) | hnsw (approximate)
    bootstrap: int = 1000  # resamples for 95% CIs (0 = none)
    cold_max_count: int = 5  # a target with at most this many training interactions is "cold"
    history_buckets: list[int] = field(default_factory=lambda: [10, 50, 200])

    def __post_init__(self):
        if self.ranker not in RANKERS:
            raise ConfigError(f"eval.ranker must be one of {list(RANKERS)}, got {self.ranker!r}")
        if self.faiss_index not in ("flat", "hnsw"):
            raise ConfigError(f"eval.faiss_index must be flat or hnsw, got {self.faiss_index!r}")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 2020
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)  # text towers only
    cache_root: str = "embeddings_cache"
    cache_path: str | None = None  # use this existing cache entry instead of extracting (checked against the data)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    data = load_yaml(path) if path else {}
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(RunConfig, data)


def resolved(cfg: RunConfig) -> dict:
    return to_dict(cfg)
