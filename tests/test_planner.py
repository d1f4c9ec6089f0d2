"""The scale planner: exact counts against the OPT paper and real loads, cache bytes against real files,
the activation estimate against what autograd keeps, and the strategy it picks per hardware."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tinymodels
from tcf.cli import main
from tcf.encoders import EncoderSpec, build_encoder
from tcf.errors import ConfigError, TcfError
from tcf.experiments import planner as P

ZOO_PARAMS = {"minilm-l6": 22_713_216, "smollm2-135m": 134_515_008, "gemma3-270m": 268_098_176}  # real loads


def opt_closed_form(size: str) -> int:
    """OPT parameters from the paper's Table 1 by hand: blocks, token and position embeddings, final norm."""
    L, _, d = P.OPT_ARCH[size]
    f, V, positions = 4 * d, 50272, 2048 + 2  # OPT's learned positions are offset by 2
    block = 4 * d * d + 4 * d + 2 * d * f + f + d + 2 * 2 * d  # q k v out (+bias), fc1 fc2 (+bias), two layer norms
    if size == "350m":  # 512-d token embeddings, projected in and out; post-LN: no final layer norm
        return L * block + V * 512 + positions * d + 2 * d * 512
    return L * block + V * d + positions * d + 2 * d


@pytest.mark.parametrize("size", list(P.OPT_ARCH))
def test_opt_meta_count_equals_closed_form(size):
    arch = P.measure(P.load_config(f"facebook/opt-{size}")[0])
    assert arch.n_params == opt_closed_form(size)
    assert arch.n_layers == P.OPT_ARCH[size][0] and arch.heads == P.OPT_ARCH[size][1]


# Exact counts of the released architectures, and how far each is from the size it is named by.
# The names are rounded (they follow GPT-3's Table 2.1): five are within 1%, three more round to their
# name at its precision (1.3B = 1.316B, 2.7B = 2.652B, 13B = 12.85B), and OPT-350m is 331M because the
# released checkpoint embeds tokens in 512 dimensions and projects them to 1024.
OPT_EXACT = {"125m": 125_239_296, "350m": 331_196_416, "1.3b": 1_315_758_080, "2.7b": 2_651_596_800,
             "6.7b": 6_658_473_984, "13b": 12_853_473_280, "30b": 29_974_540_288, "66b": 65_719_701_504,
             "175b": 174_604_468_224}
WITHIN_1_PERCENT = {"125m", "6.7b", "30b", "66b", "175b"}


def rounds_to(count: int, published: float) -> bool:
    """True when ``count`` written with the published name's significant digits is the name (1.3B: 2 digits)."""
    digits = len(f"{published:.3g}".replace(".", "").replace("e+", "e").split("e")[0].rstrip("0")) or 1
    return float(f"{count:.{digits}g}") == float(f"{published:.{digits}g}")


@pytest.mark.parametrize("size", list(P.OPT_ARCH))
def test_opt_counts_against_published_sizes(size):
    n = P.measure(P.load_config(f"opt-{size}")[0]).n_params
    assert n == OPT_EXACT[size]
    error = abs(n - P.OPT_PUBLISHED[size]) / P.OPT_PUBLISHED[size]
    if size in WITHIN_1_PERCENT:
        assert error < 0.01
    elif size == "350m":
        assert 0.05 < error < 0.06 and not rounds_to(n, P.OPT_PUBLISHED[size])
    else:
        assert 0.01 <= error < 0.02 and rounds_to(n, P.OPT_PUBLISHED[size])


@pytest.mark.parametrize("size", ["125m", "350m", "13b"])
def test_plan_shows_the_count_against_the_papers_name(size):
    plan = P.plan(f"facebook/opt-{size}", P.Hardware(1, 80 * P.GiB, 512 * P.GiB), items=1682)
    pub = plan["parameters"]["published"]
    assert pub["name"] == size.upper() and pub["count"] == P.OPT_PUBLISHED[size]
    assert pub["relative_difference"] == pytest.approx((OPT_EXACT[size] - P.OPT_PUBLISHED[size]) / P.OPT_PUBLISHED[size])
    assert f"the OPT paper names it {size.upper()}: {pub['relative_difference']:+.2%}" in P.render(plan)
    assert ("512 dimensions" in pub["note"]) == (size == "350m")
    assert "published" not in P.plan("minilm-l6", P.Hardware(0, 0, 24 * P.GiB))["parameters"]


def test_opt_350m_quirks_match_transformers_layout():
    arch = P.measure(P.load_config("facebook/opt-350m")[0])
    assert arch.hidden == 1024 and arch.out_dim == 512  # pooled vectors leave through project_out
    assert arch.top_extra_params == 1024 * 512  # project_out (no final layer norm: post-LN blocks)
    cut = P.measure(P.load_config("facebook/opt-350m")[0], keep=22)
    assert cut.out_dim == 1024 and cut.n_params == OPT_EXACT["350m"] - 2 * arch.block_params[0] - 1024 * 512


def rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_meta_instantiating_opt_175b_is_fast_and_allocates_nothing():
    import resource
    import time

    P.measure(P.load_config("facebook/opt-125m")[0])  # imports the OPT modules: not what is timed
    peak, now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_bytes()
    start = time.perf_counter()
    model = P.meta_model(P.load_config("facebook/opt-175b")[0])  # 650 GiB in fp32 if it had storage
    seconds = time.perf_counter() - start
    assert all(p.device.type == "meta" for p in model.parameters())
    assert P.count_params(model) == OPT_EXACT["175b"]
    assert seconds < 10
    assert rss_bytes() - now < 200 * 1024**2  # the model is alive and holds no memory
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak < 200 * 1024**2  # nor did it on the way


def test_minilm_meta_count_equals_a_real_load():
    import torch
    from transformers import AutoModel

    from tcf.encoders import zoo

    folder = zoo.resolve("minilm-l6").folder
    arch = P.measure(P.load_config("minilm-l6")[0])
    real = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
    assert arch.n_params == sum(p.numel() for p in real.parameters()) == ZOO_PARAMS["minilm-l6"]
    assert arch.model_class == type(real).__name__ and arch.n_layers == 6 and arch.out_dim == 384
    assert P.measure(P.load_config(str(folder))[0]).n_params == arch.n_params  # folder and config.json work too
    assert P.measure(P.load_config(str(folder / "config.json"))[0]).n_params == arch.n_params


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_gguf_zoo_meta_counts_equal_real_loads(name):
    assert P.measure(P.load_config(name)[0]).n_params == ZOO_PARAMS[name]


@pytest.mark.parametrize("kind", ["llama", "opt", "gpt2", "bert", "gemma3"])
def test_counts_equal_what_the_hf_backend_loads(tiny_models, kind):
    folder = str(tiny_models[kind])
    config = P.load_config(folder)[0]
    full = build_encoder(EncoderSpec(model=folder))
    assert P.measure(config).n_params == full.n_parameters
    assert P.measure(config).out_dim == full.dim
    cut = build_encoder(EncoderSpec(model=folder, layer=2))  # layer-range loading: 2 of 4 blocks
    assert P.measure(config, keep=2).n_params == cut.n_parameters


@pytest.fixture(scope="module")
def projected_opt(tmp_path_factory):
    """A tiny OPT whose 16-d embeddings are projected to 32 (the OPT-350m layout)."""
    import torch
    from transformers import AutoModel, OPTConfig

    torch.manual_seed(0)
    tok = tinymodels.train_tokenizer(bos=True)
    cfg = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=len(tok),
                    max_position_embeddings=64, word_embed_proj_dim=16, do_layer_norm_before=False,
                    pad_token_id=0, bos_token_id=2, eos_token_id=3)
    folder = tmp_path_factory.mktemp("opt-projected")
    AutoModel.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cache_bytes_equal_the_files_extraction_writes(tiny_dataset, projected_opt, tmp_path):
    from tcf.encoders.extract import extract

    arch = P.measure(P.load_config(str(projected_opt))[0])
    assert (arch.hidden, arch.out_dim) == (32, 16)
    want = P.cache_files(tiny_dataset.n_items, 8, arch.out_dim, arch.hidden)
    pooled = extract(tiny_dataset, EncoderSpec(model=str(projected_opt), max_tokens=8), root=tmp_path)
    tokens = extract(tiny_dataset, EncoderSpec(model=str(projected_opt), max_tokens=8, layer=2), root=tmp_path,
                     kind="tokens")
    for entry, kind in ((pooled.entry, "pooled"), (tokens.entry, "tokens")):
        for name, size in want[kind]["files"].items():
            assert (entry.path / name).stat().st_size == size, name


def test_cache_arithmetic_by_hand():
    # ml-100k (1,682 items + the padding row) with a 384-d encoder at 64 tokens; np.save headers are 128 bytes
    c = P.cache_files(1682, 64, 384, 384)
    assert c["pooled"]["bytes"] == 128 + 1683 * 384 * 4 == 2_585_216
    assert c["tokens"]["files"]["states.npy"] == 128 + 1683 * 64 * 384 * 2 == 82_722_944
    assert c["tokens"]["files"]["mask.npy"] == 128 + 1683 * 64 == 107_840
    # OPT-175b over a million items: the pooled cache is 49 GB, layer L-k token states 1.6 TB
    big = P.cache_files(1_000_000, 64, 12288, 12288)
    assert big["pooled"]["bytes"] == 128 + 1_000_001 * 12288 * 4
    assert big["tokens"]["bytes"] == 2 * 128 + 1_000_001 * 64 * (12288 * 2 + 1)


def test_weight_bytes_by_hand():
    arch = P.Arch(n_params=1000, n_layers=1, hidden=8, out_dim=8, ffn=32, heads=2, block_params=(700,),
                  top_extra_params=0, linear_weights=640, linear_rows=20, model_class="x")
    assert P.weight_bytes(arch, "fp32") == 4000 and P.weight_bytes(arch, "bf16") == 2000
    assert P.weight_bytes(arch, "int8") == 640 + 4 * 20 + 360 * 2  # 1 byte + fp32 row scales + the rest in bf16
    assert P.weight_bytes(arch, "int4") == 320 + 4 * 10 + 360 * 2  # half a byte + fp32 absmax per 64
    assert P.weight_bytes(arch, "int8", "fp32") == 640 + 80 + 360 * 4


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_training_activation_estimate_bounds_what_autograd_keeps(attn):
    """Bytes of the tensors autograd saves for a bf16 training forward, against the planner's estimate."""
    import torch
    from transformers import AutoModel, OPTConfig

    torch.manual_seed(0)
    cfg = OPTConfig(hidden_size=256, ffn_dim=1024, num_attention_heads=8, num_hidden_layers=2, vocab_size=100,
                    max_position_embeddings=128, word_embed_proj_dim=256)
    cfg._attn_implementation = attn
    model = AutoModel.from_config(cfg).to(torch.bfloat16).train()
    from test_planner_step_memory import saved_bytes

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    B, T = 8, 32
    saved, _ = saved_bytes(params, lambda: model(input_ids=torch.randint(3, 100, (B, T))))
    estimate = 2 * P.training_layer_activation_bytes(P.measure(cfg), B, T)
    assert 0.5 * estimate < saved <= estimate


def choice(model, gpus, cpu="512GB", **kw):
    """Plans at 8 sequences per training step: without a dataset a step's items are bounded by 8 x 51 texts."""
    p = P.plan(model, P.hardware(gpus, cpu), items=kw.pop("items", 100_000), batch=kw.pop("batch", 8), **kw)
    return [e["chosen"] for e in p["extraction"]], p["finetune"] and p["finetune"]["chosen"], p


@pytest.mark.parametrize("model,gpus,cpu,kw,pooled,tokens,finetune", [
    ("facebook/opt-125m", "1x80GB", "512GB", {}, "bf16 on one GPU", "bf16 on one GPU", "one GPU"),
    ("facebook/opt-125m", "8x80GB", "512GB", {}, "bf16 on one GPU, data parallel over 8", None, "one GPU"),
    ("facebook/opt-13b", "1x24GB", "64GB", {}, "int8 on one GPU", "int8 on one GPU", "one GPU"),
    ("facebook/opt-66b", "1x80GB", "512GB", {}, "int8 on one GPU", "int8 on one GPU", "one GPU"),
    ("facebook/opt-66b", "2x80GB", "512GB", {}, "vLLM tensor parallel 2", "bf16, device_map sharding over 2",
     "one GPU"),
    ("facebook/opt-175b", "8x80GB", "512GB", {}, "vLLM tensor parallel 8", "bf16, device_map sharding over 8",
     "one GPU with gradient checkpointing"),
    ("facebook/opt-175b", "8x80GB", "512GB", {"finetune_layers": 8}, "vLLM tensor parallel 8",
     "bf16, device_map sharding over 8", "DeepSpeed ZeRO-3 over 8 GPUs, gradient checkpointing"),
    ("facebook/opt-175b", "8x80GB", "512GB", {"finetune_layers": 96}, "vLLM tensor parallel 8",
     "bf16 on one GPU, data parallel over 8", None),
    ("facebook/opt-175b", "8x40GB", "512GB", {}, "int8, device_map sharding over 8",
     "int8, device_map sharding over 8", "DeepSpeed ZeRO-3 over 8 GPUs, gradient checkpointing"),
    ("facebook/opt-175b", "1x80GB", "512GB", {}, "DeepSpeed ZeRO-3, CPU offload, 1 GPU(s)",
     "DeepSpeed ZeRO-3, CPU offload, 1 GPU(s)", "one GPU with gradient checkpointing"),
    ("facebook/opt-175b", "1x80GB", "128GB", {}, None, None, "one GPU with gradient checkpointing"),
    ("facebook/opt-66b", "0", "512GB", {}, "fp32 on CPU", "fp32 on CPU", "one CPU"),
    ("facebook/opt-175b", "0", "512GB", {}, "bf16 on CPU", "bf16 on CPU", "one CPU"),
    ("minilm-l6", "0", "24GB", {}, "fp32 on CPU", "fp32 on CPU", "one CPU"),
])
def test_strategy_table(model, gpus, cpu, kw, pooled, tokens, finetune):
    extraction, ft, p = choice(model, gpus, cpu, **kw)
    assert extraction[0] == pooled
    if kw.get("finetune_layers") == 96:  # every block fine-tuned: nothing is left below to cache
        assert extraction[1] == tokens and p["parameters"]["layer_range_loaded"] < 1e9
    elif tokens is not None:
        assert extraction[1] == tokens
    assert ft == finetune


def test_plan_emits_commands_and_deepspeed_configs():
    _, _, p = choice("facebook/opt-175b", "1x80GB", "512GB")
    pooled = p["extraction"][0]
    assert pooled["command"].startswith("torchrun --nproc-per-node 1 -m tcf.cli extract ")
    assert "--backend deepspeed" in pooled["command"] and "zero_stage=3 offload=true" in pooled["command"]
    assert pooled["deepspeed_config"]["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert pooled["time"]["offload_bound"] and not pooled["time"]["exact"]
    _, _, p = choice("facebook/opt-175b", "8x80GB", "512GB", finetune_layers=8)
    ft = p["finetune"]
    assert ft["command"] == ("torchrun --standalone --nproc-per-node 8 -m tcf train --config CONFIG --set "
                             "model.tower=finetune model.finetune_layers=8 model.max_len=50 encoder.dtype=bf16 "
                             "train.loss=inbatch train.batch_size=8 train.grad_checkpointing=true "
                             "train.strategy=deepspeed train.zero_stage=3")
    # the config is the one tcf train builds from those settings (bf16 on CUDA), not a separate guess
    from tcf.experiments.config import load_config
    from tcf.train.distributed import zero_config

    sets = ft["command"].split(" --set ")[1].split()
    assert ft["deepspeed_config"] == zero_config(load_config(None, sets).train, torch.device("cuda"))
    assert ft["deepspeed_config"]["zero_optimization"] == {"stage": 3} and ft["deepspeed_config"]["bf16"]["enabled"]
    assert ft["deepspeed_config"]["train_micro_batch_size_per_gpu"] == 8
    # 58 GiB of top-2 states + 6 GiB of activations (4 sequences) on one GPU; the AdamW states offloaded
    _, _, p = choice("facebook/opt-175b", "1x48GB", "512GB", finetune_layers=2, batch=4)
    assert p["finetune"]["chosen"].endswith("AdamW states offloaded to CPU")
    assert p["finetune"]["command"].endswith("train.zero_stage=3 train.offload=true")
    assert p["finetune"]["deepspeed_config"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    _, _, p = choice("facebook/opt-125m", "1x80GB", "64GB")
    assert p["finetune"]["command"] == ("tcf train --config CONFIG --set model.tower=finetune model.finetune_layers=2 "
                                        "model.max_len=50 encoder.dtype=bf16 train.loss=inbatch train.batch_size=8")
    _, _, p = choice("facebook/opt-175b", "8x80GB", "512GB")
    assert p["extraction"][0]["command"].startswith("TCF_VLLM_TP=8 tcf extract ")
    assert p["extraction"][1]["command"].endswith("--device-map auto") and "--layer 94" in p["extraction"][1]["command"]
    assert p["parameters"]["exact"] and p["cache"]["exact"] and not p["activations"]["exact"]
    _, _, p = choice("facebook/opt-175b", "1x80GB", "128GB")
    assert "nothing fits" in p["extraction"][0]["why_not"]


def test_finetune_memory_is_states_plus_activations():
    arch = P.measure(P.load_config("facebook/opt-1.3b")[0])
    item = P.item_activations(P.load_config("facebook/opt-1.3b")[0], arch, 64, "bf16")
    step = P.step_bound(8, 50, "inbatch", 100_000)
    plain = P.finetune_bytes(arch, 2, item, step, checkpointing=False, dtype="bf16")
    ckpt = P.finetune_bytes(arch, 2, item, step, checkpointing=True, dtype="bf16")
    # two 2048-d blocks (12 d^2 + 13 d each) and the final layer norm, at 16 bytes each (weights, grads, AdamW)
    assert plain["trainable_params"] == 2 * (12 * 2048**2 + 13 * 2048) + 2 * 2048
    assert plain["weights_grads_adamw"] == 16 * plain["trainable_params"] == ckpt["weights_grads_adamw"]
    assert ckpt["activations"] < plain["activations"]
    # every text of the step's 8 windows (8 x 51), each block's activations per text measured on meta
    assert item.measured and step.items == 8 * 51 and step.positions == 8 * 50
    logits = step.positions * step.candidates * 5
    # bf16: the fp32 master weights' bf16 copies that autocast's matmuls keep (one block's with checkpointing)
    assert plain["activations"] == step.items * (2 * item.per_block + item.above) + logits + \
        2 * plain["trainable_params"]
    assert ckpt["activations"] == step.items * (2 * item.block_input + item.per_block + item.above) + logits + \
        2 * (12 * 2048**2 + 13 * 2048)
    assert item.block_input == 64 * 2048 * 2


def test_a_batch_too_large_names_one_that_fits():
    _, ft, p = choice("facebook/opt-175b", "8x80GB", "512GB", batch=64)  # 64 x 51 texts of 64 tokens per step
    assert ft is None and "train.batch_size=32 fits (DeepSpeed ZeRO-3 over 8 GPUs" in p["finetune"]["why_not"]
    assert "command" not in p["finetune"]


def test_dataset_sizes_the_cache(tiny_dataset):
    p = P.plan("facebook/opt-125m", P.hardware("1x24GB", "64GB"), dataset=str(tiny_dataset.path))
    assert p["settings"]["items"] == tiny_dataset.n_items
    assert p["cache"]["pooled"]["shape"] == [tiny_dataset.n_items + 1, 768]
    assert str(tiny_dataset.path) in p["extraction"][0]["command"]


def test_cli_plan_text_and_json(capsys):
    assert main(["plan", "--model", "facebook/opt-66b", "--gpus", "8x80GB", "--items", "1682", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["parameters"]["total"] == OPT_EXACT["66b"]
    assert p["hardware"] == {"n_gpus": 8, "gpu_bytes": 80 * P.GiB, "cpu_bytes": 512 * P.GiB}
    assert main(["plan", "--model", "facebook/opt-125m", "--gpus", "0", "--cpu-mem", "24GB"]) == 0
    text = capsys.readouterr().out
    assert "125,239,296 (exact" in text and "(estimate)" in text and "-> fp32 on CPU" in text


@pytest.mark.parametrize("argv,message", [
    (["--model", "facebook/opt-1b"], "the OPT family has the sizes"),
    (["--model", "opt-125m", "--gpus", "8y80"], "write COUNTxSIZE"),
    (["--model", "opt-125m", "--cpu-mem", "lots"], "--cpu-mem: cannot read 'lots'"),
    (["--model", "opt-125m", "--finetune-layers", "13"], "--finetune-layers 13 is outside 0..12"),
    (["--model", "opt-125m", "--items", "5", "--dataset", "x"], "not both"),
    (["--model", "./no/such/folder"], "no config.json there"),
])
def test_cli_plan_bad_input(capsys, argv, message):
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unknown_hub_name_offline_is_one_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TcfError, match="not in the local Hugging Face cache and the hub is offline"):
        P.load_config("nobody/no-such-model")


def test_hardware_parsing():
    assert P.parse_gpus("8x80GB") == (8, 80 * P.GiB) and P.parse_gpus("80GB") == (1, 80 * P.GiB)
    assert P.parse_gpus("0") == (0, 0) and P.parse_gpus("cpu") == (0, 0)
    assert P.parse_bytes("1TB", "x") == 1024 * P.GiB and P.parse_bytes("512", "x") == 512 * P.GiB
    with pytest.raises(ConfigError):
        P.parse_gpus("eightx80GB")
    assert np.isclose(P.hardware("1x80GB", "24GB").gpu_usable, 0.9 * 80 * P.GiB - P.GiB, atol=1)
