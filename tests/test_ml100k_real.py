"""The real ml-100k that the recbole package ships (installed by the README's setup command)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tcf.cli import main
from tcf.data import ensure_dataset, load_dataset, prepare
from tcf.data.sources.ml100k import find_recbole_copy


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    assert find_recbole_copy() is not None, "install the ml-100k copy: pip install --no-deps recbole==1.2.1"
    return prepare("ml-100k", None, tmp_path_factory.mktemp("ml") / "ml-100k")


def test_file_facts(real):
    s = real.meta["stats"]
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (943, 1682, 100_000)
    assert (s["n_valid"], s["n_test"], s["n_train"]) == (943, 943, 100_000 - 2 * 943)
    assert s["timestamp_ties"] == 75_772
    assert s["non_ascii_texts"] == 9
    items = real.items.set_index("item_id")
    assert items.loc[267, "title"] == "unkonwn"  # RecBole's spelling of GroupLens' "unknown"
    assert items.loc[1412, "year"] == "V"
    assert real.item_texts()[1] == "Toy Story"


def test_ties_follow_file_order(real):
    """Among one user's interactions with the same timestamp, the earlier file line comes first."""
    raw = np.loadtxt(find_recbole_copy() / "ml-100k.inter", skiprows=1, dtype=np.int64)
    user = 1
    rows = raw[raw[:, 0] == user]
    order = np.lexsort((np.arange(len(rows)), rows[:, 3]))
    uid = int(real.users.index[real.users["source_id"] == str(user)][0]) + 1
    assert real.sequence(uid).tolist() == rows[order, 1].tolist()  # item ids equal source ids here


def test_prepare_is_byte_identical(real, tmp_path):
    again = prepare("ml-100k", None, tmp_path / "again")
    for name in ("items.parquet", "interactions.parquet", "users.parquet", "dataset.json"):
        assert (real.path / name).read_bytes() == (again.path / name).read_bytes(), name
    assert again.fingerprint == real.fingerprint


def test_ensure_dataset_prepares_once(tmp_path):
    ds = ensure_dataset("ml-100k", root=tmp_path)
    mtime = (tmp_path / "ml-100k" / "items.parquet").stat().st_mtime_ns
    again = ensure_dataset("ml-100k", root=tmp_path)
    assert again.fingerprint == ds.fingerprint
    assert (tmp_path / "ml-100k" / "items.parquet").stat().st_mtime_ns == mtime


def test_cli_prepare_and_stats(tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["data", "prepare", "ml-100k", "--out", str(out)]) == 0
    assert main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "users        943" in text and "items        1,682" in text and "interactions 100,000" in text
    assert "valid 943, test 943" in text
    assert load_dataset(out).meta["stats"]["n_users"] == 943


def test_console_script_help():
    """The installed `tcf` script answers --help for every subcommand."""
    for args in ([], ["data"], ["data", "prepare"], ["data", "stats"], ["data", "sources"]):
        r = subprocess.run([sys.executable, "-m", "tcf.cli", *args, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "usage: tcf" in r.stdout


def test_installed_console_script():
    from pathlib import Path

    script = Path(sys.executable).parent / "tcf"
    assert script.exists(), "the package must install a `tcf` console script"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("tcf ")
