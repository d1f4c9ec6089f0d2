"""The one results record: version 1 files (no format_version) still read, a newer version refused by name."""

from __future__ import annotations

import json

import pytest

from tcf.experiments.results import load_runs
from tcf.experiments.sweep import RunFolderError, check_run_folder
from tcf.run.config import RunConfig, resolved
from tcf.run.results import FORMAT_VERSION, ResultsFormatError, RunRecord, read_results, write_results

PROVENANCE = {"packages": {"tcf": "0.1"}, "git": "abc", "hardware": {"cpus": 2}}
METRICS = {"test": {"n_users": 3, "metrics": {"ndcg@10": {"mean": 0.25, "ci95": [0.1, 0.4]}}}}

# the layouts tcf train and tcf zeroshot wrote before format_version (the study's records are such files)
V1_TRAIN = {"metrics": METRICS, "config": resolved(RunConfig(name="a", seed=7)), "name": "a",
            "dataset": {"path": "d", "fingerprint": "f", "n_users": 3, "n_items": 9},
            "seeds": {"python": 7, "numpy": 7, "torch": 7}, "best_epoch": 2, "epochs_run": 3, "history": [],
            "timings": {"train_seconds": 1.0, "seconds_to_best": 0.5, "wall_seconds": 2.0},
            "parameters": {"trainable": 10, "total": 10}, "text_cache": None, "distributed": {"world": 1},
            "per_user_columns": ["user_id", "ndcg@10"], **PROVENANCE}
V1_ZEROSHOT = {"task": "zeroshot", "name": "z", "valid": False, "invalid_reason": "backend down",
               "metrics": METRICS, "config": resolved(RunConfig(name="z", task="zeroshot")),
               "dataset": V1_TRAIN["dataset"], "seeds": {"candidates": 2020, "generation": None},
               "candidates": {"path": "c"}, "backend": {"name": "hf"}, "tokens": {}, "timings": {},
               "per_user_columns": [], **PROVENANCE}


@pytest.mark.parametrize("old", [V1_TRAIN, V1_ZEROSHOT], ids=["train", "zeroshot"])
def test_version_1_is_converted_and_keeps_every_key(tmp_path, old):
    (tmp_path / "results.json").write_text(json.dumps(old))
    record = read_results(tmp_path)
    assert record.format_version == FORMAT_VERSION
    assert record.task == old["config"]["task"] and record.valid is (old.get("valid", True) is not False)
    assert record.seeds["run"] == old["config"]["seed"]  # one shape: the run's seed beside the task's streams
    assert record.metric("ndcg@10") == (0.25, [0.1, 0.4])
    out = record.to_dict()
    assert {k: out[k] for k in old if k != "seeds"} == {k: v for k, v in old.items() if k != "seeds"}
    assert out["seeds"] == {**old["seeds"], "run": old["config"]["seed"]}


def test_written_record_reads_back_equal(tmp_path):
    record = RunRecord.from_dict(V1_TRAIN)
    write_results(tmp_path, record)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["format_version"] == FORMAT_VERSION and data["task"] == "train" and data["valid"] is True
    assert read_results(tmp_path) == record
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file and a rename


def test_newer_version_is_refused_by_name(tmp_path):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({**V1_TRAIN, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ResultsFormatError, match=f"format_version {FORMAT_VERSION + 1} is newer"):
        read_results(run)
    found, failed = load_runs(tmp_path / "runs")
    assert not found and f"format_version {FORMAT_VERSION + 1}" in failed[0][1]
    with pytest.raises(RunFolderError, match=f"format_version {FORMAT_VERSION + 1}"):
        check_run_folder(run, RunConfig(name="a", seed=7))
    assert check_run_folder(run, RunConfig(name="a", seed=7), force=True) == "new"


def test_not_a_record_is_refused(tmp_path):
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(ResultsFormatError, match="not a results record"):
        read_results(tmp_path)
