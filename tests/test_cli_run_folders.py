"""A run folder is never overwritten unasked: tcf train, tcf zeroshot and tcf run skip a finished run of
the same settings, refuse one of other settings (naming them) and replace it only with --force."""

from __future__ import annotations

import json

import yaml

from fakeserver import FakeServer
from tcf.cli import main
from tcf.experiments.sweep import config_changes, load_experiment


def train_args(dataset, out, *extra):
    return ["train", "--quiet", "--out", str(out), "--set", f"data.dataset={dataset.path}", "model.dim=16",
            "model.max_len=8", "train.epochs=1", "train.batch_size=16", "eval.bootstrap=0", *extra]


def test_train_into_a_finished_run_of_other_settings_is_refused(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_dataset, out)) == 0
    first = (out / "results.json").read_bytes()
    capsys.readouterr()

    assert main(train_args(tiny_dataset, out, "train.lr=0.002", "model.dropout=0.1")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("tcf: error:") and "--force" in err[0]
    assert "train.lr: 0.001 -> 0.002" in err[0] and "model.dropout: 0.2 -> 0.1" in err[0]
    assert (out / "results.json").read_bytes() == first

    assert main(train_args(tiny_dataset, out)) == 0  # the same settings: done, skipped
    captured = capsys.readouterr()
    assert "already holds a finished run" in captured.err and f"results: {out / 'results.json'}" in captured.out
    assert "test  hr@10" in captured.out and (out / "results.json").read_bytes() == first

    assert main(train_args(tiny_dataset, out, "train.lr=0.002", "--force")) == 0
    assert json.loads((out / "results.json").read_text())["config"]["train"]["lr"] == 0.002


def test_train_into_an_unfinished_run(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_dataset, out)) == 0
    (out / "results.json").unlink()  # as if killed after its last checkpoint
    last = (out / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(train_args(tiny_dataset, out, "model.dim=8")) == 2
    err = capsys.readouterr().err
    assert "unfinished run" in err and "model.dim: 16 -> 8" in err
    assert main(train_args(tiny_dataset, out)) == 2  # the same settings: continue it, but only when asked
    assert "--resume" in capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").read_bytes() == last and not (out / "results.json").exists()
    assert main(train_args(tiny_dataset, out, "--resume")) == 0 and (out / "results.json").is_file()


def test_zeroshot_into_a_finished_run(tiny_dataset, tmp_path, capsys):
    with FakeServer(chat=lambda m: "2, 1") as srv:
        cfg = tmp_path / "zs.yaml"
        cfg.write_text(f"task: zeroshot\ncache_root: {tmp_path / 'cache'}\ndata:\n  dataset: {tiny_dataset.path}\n"
                       f"eval:\n  bootstrap: 0\nzeroshot:\n  n_candidates: 5\n  history_len: 3\n  backend: openai\n"
                       f"  api_base: {srv.url}\n  model: fake\n")
        out = tmp_path / "zs"
        common = ["zeroshot", "--config", str(cfg), "--out", str(out), "--quiet"]
        assert main([*common, "--limit", "4"]) == 0
        first = (out / "results.json").read_bytes()
        capsys.readouterr()
        assert main([*common, "--limit", "6"]) == 2
        assert "zeroshot.limit: 4 -> 6" in capsys.readouterr().err
        assert main([*common, "--limit", "4"]) == 0
        assert "already holds a finished run" in capsys.readouterr().err
        assert (out / "results.json").read_bytes() == first
        assert main([*common, "--limit", "6", "--force"]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["zeroshot"]["limit"] == 6


def test_an_edited_experiment_is_not_mixed_with_its_earlier_runs(tiny_dataset, tmp_path, capsys):
    doc = {"name": "e", "data": {"dataset": str(tiny_dataset.path)}, "model": {"dim": 16, "max_len": 8},
           "train": {"epochs": 1, "batch_size": 16}, "eval": {"bootstrap": 0}, "axes": {"seed": [0, 1]}}
    path, out = tmp_path / "e.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(doc))
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--no-report"]) == 0
    before = {p: p.read_bytes() for p in out.glob("*/results.json")}
    assert len(before) == 2
    capsys.readouterr()

    doc["train"]["batch_size"] = 8  # another base: every run id changes
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "2 run(s) this experiment does not have" in err and "train.batch_size: 16 -> 8" in err
    assert {p: p.read_bytes() for p in out.glob("*/results.json")} == before

    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--no-report", "--force"]) == 0
    assert len(list(out.glob("*/results.json"))) == 4  # beside them, the earlier ones untouched
    assert all(p.read_bytes() == b for p, b in before.items())
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--no-report", "--list"]) == 0


def test_a_run_folder_of_other_settings_fails_that_run_only(tiny_dataset, tmp_path, capsys):
    """A run id is the hash of the settings that differ from the defaults, so a default that changed since
    lands a run in the folder of one made under the old default: refused, not skipped as done."""
    doc = {"name": "e", "data": {"dataset": str(tiny_dataset.path)}, "model": {"dim": 16, "max_len": 8},
           "train": {"epochs": 1, "batch_size": 16}, "eval": {"bootstrap": 0}, "axes": {"seed": [0, 1]}}
    path, out = tmp_path / "e.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(doc))
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--no-report"]) == 0
    stale = out / load_experiment(path).runs[0].id / "results.json"
    saved = json.loads(stale.read_text())
    saved["config"]["model"]["n_heads"] = 1  # made when the default was another
    stale.write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--no-report"]) == 1
    captured = capsys.readouterr()
    assert "model.n_heads: 1 -> 2" in captured.err and "1 already done" in captured.out
    assert json.loads(stale.read_text())["config"]["model"]["n_heads"] == 1


def test_config_changes_ignore_the_name_and_keys_added_since():
    from tcf.config import to_dict
    from tcf.experiments.config import RunConfig

    new = to_dict(RunConfig(name="b"))
    old = to_dict(RunConfig(name="a"))
    del old["train"]["gather_negatives"]  # a setting added later, at a default that keeps the old behaviour
    old["eval"]["mask_history"] = True  # the old spelling of "all"
    assert config_changes(old, new) == []
    old["seed"] = 1
    assert config_changes(old, new) == ["seed: 1 -> 2020"]
