"""Experiment tracking against a real local MLflow store (SQLite), read back; an unreachable server costs a
bounded delay and one warning, never the run."""

from __future__ import annotations

import json
import time

import pytest

from tcf.experiments.config import load_config
from tcf.tracking import TrackingConfig, final_metrics, metric_key
from tcf.train import loop

pytest.importorskip("mlflow")


def cfg_for(dataset, tmp_path, *overrides):
    return load_config(None, [f"data.dataset={dataset.path}", "model.dim=16", "model.max_len=8", "train.epochs=3",
                              "train.batch_size=16", "train.patience=100", "eval.bootstrap=50", "name=tracked",
                              *overrides])


def test_metric_names_and_final_metrics():
    assert metric_key("valid_ndcg@10") == "valid_ndcg_at_10"
    r = {"metrics": {"test": {"metrics": {"ndcg@10": {"mean": 0.25, "ci95": [0.2, 0.3]}, "hr@10": {"mean": 0.5}}}}}
    assert final_metrics(r) == {"test_ndcg_at_10": 0.25, "test_ndcg_at_10_ci_low": 0.2, "test_ndcg_at_10_ci_high": 0.3,
                                "test_hr_at_10": 0.5}
    with pytest.raises(Exception, match="timeout_s"):
        TrackingConfig(timeout_s=-1)


@pytest.mark.slow
def test_a_tracked_run_is_in_the_store(tiny_dataset, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    cfg = cfg_for(tiny_dataset, tmp_path, "tracking.enabled=true", f"tracking.uri={uri}", "tracking.experiment=exp1",
                  "tracking.timeout_s=300")
    results = loop.train(cfg, tmp_path / "run", progress=False)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp1")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["model.dim"] == "16" and run.data.params["train.epochs"] == "3"
    assert not any(k.startswith("tracking.") for k in run.data.params)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3]
    assert [m.value for m in losses] == pytest.approx([h["loss"] for h in results["history"]])
    valid = client.get_metric_history(run.info.run_id, "valid_ndcg_at_10")
    assert [m.value for m in valid] == pytest.approx([h["valid_ndcg@10"] for h in results["history"]])
    test = results["metrics"]["test"]["metrics"]["ndcg@10"]
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(test["mean"])
    assert run.data.metrics["test_ndcg_at_10_ci_low"] == pytest.approx(test["ci95"][0])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "provenance.json", "results_record.json"} <= names
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())
    assert state["run_id"] == run.info.run_id  # a resumed run continues this MLflow run
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["metrics"]["test"]["metrics"]["ndcg@10"]["mean"] == test["mean"]


@pytest.mark.slow
def test_an_unreachable_server_costs_a_bounded_delay_and_a_warning(tiny_dataset, tmp_path, capsys):
    base = cfg_for(tiny_dataset, tmp_path)
    t0 = time.perf_counter()
    loop.train(base, tmp_path / "plain", progress=False)
    plain = time.perf_counter() - t0
    cfg = cfg_for(tiny_dataset, tmp_path, "tracking.enabled=true", "tracking.uri=http://127.0.0.1:9",
                  "tracking.timeout_s=3")
    t0 = time.perf_counter()
    loop.train(cfg, tmp_path / "tracked", progress=False)
    tracked = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert (tmp_path / "tracked" / "results.json").is_file()
    assert err.count("experiment tracking") == 1 and "http://127.0.0.1:9" in err
    assert tracked < plain + 3 + 10  # the timeout, plus slack for a busy machine
