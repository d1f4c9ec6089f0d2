"""One typed config per run, loaded from YAML with ``--set key=value`` overrides.

Unknown keys are rejected by name; the resolved config is written into every result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tcf import extensions
from tcf.config import flatten, from_dict, load_yaml, merge, parse_overrides, to_dict
from tcf.encoders.base import EncoderSpec
from tcf.errors import ConfigError
from tcf.extensions import LM_TOWERS, POOLED_TOWERS  # noqa: F401 - the tower groups, importable from here
from tcf.tracking import TrackingConfig

# the names of heads, towers and losses are listed once, in tcf.extensions (validation, --help and docs read them)
HEADS = extensions.HEADS.choices()
TOWERS = extensions.TOWERS.choices()
LOSSES = extensions.LOSSES.choices()
STRATEGIES = ("none", "ddp", "deepspeed")
RANKERS = ("matmul", "faiss")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "ml-100k"  # a dataset folder, or a source name prepared under `root` on first use
    root: str = "data"
    template: str | None = None  # item text template for text towers (default: the dataset's)
    source_options: dict = field(default_factory=dict)  # a source name: its options (prepared under root/NAME-HASH)


@dataclass(frozen=True)
class ModelConfig:
    head: str = "sasrec"  # sasrec | dssm | llm (HLLM-style user LM)
    tower: str = "id"  # id | frozen | id+text | finetune (top k LM layers trained) | lora (adapters on them)
    dim: int = 64
    n_layers: int = 2  # sasrec blocks
    n_heads: int = 2
    dropout: float = 0.2
    max_len: int = 50  # the most recent items a user state looks at
    adapter: str = "mlp"  # text towers' projection: mlp (Linear; deeper: Linear-GELU-...-Linear) | tcf (Linear-GELU per layer)
    adapter_layers: int = 1  # text towers: depth of the adapter
    normalize_text: bool = True  # L2-normalise cached text vectors before the adapter
    fusion: str = "add"  # id+text: add | concat
    user_tower: str = "id"  # dssm: id | mean
    mlp_layers: int = 0  # dssm: MLP layers on each tower
    finetune_layers: int = 2  # finetune / lora: k, the top LM layers run (from cached states entering layer L-k)
    lora_r: int = 8  # lora: adapter rank
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    llm_model: str = "smollm2-135m"  # llm head: the causal LM (zoo name, folder, hub name) that reads item vectors
    llm_init: str = "pretrained"  # llm head: pretrained weights | random (the same config, HLLM's ablation)
    llm_layers: int = 0  # llm head: only the bottom n blocks are loaded and run (0 = all)
    llm_train: str = "full"  # llm head: full | top:K (blocks below the top K frozen) | lora (model.lora_*) | frozen
    llm_dtype: str = "fp32"  # llm head: fp32 | bf16 weights (trained ones as fp32 masters under autocast)

    def __post_init__(self):
        extensions.HEADS.check(self.head, "model.head")
        extensions.TOWERS.check(self.tower, "model.tower")
        if self.adapter not in ("mlp", "tcf"):
            raise ConfigError(f"model.adapter must be mlp or tcf, got {self.adapter!r}")
        if self.llm_init not in ("pretrained", "random") or self.llm_dtype not in ("fp32", "bf16"):
            raise ConfigError(f"model.llm_init must be pretrained or random and model.llm_dtype fp32 or bf16 (fp16 "
                              f"would need loss scaling), got {self.llm_init!r}, {self.llm_dtype!r}")
        if not (self.llm_train in ("full", "frozen", "lora") or str(self.llm_train).startswith("top:")):
            raise ConfigError(f"model.llm_train must be full, frozen, lora or top:K, got {self.llm_train!r}")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "ce"  # ce (full softmax) | inbatch (logQ-corrected, own items masked) | bce (one negative outside the user's items)
    epochs: int = 200
    batch_size: int = 256  # training windows (sequences of up to max_len + 1 items) per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    min_epochs: int = 0  # no early stop before this many epochs (a plateau early in training; the best epoch is still chosen on validation)
    logq: bool = True  # inbatch: subtract the log of each candidate's probability of being in the step (logQ)
    gather_negatives: bool = True  # inbatch with ddp / deepspeed and > 1 process: negatives from every rank's labels
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
        extensions.LOSSES.check(self.loss, "train.loss")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if self.zero_stage not in (1, 2, 3):
            raise ConfigError(f"train.zero_stage must be 1, 2 or 3, got {self.zero_stage}")


MASK_RULES = ("all", "all_but_target", "none")


def mask_rule(value: str | bool) -> str:
    """``eval.mask_history`` as a named rule; the old booleans map true -> all, false -> none.

    ``all`` is the default because it never looks at the label: ``all_but_target`` exempts the
    target, so a repeat target is the only seen item left and a model that ranks seen items
    first gets it at rank 1.  See tcf/eval/ranking.py."""
    text = str(value).strip().lower()
    text = {"true": "all", "yes": "all", "on": "all", "1": "all", "false": "none", "no": "none", "off": "none",
            "0": "none"}.get(text, text)
    if text not in MASK_RULES:
        raise ConfigError(f"eval.mask_history must be one of {', '.join(MASK_RULES)} (or true = all, false = none), "
                          f"got {value!r}")
    return text


@dataclass(frozen=True)
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    # which earlier items cannot be recommended: all (default; repeat targets are misses) | all_but_target
    # (the TCF reference code: rewards repeats) | none.  Repeats are counted and sliced in every report.
    mask_history: str = "all"
    batch_users: int = 512
    ranker: str = "matmul"  # matmul (chunked, exact) | faiss (inner-product index over the item vectors)
    faiss_index: str = "flat"  # ranker faiss: flat (exact) | hnsw (approximate)
    bootstrap: int = 1000  # resamples drawn for the 95% CIs (0 = none); memory bounded by tcf.eval.metrics.CHUNK
    cold_max_count: int = 5  # a target with at most this many training interactions is "cold"
    history_buckets: list[int] = field(default_factory=lambda: [10, 50, 200])

    def __post_init__(self):
        object.__setattr__(self, "mask_history", mask_rule(self.mask_history))  # true/false -> all/none
        if self.bootstrap < 0:
            raise ConfigError(f"eval.bootstrap must be >= 0 (0 = no CIs), got {self.bootstrap}")
        if self.ranker not in RANKERS:
            raise ConfigError(f"eval.ranker must be one of {list(RANKERS)}, got {self.ranker!r}")
        if self.faiss_index not in ("flat", "hnsw"):
            raise ConfigError(f"eval.faiss_index must be flat or hnsw, got {self.faiss_index!r}")


PROTOCOLS = ("rank", "rank-recency", "rank-icl", "choice", "topk-json")
NEGATIVES = ("uniform", "popularity", "hard")
TASKS = ("train", "zeroshot")


@dataclass(frozen=True)
class ZeroShotConfig:
    """A chat LLM prompted to rank candidates, scored with the trained recommenders' metrics (``task: zeroshot``)."""

    protocol: str = "rank"  # rank | rank-recency | rank-icl (LLMRank) | choice (A-D) | topk-json (top k of 100)
    prompt: str | None = None  # template name in prompts/ or a file path (default: the protocol's own)
    n_candidates: int | None = None  # target + negatives (default: rank* 20, choice 4, topk-json 100)
    top_k: int = 10  # topk-json: how many the model is asked to return
    negatives: str = "uniform"  # uniform | popularity | hard (a trained run's top items; split: test only)
    hard_run: str | None = None  # negatives: hard: folder of a `tcf train` run (results.json + checkpoints/best.pt)
    position: str = "shuffle"  # shuffle (seeded) | pinned (the target at pinned_position, for position-bias studies)
    pinned_position: int = 0  # 0-based slot of the target when position: pinned
    history_len: int = 20  # the most recent H items shown
    limit: int | None = 100  # users sampled with the run seed (None: every user)
    split: str = "test"  # test | valid: which leave-one-out target is the answer
    bootstrap: int = 1  # B: score each user B times with reshuffled candidates and aggregate (Borda)
    # candidates a reply leaves unranked (all, when it fails) go below the ranked ones: tie (exact expected metric of
    # a random order of them) | shuffle (one seeded random order) | order (presented order: scores the target's slot,
    # not the model; a failed reply with the target pinned first gets HR@1 = 1; only to reproduce work that did it)
    unranked: str = "tie"
    candidates_path: str | None = None  # candidate file (default: under cache_root/zeroshot, keyed by its settings)
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    # backend and model
    backend: str = "hf"  # hf | vllm | openai
    model: str = "smollm2-135m"  # zoo name, local folder, .gguf file, hub name, or the server's model name
    revision: str | None = None
    dtype: str = "fp32"
    device: str = "auto"
    batch_size: int = 16  # hf: prompts per generate() call (left padded, length-sorted)
    plain_prompt: bool = False  # a model with no chat template: join the messages as plain text instead of failing
    system_prompt: str | None = None  # None: the template's / model's default
    # generation
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int | None = None  # default per protocol (bounded: rank* 4 per candidate + 16, choice 8, topk-json 4k+16)
    gen_seed: int | None = None  # sampled replies (temperature > 0) are cached only with a seed
    # response cache
    cache_path: str | None = None  # SQLite file (default cache_root/zeroshot/responses.sqlite)
    use_cache: bool = True
    # openai backend
    api_base: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable only
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 3
    # more prompts than this share without a reply from the backend (errors, not unreadable replies): the run
    # fails and its results.json is marked invalid (replies received stay cached for the rerun)
    max_backend_error_rate: float = 0.05

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"zeroshot.protocol must be one of {list(PROTOCOLS)}, got {self.protocol!r}")
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"zeroshot.negatives must be one of {list(NEGATIVES)}, got {self.negatives!r}")
        if self.negatives == "hard" and not self.hard_run:
            raise ConfigError("zeroshot.negatives: hard needs zeroshot.hard_run (a `tcf train` run folder)")
        if self.negatives == "hard" and self.split == "valid":
            raise ConfigError("zeroshot.negatives: hard cannot be used with zeroshot.split: valid: the hard_run's "
                              "checkpoint was early-stopped on those same validation targets, so lists made hard "
                              "for it there are fitted to the answers; use split: test (or negatives: uniform / "
                              "popularity)")
        if self.position not in ("shuffle", "pinned"):
            raise ConfigError(f"zeroshot.position must be shuffle or pinned, got {self.position!r}")
        if self.split not in ("test", "valid"):
            raise ConfigError(f"zeroshot.split must be test or valid, got {self.split!r}")
        if self.unranked not in ("tie", "shuffle", "order"):
            raise ConfigError(f"zeroshot.unranked must be tie, shuffle or order, got {self.unranked!r}")
        n = self.candidates()
        if n < 2 or (self.protocol == "choice" and n > 26):
            raise ConfigError(f"zeroshot.n_candidates must be 2..{26 if self.protocol == 'choice' else 'N'}, got {n}")
        if not 0 <= self.pinned_position < n:
            raise ConfigError(f"zeroshot.pinned_position must be within 0..{n - 1}, got {self.pinned_position}")
        if self.protocol == "topk-json" and not 1 <= self.top_k <= n:
            raise ConfigError(f"zeroshot.top_k must be within 1..{n}, got {self.top_k}")
        if min(self.history_len, self.bootstrap, self.batch_size, self.concurrency) < 1 or self.max_retries < 0:
            raise ConfigError("zeroshot.history_len, bootstrap, batch_size and concurrency must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"zeroshot.limit must be >= 1 (or null for every user), got {self.limit}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("zeroshot.temperature must be >= 0 and zeroshot.top_p within (0, 1]")
        if not 0 <= self.max_backend_error_rate <= 1:
            raise ConfigError(f"zeroshot.max_backend_error_rate must be a share within 0..1, "
                              f"got {self.max_backend_error_rate}")

    def candidates(self) -> int:
        """The number of candidates per list (the protocol's default when not set)."""
        if self.n_candidates is not None:
            return self.n_candidates
        return {"choice": 4, "topk-json": 100}.get(self.protocol, 20)

    def new_tokens(self) -> int:
        """Generation bound: enough for the asked format (indices), short enough to keep CPU runs fast."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.protocol == "choice":
            return 8
        if self.protocol == "topk-json":
            return 4 * self.top_k + 16
        return 4 * self.candidates() + 16


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 2020
    task: str = "train"  # train | zeroshot
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)  # text towers only
    cache_root: str = "embeddings_cache"
    cache_path: str | None = None  # use this existing cache entry instead of extracting (checked against the data)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)  # task: zeroshot only
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow (tcf/tracking.py); not in the run id

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        if self.encoder.pooling == "item_token" and self.model.tower in POOLED_TOWERS and self.task == "train":
            raise ConfigError(f"encoder.pooling=item_token with model.tower={self.model.tower}: the learned item "
                              "token needs LM blocks that run over it (model.tower finetune or lora); a frozen "
                              "encoder's vectors are pooled once, when cached: use pooling mean, last or cls")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    data = load_yaml(path) if path else {}
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(RunConfig, data)


def resolved(cfg: RunConfig) -> dict:
    return to_dict(cfg)


def _normalized(config: dict) -> dict:
    """A saved config as today's RunConfig reads it: keys added since get their defaults and old
    spellings their current form (``mask_history: true`` is ``all``), so only real changes differ."""
    try:
        return flatten(to_dict(from_dict(RunConfig, config)))
    except Exception:  # noqa: BLE001 - a config this version cannot read is compared as it was written
        return flatten(config)


def config_changes(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every setting two resolved run configs differ in (dotted keys, sorted).

    The name and the tracking settings are left out, as run ids leave them out: the same settings are the same run.
    """
    a, b = _normalized(old or {}), _normalized(new or {})
    missing = "(not set)"
    return [f"{k}: {a.get(k, missing)} -> {b.get(k, missing)}" for k in sorted(set(a) | set(b))
            if not identity_free(k) and a.get(k, missing) != b.get(k, missing)]


def identity_free(key: str) -> bool:
    """Settings that do not change what a run computes (its name, where it is tracked): left out of run ids."""
    return key == "name" or key.startswith("tracking.")


def config_hash(cfg: RunConfig) -> str:
    """Short hash of the resolved config's settings that differ from the defaults, name and tracking excluded.

    Equal settings give equal hashes; a setting added to RunConfig later (with a default that
    keeps the old behaviour) leaves every existing run id, and so every finished run, as it was.
    """
    from tcf.hashing import json_digest

    defaults = flatten(to_dict(RunConfig()))
    data = {k: v for k, v in flatten(to_dict(cfg)).items()
            if not identity_free(k) and (k not in defaults or defaults[k] != v)}
    return json_digest(data, 8)


def run_id(cfg: RunConfig) -> str:
    """``NAME-HASH``: the folder of a run, whoever starts it (``tcf train`` / ``zeroshot`` under ``runs/``,
    ``tcf run`` / ``sweep`` under OUT), so the same settings find each other's finished work."""
    return f"{cfg.name}-{config_hash(cfg)}"
