"""Every extension point a user names in a config, each one registry listing its names once.

Config validation (``tcf.run.config``, ``EncoderSpec``), the CLI's ``--help`` texts and the
docs read the names from here, in the order listed.  An implementation is imported only
when chosen (``Registry.get``), so this module sits at the bottom of the import graph and
costs nothing to import.

Adding one: a line in its registry below (or ``register_head(name, target, help=...)`` and
the like before any config is read).  A head's target is a builder
``builder(cfg, tower, n_items, n_users) -> nn.Module`` (see :func:`tcf.models.build_model`).
"""

from __future__ import annotations

from tcf.registry import Entry, Registry

# ---------------------------------------------------------------- backends (tcf.encoders, tcf.zeroshot)

ENCODERS = Registry("encoder backend", {  # encoder.backend
    "hf": Entry("tcf.encoders.hf:HFEncoder", packages=("transformers",),
                help="Hugging Face transformers: any encoder or decoder, a zoo name, a folder or a .gguf file"),
    "openai": Entry("tcf.encoders.openai_api:OpenAIEncoder", help="an OpenAI-compatible /v1/embeddings server"),
    "deepspeed": Entry("tcf.encoders.ds:DeepSpeedEncoder", extra="deepspeed", packages=("deepspeed",),
                       help="DeepSpeed inference or ZeRO-3 (models larger than one device)"),
    "vllm": Entry("tcf.encoders.vllm_backend:VLLMEncoder", extra="vllm", packages=("vllm",),
                  help="vLLM pooling models (high-throughput extraction)"),
})

CHAT_BACKENDS = Registry("chat backend", {  # zeroshot.backend
    "hf": Entry("tcf.zeroshot.hf_chat:HFChat", packages=("transformers",),
                help="local transformers generation with the model's chat template"),
    "vllm": Entry("tcf.zeroshot.vllm_chat:VLLMChat", extra="vllm", packages=("vllm",), help="local vLLM generation"),
    "openai": Entry("tcf.zeroshot.openai_chat:OpenAIChat", help="an OpenAI-compatible /v1/chat/completions server"),
})

# ---------------------------------------------------------------- data (tcf.data.sources)

SOURCES = Registry("data source", {  # tcf data prepare SOURCE; data.dataset (a source name prepared on first use)
    "ml-100k": Entry("tcf.data.sources.ml100k", help="MovieLens 100K"),
    "tcf-tsv": Entry("tcf.data.sources.tcf_tsv", help="the TCF reference code's behaviors.tsv + news/items/videos.tsv"),
    "mind": Entry("tcf.data.sources.mind", help="Microsoft News (MIND)"),
    "hm": Entry("tcf.data.sources.hm", help="H&M Personalized Fashion"),
    "table": Entry("tcf.data.sources.table", help="any CSV / TSV / parquet pair with a column mapping"),
    "synthetic": Entry("tcf.data.sources.synthetic", help="seeded synthetic data whose texts carry the signal"),
})

# ---------------------------------------------------------------- models (tcf.models)

HEADS = Registry("head", {  # model.head
    "sasrec": Entry("tcf.models:build_sasrec", help="SASRec: a causal transformer over the user's items"),
    "dssm": Entry("tcf.models:build_dssm", help="DSSM: a two-tower model (user tower . item tower)"),
    "llm": Entry("tcf.models.llm_head:build_llm_head", help="a causal LM over the item vectors (HLLM-style)"),
})

POOLED_TOWERS = ("frozen", "id+text")  # read pooled text vectors from the embedding cache
LM_TOWERS = ("finetune", "lora")  # run the top k LM layers on cached hidden states (tcf.models.inputs)
TOWERS = Registry("item tower", {  # model.tower
    "id": Entry(help="an ID embedding table"),
    "frozen": Entry(help="cached text vectors through a trained adapter"),
    "id+text": Entry(help="an ID embedding fused with the frozen text tower (model.fusion)"),
    "finetune": Entry(help="the top k LM layers trained end to end on cached hidden states"),
    "lora": Entry(help="LoRA adapters on the top k LM layers"),
})

# ---------------------------------------------------------------- training and pooling

LOSSES = Registry("loss", {  # train.loss
    "ce": Entry("tcf.train.losses:full_ce", help="softmax over the whole catalogue"),
    "inbatch": Entry("tcf.train.losses:inbatch", help="softmax over the step's labels, logQ-corrected"),
    "bce": Entry("tcf.train.losses:sampled_bce", help="one sampled negative per position"),
})

POOLINGS = Registry("pooling", {  # encoder.pooling
    "mean": Entry(help="the mean of the real tokens' states"),
    "last": Entry(help="the last real token's state (left or right padding)"),
    "cls": Entry(help="the first token's state"),
    "item_token": Entry(help="fine-tuned towers only: a learned token's final state (tcf.models.item_token)"),
})

EXTENSION_POINTS = {"encoder.backend": ENCODERS, "zeroshot.backend": CHAT_BACKENDS, "data source": SOURCES,
                    "model.head": HEADS, "model.tower": TOWERS, "train.loss": LOSSES, "encoder.pooling": POOLINGS}


def register_head(name: str, target: str, *, help: str = "") -> None:  # noqa: A002 - Entry's field
    """Add a head: ``target`` 'module:builder', called as ``builder(cfg, tower, n_items, n_users)``."""
    HEADS.register(name, target, help=help)


def register_encoder(name: str, target: str, **kw) -> None:
    ENCODERS.register(name, target, **kw)


def register_chat_backend(name: str, target: str, **kw) -> None:
    CHAT_BACKENDS.register(name, target, **kw)


def register_source(name: str, module: str, *, help: str = "") -> None:  # noqa: A002
    SOURCES.register(name, module, help=help)
