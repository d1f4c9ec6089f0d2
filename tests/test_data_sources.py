"""Every source on small files written by the test, checked against hand-derived canonical tables."""

from __future__ import annotations

import numpy as np
import pytest

import rawfiles
from tcf.data import PrepareOptions, load_dataset, prepare
from tcf.data.prepare import TEST, TRAIN, VALID


def seqs(ds):
    """{user source id: [(item source id, split), ...]} in canonical order."""
    src_item = dict(zip(ds.items["item_id"], ds.items["source_id"]))
    src_user = dict(zip(ds.users["user_id"], ds.users["source_id"]))
    out = {}
    for row in ds.interactions.itertuples():
        out.setdefault(src_user[row.user_id], []).append((src_item[row.item_id], int(row.split)))
    return out


# the tiny MovieLens in rawfiles, ordered by hand: time, ties by file line
ML_EXPECTED = {
    "1": [("3", TRAIN), ("1", TRAIN), ("2", VALID), ("4", TEST)],
    "2": [("2", TRAIN), ("5", VALID), ("1", TEST)],
    "3": [("3", TRAIN), ("4", TRAIN), ("5", VALID), ("1", TEST)],
    "4": [("5", TRAIN), ("4", VALID), ("2", TEST)],
}


@pytest.mark.parametrize("layout", ["grouplens", "grouplens-utf8", "grouplens-zip", "recbole"])
def test_ml100k_layouts(tmp_path, layout):
    if layout == "grouplens":
        src = rawfiles.grouplens(tmp_path / "raw")
    elif layout == "grouplens-utf8":
        src = rawfiles.grouplens(tmp_path / "raw", encoding="utf-8")
    elif layout == "grouplens-zip":
        src = rawfiles.grouplens_zip(tmp_path / "ml-100k.zip", tmp_path)
    else:
        src = rawfiles.recbole(tmp_path / "raw")
    ds = prepare("ml-100k", src, tmp_path / "out")
    assert seqs(ds) == ML_EXPECTED
    assert ds.items["item_id"].tolist() == [1, 2, 3, 4, 5]
    assert ds.items["source_id"].tolist() == ["1", "2", "3", "4", "5"]
    assert ds.items["title"].iloc[0] == "Toy Story"
    assert ds.items["title"].iloc[2] == "Misérables, Les"  # latin-1 / UTF-8 decoded the same
    assert ds.items["year"].iloc[0] == "1995"
    assert ds.item_texts()[:3] == ["", "Toy Story", "GoldenEye"]
    s = ds.meta["stats"]
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (4, 5, 14)
    assert (s["n_valid"], s["n_test"], s["timestamp_ties"]) == (4, 4, 4)
    assert s["non_ascii_texts"] == 1
    if layout.startswith("grouplens"):
        assert ds.items["genres"].iloc[0] == "Animation Children's Comedy"
        assert ds.meta["source_info"]["item_encoding"] == ("utf-8" if layout == "grouplens-utf8" else "latin-1")


def test_ml100k_template_fields(tmp_path):
    ds = prepare("ml-100k", rawfiles.grouplens(tmp_path / "raw"), tmp_path / "out",
                 PrepareOptions(template="{title} ({year}) {genres}"))
    assert ds.item_texts()[1] == "Toy Story (1995) Animation Children's Comedy"
    assert ds.item_texts()[4] == "unknown () unknown"
    # another template renders on demand and changes the text fingerprint
    assert ds.item_texts("{title}")[1] == "Toy Story"
    assert ds.text_fingerprint("{title}") != ds.text_fingerprint()


@pytest.mark.parametrize("kind", ["news", "items", "videos"])
def test_tcf_tsv_first_row_is_item_1(tmp_path, kind):
    """The reference code shifts every item by one through the header line; here row 1 is item 1."""
    ds = prepare("tcf-tsv", rawfiles.tcf_tsv(tmp_path / "raw", kind), tmp_path / "out")
    text_col = "title" if kind == "news" else "description"
    assert ds.items["item_id"].iloc[0] == 1
    assert ds.items["source_id"].iloc[0] == "N10"
    assert ds.item_texts()[1] == "First row of the item table"
    assert ds.items[text_col].tolist()[:2] == ["First row of the item table", "Second item"]
    assert "newsid" not in ds.items["source_id"].tolist() and "itemid" not in ds.items["source_id"].tolist()
    assert seqs(ds) == {"U1": [("N20", TRAIN), ("N10", VALID), ("N30", TEST)],
                        "U2": [("N40", TRAIN), ("N30", TRAIN), ("N20", VALID), ("N10", TEST)],
                        "U3": [("N10", TRAIN), ("N40", VALID), ("N20", TEST)]}
    # the user's first item is N20 = item_id 2
    assert ds.sequence(1).tolist() == [2, 1, 3]


def test_mind_history_then_clicks_in_time_order(tmp_path):
    ds = prepare("mind", rawfiles.mind(tmp_path / "raw"), tmp_path / "out", PrepareOptions(keep_unused_items=True))
    # U1: history (N1 N2) from its earliest row (11/14 7 PM), then clicks N5 (11/14), N3 (11/15 8:55), N4 (11/15 10:00)
    # U2: history N5, then clicks N2, N3 of one impression (file order)
    assert seqs(ds) == {"U1": [("N1", TRAIN), ("N2", TRAIN), ("N5", TRAIN), ("N3", VALID), ("N4", TEST)],
                        "U2": [("N5", TRAIN), ("N2", VALID), ("N3", TEST)]}
    assert ds.items["source_id"].tolist() == ["N1", "N2", "N3", "N4", "N5"]
    assert ds.items["category"].iloc[0] == "sports"
    ts = ds.interactions["timestamp"].tolist()
    assert ts[2] == ts[0] + 1  # history stamped one second before the first impression


def test_mind_without_history(tmp_path):
    ds = prepare("mind", rawfiles.mind(tmp_path / "raw"), tmp_path / "out", source_options={"include_history": False},
                 options=PrepareOptions(min_user_interactions=3))
    assert seqs(ds) == {"U1": [("N5", TRAIN), ("N3", VALID), ("N4", TEST)]}


def test_hm_description_and_ids(tmp_path):
    ds = prepare("hm", rawfiles.hm(tmp_path / "raw"), tmp_path / "out")
    assert ds.items["source_id"].tolist() == ["108775015", "108775044", "110065001"]
    assert ds.item_texts()[1] == "Strap top. Vest top. Black. Jersey top with narrow shoulder straps."
    assert ds.item_texts()[2] == "Strap top. Vest top. White. Jersey top, narrow straps."
    # c1: 09-20 (two, file order), 09-21; c2: 09-20, 09-22 (two, file order)
    assert seqs(ds) == {"c1": [("108775015", TRAIN), ("110065001", VALID), ("108775044", TEST)],
                        "c2": [("108775044", TRAIN), ("108775015", VALID), ("110065001", TEST)]}


def test_hm_custom_columns(tmp_path):
    ds = prepare("hm", rawfiles.hm(tmp_path / "raw"), tmp_path / "out",
                 source_options={"text_columns": ["prod_name", "colour_group_name"]})
    assert ds.item_texts()[1] == "Strap top. Black."


def test_table_csv_mapping(tmp_path):
    folder = rawfiles.table(tmp_path / "raw")
    opts = {"interactions": "ratings.csv", "items": "movies.csv", "user": "uid", "item": "iid", "time": "ts",
            "text": ["name", "about"]}
    ds = prepare("table", folder, tmp_path / "out", PrepareOptions(template="{name}: {about}"), opts)
    assert ds.items["source_id"].tolist() == ["z", "x", "y"]  # item-file order
    assert ds.item_texts()[1] == "Zed: last, but not least"
    assert seqs(ds) == {"a": [("y", TRAIN), ("z", VALID), ("x", TEST)], "b": [("z", TRAIN), ("x", VALID),
                                                                             ("y", TEST)]}


def test_table_parquet_and_file_order(tmp_path):
    import pandas as pd

    pd.DataFrame({"u": ["a", "a", "a"], "i": [3, 1, 2]}).to_parquet(tmp_path / "inter.parquet")
    pd.DataFrame({"i": [1, 2, 3], "t": ["one", "two", "three"]}).to_parquet(tmp_path / "items.parquet")
    ds = prepare("table", tmp_path, tmp_path / "out", source_options={
        "interactions": "inter.parquet", "items": "items.parquet", "user": "u", "item": "i", "time": None,
        "text": ["t"]})
    assert ds.sequence(1).tolist() == [3, 1, 2]  # no time column: file order


def test_table_time_omitted(tmp_path):
    """`time` left out (as the README says it may be): a `timestamp` column if the file has one, else file order."""
    rawfiles.write(tmp_path / "i.csv", "i,title\nx,Ex\ny,Why\nz,Zed\n")
    rawfiles.write(tmp_path / "r.csv", "u,i\na,z\na,x\na,y\n")
    opts = {"interactions": "r.csv", "items": "i.csv", "user": "u", "item": "i"}
    ds = prepare("table", tmp_path, tmp_path / "order", source_options=opts)
    assert ds.sequence(1).tolist() == [3, 1, 2] and ds.meta["source_info"]["mapping"]["time"] is None
    rawfiles.write(tmp_path / "r.csv", "u,i,timestamp\na,z,30\na,x,10\na,y,20\n")
    ds = prepare("table", tmp_path, tmp_path / "timed", source_options=opts)
    assert ds.sequence(1).tolist() == [1, 2, 3] and ds.meta["source_info"]["mapping"]["time"] == "timestamp"


def test_table_dates(tmp_path):
    rawfiles.write(tmp_path / "r.tsv", "u\ti\twhen\na\tx\t2020-01-03\na\ty\t2020-01-01\na\tx\t2020-01-02\n")
    rawfiles.write(tmp_path / "i.tsv", "i\ttitle\nx\tEx\ny\tWhy\n")
    ds = prepare("table", tmp_path, tmp_path / "out", source_options={
        "interactions": "r.tsv", "items": "i.tsv", "user": "u", "item": "i", "time": "when", "time_format": "iso"})
    assert ds.sequence(1).tolist() == [2, 1, 1]
    assert ds.interactions["timestamp"].iloc[0] == 1577836800  # 2020-01-01 UTC


def test_synthetic_is_seeded_and_shuffled(tmp_path):
    from tcf.data.sources import synthetic

    a = prepare("synthetic", None, tmp_path / "a", source_options={"seed": 3})
    b = prepare("synthetic", None, tmp_path / "b", source_options={"seed": 3})
    c = prepare("synthetic", None, tmp_path / "c", source_options={"seed": 4})
    assert a.fingerprint == b.fingerprint != c.fingerprint
    raw, topic = synthetic.generate(synthetic.Options(seed=3))
    topics = np.array([topic[s] for s in a.items["source_id"]])
    # ids are shuffled: neighbouring item ids rarely share a topic (8 topics -> ~1/8)
    assert np.mean(topics[1:] == topics[:-1]) < 0.3
    # the structure is in the sequences: consecutive items mostly share a topic
    same = []
    for seq in a.sequences()[1:]:
        t = topics[seq - 1]
        same.append(np.mean(t[1:] == t[:-1]))
    assert np.mean(same) > 0.7
    # and in the text: items of one topic share words, items of different topics share few
    words = [set(t.split()) for t in a.item_texts()[1:]]
    within = np.mean([len(words[i] & words[j]) for i in range(60) for j in range(60)
                      if i != j and topics[i] == topics[j]])
    across = np.mean([len(words[i] & words[j]) for i in range(60) for j in range(60) if topics[i] != topics[j]])
    assert within > 2 * across


def test_load_refuses_edited_folder(tmp_path):
    import pandas as pd

    ds = prepare("ml-100k", rawfiles.grouplens(tmp_path / "raw"), tmp_path / "out")
    items = pd.read_parquet(ds.path / "items.parquet")
    items.loc[0, "text"] = "Edited"
    items.to_parquet(ds.path / "items.parquet", index=False)
    with pytest.raises(Exception, match="does not match the fingerprint"):
        load_dataset(ds.path)
    items = items.iloc[::-1].reset_index(drop=True)
    items.to_parquet(ds.path / "items.parquet", index=False)
    with pytest.raises(Exception, match="misaligned"):
        load_dataset(ds.path)
