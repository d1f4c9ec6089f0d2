"""ARCHITECTURE.md's "Adding things", done end to end: a tiny data source, encoder backend and head, each
registered by name (tcf.extensions), carry a run from raw files to results.json through the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tcf import extensions
from tcf.cli import main
from tcf.data import load_dataset

# the three implementations, as a user would write them in a module of their own
MODULE = textwrap.dedent('''
    from __future__ import annotations

    import dataclasses
    import hashlib

    import numpy as np
    import torch
    from torch import nn

    from tcf.data.sources import synthetic
    from tcf.encoders.base import Embedded, Encoder, encoder_key


    @dataclasses.dataclass(frozen=True)
    class Options:  # a source's settings: tcf data prepare tinysrc --set n_users=...
        n_users: int = 16
        seed: int = 3


    def read(path, options=Options()):
        raw = synthetic.read(None, synthetic.Options(n_users=options.n_users, n_items=24, n_topics=2, min_len=4,
                                                     max_len=6, seed=options.seed))
        return dataclasses.replace(raw, source="tinysrc")


    class HashEncoder(Encoder):
        """Texts -> vectors from a hash of their words (no model): deterministic, 16-d."""

        @classmethod
        def key_for(cls, spec):
            return encoder_key(spec, f"hash:{spec.model}", None)

        def __init__(self, spec):
            self.spec, self.identity, self.dim, self.num_layers = spec, f"hash:{spec.model}", 16, 1

        def embed(self, texts):
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for i, t in enumerate(texts):
                for w in t.split():
                    out[i, int(hashlib.sha256(w.encode()).hexdigest(), 16) % self.dim] += 1.0
            return Embedded(out, n_tokens=sum(len(t.split()) for t in texts), n_truncated=0)


    class MeanHead(nn.Module):
        """The user is the running mean of the item vectors seen so far."""

        def __init__(self, tower):
            super().__init__()
            self.tower = tower

        def states(self, users, seq):
            x = self.tower(seq)  # [B, L, D]
            keep = (seq != 0).unsqueeze(-1).float()
            return (x * keep).cumsum(1) / keep.cumsum(1).clamp_min(1.0)

        def item_vectors(self, ids):
            return self.tower(ids)

        def all_items(self):
            return self.tower.all()


    def build_mean_head(cfg, tower, n_items, n_users):
        return MeanHead(tower)
''')


@pytest.fixture
def registered(tmp_path, monkeypatch):
    (tmp_path / "myext.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    added = [(extensions.SOURCES, "tinysrc"), (extensions.ENCODERS, "hashenc"), (extensions.HEADS, "meanhead")]
    extensions.register_source("tinysrc", "myext", help="a tiny synthetic source")
    extensions.register_encoder("hashenc", "myext:HashEncoder", help="word hashes")
    extensions.register_head("meanhead", "myext:build_mean_head", help="mean of the history")
    yield
    for registry, name in added:
        registry.entries.pop(name, None)
    sys.modules.pop("myext", None)


def test_a_registered_source_backend_and_head_run_end_to_end(registered, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "prepare", "tinysrc", "--out", "data/tiny", "--set", "n_users=14"]) == 0
    assert load_dataset("data/tiny").n_users == 14

    assert main(["extract", "--dataset", "data/tiny", "--backend", "hashenc", "--model", "w"]) == 0

    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent('''
        name: ext
        data: {dataset: data/tiny}
        encoder: {backend: hashenc, model: w}
        model: {head: meanhead, tower: frozen, dim: 8}
        train: {epochs: 1, batch_size: 8}
        eval: {bootstrap: 0}
    '''))
    assert main(["train", "--config", str(config), "--out", "runs/ext", "--quiet"]) == 0
    results = json.loads(Path("runs/ext/results.json").read_text())
    assert results["config"]["model"]["head"] == "meanhead"
    assert results["config"]["encoder"]["backend"] == "hashenc"
    assert 0.0 <= results["metrics"]["test"]["metrics"]["ndcg@10"]["mean"] <= 1.0


def test_a_name_nobody_registered_is_refused_by_the_config():
    from tcf.errors import ConfigError
    from tcf.experiments.config import load_config

    with pytest.raises(ConfigError, match="model.head"):
        load_config(None, ["model.head=meanhead"])
