"""--dataset / data.dataset: a folder, a folder name under data.root, or a source name."""

from __future__ import annotations

import pytest

from tcf.data import ensure_dataset, prepare
from tcf.errors import DataError

SMALL = {"n_users": 12, "n_items": 20, "n_topics": 2, "min_len": 3, "max_len": 5}


def test_a_prepared_folder_is_found_by_its_name_under_the_root(tmp_path):
    ds = prepare("synthetic", None, tmp_path / "data" / "mine", source_options=SMALL)
    assert ensure_dataset("mine", root=tmp_path / "data").fingerprint == ds.fingerprint
    assert ensure_dataset(tmp_path / "data" / "mine", root=tmp_path / "elsewhere").fingerprint == ds.fingerprint


def test_an_unknown_name_says_where_it_looked_and_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match=r"no dataset 'nope'.*data/nope.*not a source \(ml-100k.*tcf data prepare"):
        ensure_dataset("nope", root=tmp_path / "data")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="not a tcf dataset"):  # a folder: the file it lacks
        ensure_dataset(tmp_path / "half", root=tmp_path / "data")


def test_train_takes_a_dataset_name_under_data_root(tmp_path, capsys):
    from tcf.cli import main

    prepare("synthetic", None, tmp_path / "data" / "mine", source_options=SMALL)
    assert main(["train", "--quiet", "--out", str(tmp_path / "run"), "--set", "data.dataset=mine",
                 f"data.root={tmp_path / 'data'}", "model.dim=8", "model.max_len=5", "train.epochs=1",
                 "eval.bootstrap=0"]) == 0
    assert "results:" in capsys.readouterr().out


def test_source_options_prepare_their_own_dataset(tmp_path):
    """data.source_options: the source prepared with them under root/NAME-HASH, one folder per setting."""
    from tcf.data import dataset_for, ensure_dataset
    from tcf.errors import DataError
    from tcf.experiments.config import load_config

    cfg = load_config(None, ["data.dataset=synthetic", f"data.root={tmp_path}", "data.source_options.n_users=40",
                             "data.source_options.n_items=30", "data.source_options.n_topics=3"])
    ds = dataset_for(cfg.data)
    assert ds.n_items == 30 and ds.n_users == 40 and ds.path.parent == tmp_path
    assert ds.path.name.startswith("synthetic-") and dataset_for(cfg.data).path == ds.path  # reused
    other = ensure_dataset("synthetic", root=tmp_path, source_options={"n_users": 40, "n_items": 31, "n_topics": 3})
    assert other.path != ds.path and other.n_items == 31
    with pytest.raises(DataError, match="source_options are for a source name"):
        ensure_dataset("ml-100k-folder", root=tmp_path, source_options={"n_items": 3})
