"""Shared fixtures: tiny models and a tiny dataset, built once per session."""

from __future__ import annotations

import pytest

import tinymodels


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Folder of a tiny Llama-family decoder (4 blocks) with its own tokenizer."""
    return tinymodels.build("llama", tmp_path_factory.mktemp("tiny") / "llama", layers=4)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """kind -> folder, for several model families."""
    root = tmp_path_factory.mktemp("tiny-families")
    return {k: tinymodels.build(k, root / k, layers=4) for k in ("llama", "opt", "gpt2", "bert", "gemma3")}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    from tcf.data import prepare

    return prepare("synthetic", None, tmp_path_factory.mktemp("data") / "synth",
                   source_options={"n_users": 30, "n_items": 40, "n_topics": 4, "min_len": 3, "max_len": 6})


@pytest.fixture(autouse=True)
def _models_dir(tmp_path_factory, monkeypatch):
    """GGUF conversions go to one per-session folder, never into the checkout."""
    monkeypatch.setenv("TCF_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "models"))
