"""One registry per extension point: validation, --help and lookups read the same names."""

from __future__ import annotations

import numpy as np
import pytest

from tcf import extensions
from tcf.errors import ConfigError, TcfError
from tcf.registry import Entry, Registry


def help_of(*argv: str) -> None:
    from tcf.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])


def test_config_validation_reads_the_registries():
    from tcf.encoders.base import EncoderSpec
    from tcf.run.config import HEADS, LOSSES, TOWERS, ModelConfig, TrainConfig

    assert (HEADS, TOWERS, LOSSES) == (extensions.HEADS.choices(), extensions.TOWERS.choices(),
                                       extensions.LOSSES.choices())
    for name in extensions.HEADS:
        ModelConfig(head=name)
    with pytest.raises(ConfigError, match=r"model.head must be one of \['sasrec', 'dssm'"):
        ModelConfig(head="gru")
    with pytest.raises(ConfigError, match="model.tower must be one of"):
        ModelConfig(tower="bag")
    with pytest.raises(ConfigError, match="train.loss must be one of"):
        TrainConfig(loss="hinge")
    with pytest.raises(ConfigError, match="encoder.pooling must be one of"):
        EncoderSpec(pooling="max")


def test_old_names_stay_importable():
    from tcf.data import SOURCES, get_source
    from tcf.encoders import ENCODERS
    from tcf.encoders.pooling import POOLINGS
    from tcf.zeroshot import CHAT_BACKENDS

    assert ENCODERS is extensions.ENCODERS and CHAT_BACKENDS is extensions.CHAT_BACKENDS
    assert list(SOURCES) == ["ml-100k", "tcf-tsv", "mind", "hm", "table", "synthetic"]
    assert get_source("synthetic").__name__ == "tcf.data.sources.synthetic"
    with pytest.raises(ConfigError, match="unknown data source 'nope'; known sources"):
        get_source("nope")
    assert POOLINGS == extensions.POOLINGS.choices()


def test_help_names_every_registered_name(capsys, monkeypatch):
    from tcf.encoders.zoo import ZOO

    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside a name (argparse breaks lines at hyphens)
    help_of("extract")
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in ZOO) and f"encoder backend: {extensions.ENCODERS.help()}" in text
    assert "{" + ",".join(extensions.POOLINGS) + "}" in text
    help_of("train")
    text = " ".join(capsys.readouterr().out.split())
    for key in ("model.head", "model.tower", "train.loss"):
        assert f"{key}: {extensions.EXTENSION_POINTS[key].help()}" in text
    help_of("data", "prepare")
    assert extensions.SOURCES.help() in " ".join(capsys.readouterr().out.split())


def test_a_registered_head_is_validated_and_built(tiny_dataset):
    from tcf.models import SASRec, build_model
    from tcf.run.config import load_config
    from tcf.run.seqdata import SeqData

    data = SeqData(tiny_dataset)
    extensions.register_head("sasrec-again", "tcf.models:build_sasrec", help="SASRec by another name")
    try:
        cfg = load_config(None, ["model.head=sasrec-again", f"data.dataset={tiny_dataset.path}"])
        assert isinstance(build_model(cfg, data.n_items, data.n_users), SASRec)
        with pytest.raises(TcfError, match="head 'sasrec-again' is registered twice"):
            extensions.register_head("sasrec-again", "tcf.models:build_sasrec")
    finally:
        del extensions.HEADS.entries["sasrec-again"]


def test_registry_order_modes_and_module_targets():
    reg = Registry("thing", {"b": Entry(help="second letter"), "a": Entry("tcf.fsutil")})
    reg.register("c", "tcf.fsutil:atomic_path")
    assert reg.choices() == ("b", "a", "c") and reg.names() == ["a", "b", "c"] and reg.help() == "b | a | c"
    assert reg.describe()[0] == ("b", "second letter") and "a" in reg and "z" not in reg
    assert reg.get("a").__name__ == "tcf.fsutil" and reg.get("c").__name__ == "atomic_path"
    with pytest.raises(TcfError, match="a mode"):
        reg.get("b")
    with pytest.raises(ConfigError, match=r"thing.kind must be one of \['b', 'a', 'c'\], got 'z'"):
        reg.check("z", "thing.kind")


def test_split_targets_in_one_place(tiny_dataset):
    from tcf.run.seqdata import SeqData

    data = SeqData(tiny_dataset)
    u = int(data.users[0])
    s = data.seqs[u]
    assert data.target(u, "test") == s[-1] and data.target(u, "valid") == s[-2]
    np.testing.assert_array_equal(data.history(u, "valid"), s[:-2])
    np.testing.assert_array_equal(data.history(u, "test"), s[:-1])
    with pytest.raises(ValueError, match="split must be one of"):
        SeqData.target_offset("train")


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    from tcf.fsutil import atomic_path

    with atomic_path(tmp_path / "a" / "x.bin") as tmp:
        tmp.write_bytes(b"1")
        assert not (tmp_path / "a" / "x.bin").exists()
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"1"
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a" / "x.bin") as tmp:
        tmp.write_bytes(b"2")
        raise RuntimeError
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"1" and sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "x.bin"]
