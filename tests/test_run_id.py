"""One run id (tcf.run.config.run_id), whoever starts the run: tcf train into runs/ and a sweep of the
same file into runs/ share a folder and skip each other's finished work."""

from __future__ import annotations

import yaml

from tcf.cli import main
from tcf.experiments.sweep import load_experiment
from tcf.hashing import json_digest
from tcf.run.config import load_config, resolved, run_id


def write_config(tmp_path, dataset, name="same"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "data": {"dataset": str(dataset.path)},
                                    "model": {"dim": 16, "max_len": 8}, "train": {"epochs": 1, "batch_size": 16},
                                    "eval": {"bootstrap": 0}}))
    return path


def test_a_sweep_point_has_the_id_of_the_same_config(tiny_dataset, tmp_path):
    path = write_config(tmp_path, tiny_dataset)
    (run,) = load_experiment(path).runs
    assert run.id == run_id(load_config(path)) == run_id(run.config)


def test_train_then_sweep_share_a_folder(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, tiny_dataset)
    assert main(["train", "--quiet", "--config", str(path)]) == 0
    folder = tmp_path / "runs" / run_id(load_config(path))
    first = (folder / "results.json").read_bytes()
    capsys.readouterr()
    assert main(["sweep", "--quiet", "--no-report", str(path), "--out", "runs"]) == 0
    assert "0 run(s) done, 1 already done" in capsys.readouterr().out
    assert (folder / "results.json").read_bytes() == first


def test_sweep_then_train_share_a_folder(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, tiny_dataset)
    assert main(["sweep", "--quiet", "--no-report", str(path), "--out", "runs"]) == 0
    folder = tmp_path / "runs" / run_id(load_config(path))
    first = (folder / "results.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--quiet", "--config", str(path)]) == 0
    assert "already holds a finished run" in capsys.readouterr().err
    assert (folder / "results.json").read_bytes() == first


def test_train_finds_a_folder_named_by_the_older_id(tiny_dataset, tmp_path, monkeypatch, capsys):
    """Before one run id, tcf train named runs/NAME-<hash of the whole config>: such a folder is still used."""
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, tiny_dataset)
    cfg = load_config(path)
    older = tmp_path / "runs" / f"{cfg.name}-{json_digest(resolved(cfg), 8)}"
    assert main(["train", "--quiet", "--config", str(path), "--out", str(older)]) == 0
    capsys.readouterr()
    assert main(["train", "--quiet", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"using {older.relative_to(tmp_path)}" in err and "already holds a finished run" in err
    assert not (tmp_path / "runs" / run_id(cfg)).exists()
