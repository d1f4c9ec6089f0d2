"""Cluster launcher: resources from the planner, the job table, and a sweep run for real by submitit's
local executor (subprocesses), with a job killed mid-run and resubmitted."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from tcf.cli import main
from tcf.errors import ConfigError
from tcf.experiments.launch import LauncherConfig, launch, minutes, plan_jobs, resources, selects
from tcf.experiments.planner import Hardware, parse_bytes, plan
from tcf.experiments.sweep import load_experiment

ROOT = Path(__file__).resolve().parent.parent


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first: the job's task and its tcf sweep."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def test_minutes_reads_slurm_and_short_forms():
    assert [minutes(t) for t in ("12:00:00", "2-00:00:00", "90m", "12h", 45, "1:30")] == [720, 2880, 90, 720, 45, 90]
    with pytest.raises(ConfigError):
        minutes("soon")


def test_an_option_is_selected_only_by_settings_that_run_it():
    from tcf.encoders.base import EncoderSpec

    hf = EncoderSpec(dtype="bf16", device_map="auto")
    assert selects("--dtype bf16", hf) and selects("--dtype bf16 --device-map auto", hf)
    assert not selects("--dtype bf16 --quantization int8", hf) and not selects("--backend vllm --dtype bf16", hf)
    assert not selects("--dtype bf16 --device-map auto", EncoderSpec(dtype="bf16"))
    assert selects("--dtype bf16 --quantization int4", EncoderSpec(dtype="bf16", quantization="int4"))


def test_scaling_dry_run_follows_the_planner_per_size(capsys):
    """Each OPT size of experiments/scaling.yaml gets the fewest GPUs on which an option its settings select
    (bf16, hf, device_map auto) fits, as the planner sizes it on the meta device (no download)."""
    exp = load_experiment(ROOT / "experiments" / "scaling.yaml")
    lc = LauncherConfig()  # scaling.yaml has no launcher: section: 8 x 80 GB nodes
    per_gpu, cpu = parse_bytes(lc.gpu_mem, "gpu"), parse_bytes(lc.cpu_mem, "cpu")
    seen = {}
    for run in exp.runs:
        if run.config.model.tower != "frozen" or run.config.encoder.model in seen:
            continue
        model, res = run.config.encoder.model, resources(run, lc)
        seen[model] = res
        verdict = res.verdict.removeprefix("extract: ")
        options = {o["name"]: o for o in plan(model, Hardware(res.gpus_per_node, per_gpu, cpu), finetune_layers=0,
                                              dtype="bf16", batch=32)["extraction"][0]["options"]}
        assert options[verdict]["fits"], (model, verdict)
        if res.gpus_per_node > 1:  # on fewer GPUs only options the run cannot use (int8, vLLM) fit, or none
            fewer = plan(model, Hardware(res.gpus_per_node // 2, per_gpu, cpu), finetune_layers=0, dtype="bf16",
                         batch=32)["extraction"][0]["options"]
            assert not [o for o in fewer if o["fits"] and ("sharding" in o["name"] or "one GPU" in o["name"])
                        and "int" not in o["name"]], model
    small = ["facebook/opt-125m", "facebook/opt-350m", "facebook/opt-1.3b", "facebook/opt-2.7b", "facebook/opt-6.7b",
             "facebook/opt-13b", "facebook/opt-30b"]
    for model in small:  # the planner's own first choice on one 80 GB GPU
        assert seen[model].gpus_per_node == 1
        assert seen[model].verdict == "extract: " + plan(model, Hardware(1, per_gpu, cpu), finetune_layers=0,
                                                          dtype="bf16", batch=32)["extraction"][0]["chosen"]
    # 66B: one GPU only fits int8, which changes the vectors; bf16 layers over two GPUs do
    assert plan("facebook/opt-66b", Hardware(1, per_gpu, cpu), finetune_layers=0, dtype="bf16")["extraction"][0][
        "chosen"].startswith("int8")
    assert seen["facebook/opt-66b"].gpus_per_node == 2 and "device_map" in seen["facebook/opt-66b"].verdict
    assert seen["facebook/opt-175b"].gpus_per_node == 8

    assert main(["sweep", str(ROOT / "experiments" / "scaling.yaml"), "--dry-run", "--out", "/nonexistent/x"]) == 0
    text = capsys.readouterr().out
    assert "60 run(s): 0 done, 60 to submit" in text and "array:" in text and not Path("/nonexistent/x").exists()
    assert "--run scaling-frozen-sasrec-s0-opt-66b-" in text and "2 GPU" in text


def test_tcf_paper_config_dry_run(capsys):
    assert main(["sweep", str(ROOT / "experiments" / "tcf-paper.yaml"), "--dry-run", "--out", "/nonexistent/p"]) == 0
    text = capsys.readouterr().out
    exp = load_experiment(ROOT / "experiments" / "tcf-paper.yaml")
    models = {r.config.encoder.model for r in exp.runs if r.config.model.tower != "id"}
    assert models == {f"facebook/opt-{s}" for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")}
    assert {r.config.model.tower for r in exp.runs} == {"id", "frozen", "finetune"}
    assert {r.config.model.head for r in exp.runs} == {"sasrec", "dssm"}
    assert f"{len(exp.runs)} run(s)" in text and "fine-tune:" in text and "3-00:00:00" in text  # the 66B override


def test_resources_override_per_axis_value(tiny_dataset, tmp_path):
    doc = {"name": "o", "data": {"dataset": str(tiny_dataset.path)}, "axes": {"seed": [1, 2]},
           "launcher": {"gpus_per_node": 4, "resources": {"seed": {2: {"gpus": 3, "time": "2h", "mem": "64GB"}}}}}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(doc))
    exp = load_experiment(tmp_path / "o.yaml")
    from tcf.experiments.launch import launcher_config

    jobs = plan_jobs(exp, tmp_path / "out", launcher_config(exp))
    a, b = (j.res for j in jobs)
    assert (a.gpus_per_node, a.time_min) == (1, 720) and (b.gpus_per_node, b.time_min, b.mem_gb) == (3, 120, 64)
    bad = {**doc, "launcher": {"resources": {"seed": {2: {"gpu": 3}}}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="unknown"):
        plan_jobs(load_experiment(tmp_path / "bad.yaml"), tmp_path / "out", launcher_config(load_experiment(
            tmp_path / "bad.yaml")))


@pytest.mark.slow
def test_local_executor_runs_the_sweep_and_resubmits_a_killed_run(tiny_dataset, tmp_path):
    pytest.importorskip("submitit")
    doc = {"name": "L", "data": {"dataset": str(tiny_dataset.path)}, "cache_root": str(tmp_path / "cache"),
           "model": {"dim": 16, "max_len": 8}, "train": {"epochs": 60, "batch_size": 2, "patience": 1000},
           "eval": {"bootstrap": 20}, "axes": {"seed": [0, 1]}, "launcher": {"gpus_per_node": 0, "cpus_per_gpu": 1}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(doc))
    exp, out = load_experiment(tmp_path / "exp.yaml"), tmp_path / "out"
    first, second = (out / r.id for r in exp.runs)
    jobs = launch(exp, out, "submitit-local", wait=False, log=lambda _: None)
    assert [j.state for j in jobs] == ["new", "new"] and all(j.job_id for j in jobs)
    killed = jobs[1]
    deadline = time.time() + 300
    while time.time() < deadline and not (second / "checkpoints" / "last.pt").is_file():
        time.sleep(0.05)
    tree = [killed.handle._process.pid, *descendants(killed.handle._process.pid)]
    for pid in reversed(tree):  # the job's whole process tree at once, deepest first: a node lost mid-training
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    jobs[0].handle.result()
    assert (first / "results.json").is_file(), (first / "launch.log").read_text()[-3000:]
    assert not (second / "results.json").exists(), "the kill came too late to test a resubmission"
    done_before = (first / "results.json").read_bytes()

    again = launch(exp, out, "submitit-local", log=lambda _: None)  # only the unfinished run goes out again
    assert [j.state for j in again] == ["done", "resume"] and again[0].job_id is None
    assert (first / "results.json").read_bytes() == done_before
    resumed = json.loads((second / "results.json").read_text())
    assert resumed["epochs_run"] == 60 and [h["epoch"] for h in resumed["history"]] == list(range(1, 61))
    log = (second / "launch.log").read_text()
    assert log.count("==== ") == 2 and "--run " + exp.runs[1].id in log
    saved = json.loads((out / "launch" / "jobs.json").read_text())
    assert set(saved) == {exp.runs[0].id, exp.runs[1].id} and saved[exp.runs[1].id]["job_id"] == again[1].job_id
