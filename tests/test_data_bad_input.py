"""Bad input: each case names file, line and field, and leaves no output folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest

import rawfiles
from tcf.cli import main
from tcf.data import PrepareOptions, load_dataset, prepare
from tcf.errors import ConfigError, DataError


def fails(tmp_path: Path, source: str, src, *, file: str, line: int | None, field: str | None, match: str,
          options: PrepareOptions = PrepareOptions(), source_options=None) -> DataError:
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match) as info:
        prepare(source, src, out, options, source_options)
    e = info.value
    assert e.path is not None and e.path.endswith(file), e
    assert e.line == line, e
    assert e.field == field, e
    assert not out.exists(), "a failed prepare must not leave an output folder"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary folder left behind"
    return e


def test_missing_file(tmp_path):
    src = rawfiles.grouplens(tmp_path / "raw")
    (src / "u.data").unlink()
    fails(tmp_path, "ml-100k", src, file="u.data", line=None, field=None, match="file not found")


def test_missing_item_table(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    (src / "news.tsv").unlink()
    fails(tmp_path, "tcf-tsv", src, file="news.tsv", line=None, field=None, match="file not found")


def test_misnamed_column(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    text = (src / "behaviors.tsv").read_text().replace("userid", "user_id", 1)
    rawfiles.write(src / "behaviors.tsv", text)
    e = fails(tmp_path, "tcf-tsv", src, file="behaviors.tsv", line=1, field="userid", match="column not found")
    assert "user_id" in str(e)  # shows the columns it did find


def test_missing_column_recbole(tmp_path):
    src = rawfiles.recbole(tmp_path / "raw")
    text = (src / "ml-100k.inter").read_text().replace("timestamp:float", "time:float", 1)
    rawfiles.write(src / "ml-100k.inter", text)
    fails(tmp_path, "ml-100k", src, file="ml-100k.inter", line=1, field="timestamp", match="column not found")


def test_empty_file(tmp_path):
    src = rawfiles.grouplens(tmp_path / "raw")
    rawfiles.write(src / "u.data", "")
    fails(tmp_path, "ml-100k", src, file="u.data", line=None, field=None, match="file is empty")


def test_header_only_file(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    rawfiles.write(src / "behaviors.tsv", "userid\tbehaviors\n")
    fails(tmp_path, "tcf-tsv", src, file="behaviors.tsv", line=None, field=None, match="no data rows")


def test_non_integer_id(tmp_path):
    src = rawfiles.grouplens(tmp_path / "raw")
    lines = (src / "u.data").read_text().splitlines(keepends=True)
    lines[2] = "1\tthree\t4\t90\n"
    rawfiles.write(src / "u.data", "".join(lines))
    fails(tmp_path, "ml-100k", src, file="u.data", line=3, field="item_id", match="expected an integer item id")


def test_non_numeric_timestamp(tmp_path):
    src = rawfiles.table(tmp_path / "raw")
    rawfiles.write(src / "ratings.csv", "uid,iid,ts\na,x,3\na,y,yesterday\na,z,2\n")
    fails(tmp_path, "table", src, file="ratings.csv", line=3, field="ts", match="numeric timestamp",
          source_options={"interactions": "ratings.csv", "items": "movies.csv", "user": "uid", "item": "iid",
                          "time": "ts", "text": ["name"]})


def test_duplicate_item_id_with_different_text(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    with open(src / "news.tsv", "a") as f:
        f.write("N20\tA different second item\n")
    e = fails(tmp_path, "tcf-tsv", src, file="news.tsv", line=6, field="title", match="duplicate item id 'N20'")
    assert "first at line 3" in str(e)


def test_duplicate_item_id_with_same_text_is_kept_once(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    with open(src / "news.tsv", "a") as f:
        f.write("N20\tSecond item\n")
    ds = prepare("tcf-tsv", src, tmp_path / "out")
    assert ds.items["source_id"].tolist() == ["N10", "N20", "N30", "N40"]


def test_interaction_with_unknown_item(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    with open(src / "behaviors.tsv", "a") as f:
        f.write("U4\tN10 N99 N20\n")
    fails(tmp_path, "tcf-tsv", src, file="behaviors.tsv", line=5, field="behaviors", match="item 'N99' is not in")


def test_empty_text(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    text = (src / "news.tsv").read_text().replace("Third item", "   ")
    rawfiles.write(src / "news.tsv", text)
    fails(tmp_path, "tcf-tsv", src, file="news.tsv", line=4, field="title", match="empty text for item 'N30'")


def test_template_rendering_empty_text(tmp_path):
    src = rawfiles.grouplens(tmp_path / "raw")
    fails(tmp_path, "ml-100k", src, file="u.item", line=4, field="year", match="renders empty text",
          options=PrepareOptions(template="{year}"))


def test_wrong_separator_no_header(tmp_path):
    src = rawfiles.grouplens(tmp_path / "raw")
    text = (src / "u.data").read_text().replace("\t", ",")
    rawfiles.write(src / "u.data", text)
    fails(tmp_path, "ml-100k", src, file="u.data", line=1, field=None, match="wrong separator")


def test_wrong_separator_header(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    text = (src / "behaviors.tsv").read_text().replace("\t", ",")
    rawfiles.write(src / "behaviors.tsv", text)
    fails(tmp_path, "tcf-tsv", src, file="behaviors.tsv", line=1, field="userid", match="wrong separator")


def test_wrong_field_count(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    with open(src / "news.tsv", "a") as f:
        f.write("N50\tFifth\textra column\n")
    fails(tmp_path, "tcf-tsv", src, file="news.tsv", line=6, field=None, match="expected 2 tab-separated fields")


def test_invalid_utf8(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    data = (src / "news.tsv").read_bytes().replace(b"Second item", b"Second \xff\xfe item")
    (src / "news.tsv").write_bytes(data)
    fails(tmp_path, "tcf-tsv", src, file="news.tsv", line=3, field=None, match="invalid UTF-8")


def test_user_with_fewer_than_three_interactions(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    with open(src / "behaviors.tsv", "a") as f:
        f.write("U4\tN10 N20\n")
    e = fails(tmp_path, "tcf-tsv", src, file="behaviors.tsv", line=5, field="userid", match="user 'U4' has 2")
    assert "--min-user-interactions 3" in str(e)
    ds = prepare("tcf-tsv", src, tmp_path / "ok", PrepareOptions(min_user_interactions=3))
    assert ds.n_users == 3


def test_mind_malformed_impression(tmp_path):
    src = rawfiles.mind(tmp_path / "raw")
    text = (src / "behaviors.tsv").read_text().replace("N2-1", "N2+1")
    rawfiles.write(src / "behaviors.tsv", text)
    fails(tmp_path, "mind", src, file="behaviors.tsv", line=2, field="impressions", match="'N2\\+1'")


def test_failed_prepare_keeps_previous_dataset(tmp_path):
    src = rawfiles.tcf_tsv(tmp_path / "raw")
    out = tmp_path / "out"
    before = prepare("tcf-tsv", src, out).fingerprint
    with open(src / "behaviors.tsv", "a") as f:
        f.write("U4\tN99 N10 N20\n")
    with pytest.raises(DataError):
        prepare("tcf-tsv", src, out)
    assert load_dataset(out).fingerprint == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a tcf dataset"):
        prepare("tcf-tsv", rawfiles.tcf_tsv(tmp_path / "raw"), tmp_path / "out")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_unknown_source_option_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'table.tex'"):
        prepare("table", tmp_path, tmp_path / "out", source_options={"tex": ["title"]})


def test_cli_reports_error_without_traceback(tmp_path, capsys):
    src = rawfiles.grouplens(tmp_path / "raw")
    rawfiles.write(src / "u.data", "1\t1\t5\tnoon\n")
    code = main(["data", "prepare", "ml-100k", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tcf: error: ") and "u.data:1" in err and "'timestamp'" in err
    assert "Traceback" not in err
