"""Preprocessing options and the split, on hand-checked tiny inputs."""

from __future__ import annotations

import pytest

import rawfiles
from tcf.data import PrepareOptions, prepare
from tcf.errors import ConfigError


def tsv(tmp_path, behaviors: dict[str, str], items=("A", "B", "C", "D", "E", "F")):
    folder = tmp_path / "raw"
    rawfiles.write(folder / "items.tsv", "itemid\tdescription\n" + "".join(f"{i}\titem {i}\n" for i in items))
    rawfiles.write(folder / "behaviors.tsv", "userid\tbehaviors\n" + "".join(f"{u}\t{s}\n" for u, s in
                                                                             behaviors.items()))
    return folder


def as_tokens(ds):
    src = dict(zip(ds.items["item_id"], ds.items["source_id"]))
    users = ds.users["source_id"].tolist()
    return {users[u - 1]: " ".join(src[i] for i in ds.sequence(u)) for u in range(1, ds.n_users + 1)}


def test_unused_items_dropped_and_ids_compact(tmp_path):
    ds = prepare("tcf-tsv", tsv(tmp_path, {"u": "E B C"}), tmp_path / "out")
    assert ds.items["source_id"].tolist() == ["B", "C", "E"]  # file order, unused A D F dropped
    assert ds.sequence(1).tolist() == [3, 1, 2]
    kept = prepare("tcf-tsv", tsv(tmp_path, {"u": "E B C"}), tmp_path / "out2", PrepareOptions(keep_unused_items=True))
    assert kept.items["source_id"].tolist() == ["A", "B", "C", "D", "E", "F"]
    assert kept.meta["stats"]["items_without_interactions"] == 3


def test_dedupe_keeps_first_occurrence(tmp_path):
    src = tsv(tmp_path, {"u": "A B A C B D"})
    assert as_tokens(prepare("tcf-tsv", src, tmp_path / "o1")) == {"u": "A B A C B D"}
    ds = prepare("tcf-tsv", src, tmp_path / "o2", PrepareOptions(dedupe=True))
    assert as_tokens(ds) == {"u": "A B C D"}
    assert ds.meta["stats"]["dropped_duplicates"] == 2


def test_max_seq_len_keeps_last_len_plus_3(tmp_path):
    src = tsv(tmp_path, {"u": "A B C D E F", "v": "A B C"})
    ds = prepare("tcf-tsv", src, tmp_path / "out", PrepareOptions(max_seq_len=2))
    assert as_tokens(ds) == {"u": "B C D E F", "v": "A B C"}
    assert ds.meta["stats"]["dropped_truncated"] == 1


def test_kcore_is_iterated(tmp_path):
    # F is seen once -> dropped -> w falls to 2 interactions -> dropped -> E falls to 1 -> dropped ...
    src = tsv(tmp_path, {"u": "A B C D", "v": "A B C D", "w": "E F E", "x": "A B C"})
    ds = prepare("tcf-tsv", src, tmp_path / "out", PrepareOptions(min_user_interactions=3, min_item_interactions=2))
    assert as_tokens(ds) == {"u": "A B C D", "v": "A B C D", "x": "A B C"}
    assert ds.meta["stats"]["dropped_kcore"] == 3


def test_kcore_removing_everything_is_an_error(tmp_path):
    with pytest.raises(Exception, match="no interactions left"):
        prepare("tcf-tsv", tsv(tmp_path, {"u": "A B C"}), tmp_path / "out", PrepareOptions(min_item_interactions=5))


def test_split_is_last_test_second_last_valid(tmp_path):
    ds = prepare("tcf-tsv", tsv(tmp_path, {"u": "A B C D", "v": "F E D"}), tmp_path / "out")
    users, test = ds.targets("test")
    _, valid = ds.targets("valid")
    src = dict(zip(ds.items["item_id"], ds.items["source_id"]))
    assert [src[i] for i in test] == ["D", "D"] and [src[i] for i in valid] == ["C", "E"]
    assert users.tolist() == [1, 2]
    assert len(ds.train_interactions()) == 7 - 4


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        PrepareOptions(min_user_interactions=-1)
    with pytest.raises(ConfigError):
        PrepareOptions(max_seq_len=0)


def test_unknown_template_field(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field \{plot\}"):
        prepare("ml-100k", rawfiles.grouplens(tmp_path / "raw"), tmp_path / "out", PrepareOptions(template="{plot}"))
