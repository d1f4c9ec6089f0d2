"""Sweeps: expansion of axes and runs, stable ids, shards, skip / resume / failure handling, shared extraction."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tcf.cli import main
from tcf.errors import ConfigError
from tcf.experiments.sweep import expand, load_experiment, parse_shard, run_sweep, shard

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def tiny_base(dataset, tmp_path, **extra) -> dict:
    return {"name": "t", "data": {"dataset": str(dataset.path)}, "cache_root": str(tmp_path / "cache"),
            "model": {"dim": 16, "max_len": 8}, "encoder": {"max_tokens": 12},
            "train": {"epochs": 1, "batch_size": 16}, "eval": {"bootstrap": 20}, **extra}


def test_axes_times_runs_with_per_run_axes():
    exp = expand({"name": "q", "axes": {"model.head": ["sasrec", "dssm"], "seed": [0, 1]},
                  "runs": [{"model.tower": "id"},
                           {"model": {"tower": "frozen"}, "axes": {"encoder.model": ["a-model", "/x/b-model"]}}]})
    assert len(exp.runs) == 2 * 2 + 2 * 2 * 2
    first = exp.runs[0]
    assert first.name == "q-id-sasrec-s0" and first.config.model.tower == "id" and first.config.seed == 0
    assert first.id.startswith("q-id-sasrec-s0-") and len(first.id.rsplit("-", 1)[1]) == 8
    text = [r for r in exp.runs if r.config.model.tower == "frozen"]
    assert {r.config.encoder.model for r in text} == {"a-model", "/x/b-model"}
    assert "b-model" in text[1].name  # the folder name of a path, not the path
    assert len({r.id for r in exp.runs}) == len(exp.runs)


def test_a_setting_a_run_fixes_is_not_swept_by_the_top_axis():
    exp = expand({"name": "q", "axes": {"model.head": ["sasrec", "dssm"], "seed": [0, 1]},
                  "runs": [{"model.tower": "id"}, {"name": "zs", "model.head": "dssm", "train.lr": 0.01}]})
    pinned = [r for r in exp.runs if r.name.startswith("zs")]
    assert [r.name for r in pinned] == ["zs-s0", "zs-s1"] and {r.config.model.head for r in pinned} == {"dssm"}
    assert len(exp.runs) == 4 + 2


def test_run_id_is_a_hash_of_the_settings_not_the_name():
    a = expand({"name": "one", "train": {"lr": 0.01}}).runs[0]
    b = expand({"name": "two", "train": {"lr": 0.01}}).runs[0]
    c = expand({"name": "one", "train": {"lr": 0.02}}).runs[0]
    assert a.id.split("-")[-1] == b.id.split("-")[-1] != c.id.split("-")[-1]
    assert expand({"name": "one", "train": {"lr": 0.01}}).runs[0].id == a.id  # stable
    assert len(expand({"runs": [{"seed": 1}, {"seed": 1}]}).runs) == 1  # the same settings twice: one run


def test_a_plain_run_config_is_one_run(tmp_path):
    path = EXPERIMENTS / "ml100k-sasrec-id.yaml"
    exp = load_experiment(path, ["train.epochs=3"])
    assert len(exp.runs) == 1 and exp.runs[0].config.train.epochs == 3 and exp.name == "ml100k-sasrec-id"


@pytest.mark.parametrize("doc, message", [
    ({"runs": [{}, {"model.towr": "id"}]}, r"x.yaml: runs\[1\]: unknown setting 'model.towr'"),
    ({"axes": {"seed": 3}}, r"x.yaml: axes.seed: an axis needs a non-empty list"),
    ({"axes": {"train.lr": ["fast"]}}, r"x.yaml: runs\[0\] \{'train.lr': 'fast'\}: train.lr: expected a number"),
    ({"runs": "id"}, r"runs must be a non-empty list"),
    ({"report": [1]}, r"report must be a mapping"),
])
def test_bad_experiment_files_name_the_place(tmp_path, doc, message):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


def test_shards_partition_the_runs_deterministically():
    runs = expand({"axes": {"seed": list(range(7))}}).runs
    parts = [shard(runs, i, 3) for i in range(3)]
    assert sorted(r.id for p in parts for r in p) == sorted(r.id for r in runs)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert [r.id for r in shard(expand({"axes": {"seed": list(range(7))}}).runs, 1, 3)] == [r.id for r in parts[1]]
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (0, 1)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError, match="--shard must be i/n"):
            parse_shard(bad)


def test_sweep_skips_finished_runs_and_survives_a_failing_one(tiny_dataset, tmp_path, capsys):
    doc = tiny_base(tiny_dataset, tmp_path, runs=[{"model.tower": "id", "seed": 1},
                                                  {"model.tower": "frozen", "encoder.model": str(tmp_path / "nope")},
                                                  {"model.tower": "id", "model.head": "dssm"}])
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "exp.yaml"), "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    exp = load_experiment(tmp_path / "exp.yaml")
    ok = [r for r in exp.runs if r.config.model.tower == "id"]
    bad = next(r for r in exp.runs if r.config.model.tower == "frozen")
    assert all((out / r.id / "results.json").is_file() for r in ok)
    assert not (out / bad.id / "results.json").exists() and "extraction of" in (out / bad.id / "error.txt").read_text()
    assert f"failed: {bad.id}" in captured.err and "2 run(s) done" in captured.out
    assert (out / "report" / "report.md").is_file()
    plan = json.loads((out / "experiment.json").read_text())
    assert [r["id"] for r in plan["runs"]] == [r.id for r in exp.runs]

    stamps = {r.id: (out / r.id / "results.json").stat().st_mtime_ns for r in ok}
    summary = run_sweep(exp, out, progress=False, log=lambda _: None)
    assert sorted(summary.skipped) == sorted(r.id for r in ok) and not summary.ran and list(summary.failed) == [bad.id]
    assert stamps == {r.id: (out / r.id / "results.json").stat().st_mtime_ns for r in ok}


def test_each_cache_is_extracted_once_before_training(tiny_dataset, tiny_model, tmp_path, monkeypatch):
    from tcf.encoders import extract as extract_mod
    from tcf.train import loop

    events, real_extract, real_train = [], extract_mod.extract, loop.train

    def spy_extract(*a, **k):
        r = real_extract(*a, **k)
        events.append(("extract", r.computed_rows))
        return r

    def spy_train(cfg, *a, **k):
        events.append(("train", cfg.name))
        return real_train(cfg, *a, **k)

    monkeypatch.setattr(extract_mod, "extract", spy_extract)
    monkeypatch.setattr(loop, "train", spy_train)
    doc = tiny_base(tiny_dataset, tmp_path, encoder={"model": str(tiny_model), "max_tokens": 12},
                    model={"dim": 16, "max_len": 8, "tower": "frozen"},
                    axes={"model.head": ["sasrec", "dssm"], "seed": [0, 1]})
    summary = run_sweep(expand(doc), tmp_path / "out", progress=False, log=lambda _: None)
    assert len(summary.ran) == 4 and not summary.failed
    computed = [e for e in events if e[0] == "extract" and e[1] > 0]
    assert len(computed) == 1 and events.index(computed[0]) < events.index(next(e for e in events if e[0] == "train"))
    results = [json.loads((tmp_path / "out" / r / "results.json").read_text()) for r in summary.ran]
    assert len({r["text_cache"]["cache"] for r in results}) == 1


def test_cli_list_prints_the_runs_without_running(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"name": "e", "axes": {"seed": [1, 2, 3]}}))
    assert main(["sweep", str(tmp_path / "e.yaml"), "--list", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split()[1].startswith("e-s1-") and not (tmp_path / "o").exists()
    assert main(["sweep", str(tmp_path / "e.yaml"), "--shard", "3/2"]) == 2


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
def test_shipped_experiments_expand(name):
    exp = load_experiment(EXPERIMENTS / f"{name}.yaml")
    assert exp.runs and len({r.id for r in exp.runs}) == len(exp.runs)


CHILD = """
import sys, time
from tcf.train import loop
real = loop.step_loss
def slow(*a, **k):
    time.sleep(0.1)
    return real(*a, **k)
loop.step_loss = slow
from tcf.cli import main
sys.exit(main(["sweep", sys.argv[1], "--out", sys.argv[2], "--quiet", "--no-report"]))
"""


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_finished_runs(tiny_dataset, tmp_path):
    doc = tiny_base(tiny_dataset, tmp_path, train={"epochs": 4, "batch_size": 8, "patience": 100},
                    axes={"seed": [0, 1, 2]})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(doc))
    exp, out = load_experiment(tmp_path / "exp.yaml"), tmp_path / "out"
    first, second = (out / exp.runs[0].id, out / exp.runs[1].id)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "exp.yaml"), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and child.poll() is None:
        if (first / "results.json").is_file() and (second / "checkpoints" / "last.pt").is_file():
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (first / "results.json").is_file(), child.stderr.read().decode()[-2000:]
    assert not (second / "results.json").exists(), "the kill came too late to test a resume"
    done_before = (first / "results.json").read_bytes()
    logs = []
    summary = run_sweep(exp, out, progress=False, log=logs.append)
    assert summary.skipped == [exp.runs[0].id] and summary.ran == [exp.runs[1].id, exp.runs[2].id]
    assert (first / "results.json").read_bytes() == done_before
    assert any(exp.runs[1].id in line and "resuming" in line for line in logs)
    resumed = json.loads((second / "results.json").read_text())
    assert resumed["epochs_run"] == 4 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]


def test_order_seed_puts_a_whole_seed_before_the_next_in_file_order_inside():
    from tcf.experiments.sweep import ordered

    exp = expand({"name": "o", "axes": {"seed": [7, 3]},
                  "runs": [{"model.tower": "id"}, {"model.tower": "frozen", "axes": {"model.head": ["sasrec", "dssm"]}}]})
    by_seed = ordered(exp.runs, "seed")
    assert [r.config.seed for r in by_seed] == [7, 7, 7, 3, 3, 3]
    assert [r.id for r in by_seed if r.config.seed == 7] == [r.id for r in exp.runs if r.config.seed == 7]
    assert ordered(exp.runs, "file") == exp.runs
    with pytest.raises(ConfigError, match="--order must be one of file, seed"):
        ordered(exp.runs, "size")


HOLDER_THAT_FORKS = """
import os, sys, time
from tcf.fsutil import try_lock
with try_lock(sys.argv[1]) as got:
    assert got
    ready, tell = os.pipe()
    if os.fork() == 0:  # a worker (a DataLoader's, say) that outlives its parent
        os.write(tell, b"x")  # os.fork has returned here: the at-fork handlers have run
        time.sleep(20)
        os._exit(0)
    os.read(ready, 1)
    os._exit(0)  # the holder dies mid-run, without unwinding
"""


def test_a_claim_dies_with_its_holder_not_with_the_holders_forked_children(tmp_path):
    """A flock belongs to the open file, which a forked child shares: without closing it there, a killed
    holder's leftover worker kept its run "held by another process" for every other claimer."""
    import subprocess
    import sys

    from tcf.fsutil import try_lock

    lock = tmp_path / "run" / ".claim"
    subprocess.run([sys.executable, "-c", HOLDER_THAT_FORKS, str(lock)], check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the leftover child holds no pytest pipe
    with try_lock(lock) as got:
        assert got


def test_claim_passes_over_a_held_run_then_waits_for_it_and_resumes_it_if_its_holder_stops(tiny_dataset, tmp_path):
    import threading

    from tcf.experiments.sweep import CLAIM_FILE
    from tcf.fsutil import try_lock

    exp = expand(tiny_base(tiny_dataset, tmp_path, axes={"seed": [0, 1, 2]}))
    out = tmp_path / "out"
    held = exp.runs[1]
    logs, result = [], {}
    with try_lock(out / held.id / CLAIM_FILE) as got:  # another open file: flock conflicts as another process's
        assert got
        worker = threading.Thread(target=lambda: result.update(
            summary=run_sweep(exp, out, progress=False, log=logs.append, claim=True)))
        worker.start()
        deadline = time.time() + 120
        while time.time() < deadline and not any(line.startswith("waiting for") for line in logs):
            time.sleep(0.05)
        assert any(held.id in line and "another process is running it" in line for line in logs)
        assert (out / exp.runs[0].id / "results.json").is_file() and (out / exp.runs[2].id / "results.json").is_file()
        assert not (out / held.id / "results.json").exists() and worker.is_alive()
    worker.join(120)  # the holder let go without finishing: this process runs it
    summary = result["summary"]
    assert summary.ran == [exp.runs[0].id, exp.runs[2].id, held.id] and not summary.held
    assert (out / held.id / "results.json").is_file()


@pytest.mark.parametrize("force", [False, True])
def test_claim_reads_the_folder_again_under_the_lock(tiny_dataset, tmp_path, monkeypatch, force):
    """A run another process finished after this one listed its work is skipped, with --force too."""
    from tcf.experiments import sweep as sw

    exp = expand(tiny_base(tiny_dataset, tmp_path, axes={"seed": [0, 1]}))
    out, first = tmp_path / "out", exp.runs[0]
    real = sw._fs_now

    def another_process_finishes_the_first_run(folder):
        assert run_sweep(exp, out, progress=False, log=lambda _: None, only=[first.id]).ran == [first.id]
        return real(folder)

    monkeypatch.setattr(sw, "_fs_now", another_process_finishes_the_first_run)
    stamp = None
    summary = run_sweep(exp, out, progress=False, log=lambda _: None, claim=True, force=force)
    stamp = (out / first.id / "results.json").stat().st_mtime_ns
    assert summary.ran == [exp.runs[1].id] and summary.skipped == [first.id]
    assert stamp == (out / first.id / "results.json").stat().st_mtime_ns


def test_atomic_path_gives_each_writer_its_own_temporary_file(tmp_path):
    from tcf.fsutil import atomic_path

    target = tmp_path / "index.bin"
    with atomic_path(target) as a, atomic_path(target) as b:  # two writers of one file at once
        assert a != b
        a.write_bytes(b"A" * 10)
        b.write_bytes(b"B" * 10)
    assert target.read_bytes() == b"A" * 10 and sorted(p.name for p in tmp_path.iterdir()) == ["index.bin"]


def test_claim_does_not_retry_a_run_another_process_failed_in_this_sitting(tiny_dataset, tmp_path):
    exp = expand(tiny_base(tiny_dataset, tmp_path, axes={"seed": [0, 1]}))
    out = tmp_path / "out"
    error = out / exp.runs[0].id / "error.txt"
    error.parent.mkdir(parents=True)
    error.write_text("ValueError: boom\n")
    os.utime(error, (time.time() + 60, time.time() + 60))  # written after this sweep started
    summary = run_sweep(exp, out, progress=False, log=lambda _: None, claim=True)
    assert summary.ran == [exp.runs[1].id] and "failed in another process" in summary.failed[exp.runs[0].id]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # the clock probe is removed
    os.utime(error, (time.time() - 60, time.time() - 60))  # a failure of an earlier sitting is retried
    summary = run_sweep(exp, out, progress=False, log=lambda _: None, claim=True)
    assert summary.ran == [exp.runs[0].id]


def test_claim_and_shard_are_refused_together(tmp_path):
    with pytest.raises(ConfigError, match="use one or the other"):
        run_sweep(expand({"name": "c", "axes": {"seed": [0, 1]}}), tmp_path / "out", shard_of=(0, 2), claim=True,
                  progress=False, log=lambda _: None)


CLAIMER = """
import sys, time
from tcf.train import loop
real = loop.step_loss
def slow(*a, **k):
    time.sleep(0.1)
    return real(*a, **k)
loop.step_loss = slow
from tcf.cli import main
sys.exit(main(["sweep", sys.argv[1], "--out", sys.argv[2], "--quiet", "--no-report", "--claim"]))
"""


@pytest.mark.slow
def test_two_claiming_processes_share_the_runs_and_run_each_once(tiny_dataset, tmp_path):
    doc = tiny_base(tiny_dataset, tmp_path, train={"epochs": 2, "batch_size": 8, "patience": 100},
                    axes={"seed": [0, 1, 2, 3]})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(doc))
    exp, out = load_experiment(tmp_path / "exp.yaml"), tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path / "exp.yaml"), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in logs]
    started = [re.findall(r"^\[\d+/\d+\] (\S+)$", o, re.M) for o, _ in logs]  # "[k/n] ID", not "ID: ..."
    assert sorted(started[0] + started[1]) == sorted(r.id for r in exp.runs), logs  # each run started once
    assert started[0] and started[1], logs  # and both did some
    for r in exp.runs:
        rec = json.loads((out / r.id / "results.json").read_text())
        assert [h["epoch"] for h in rec["history"]] == [1, 2]


def test_status_names_each_runs_state_and_counts_them(tiny_dataset, tmp_path, capsys):
    import shutil

    from tcf.experiments.sweep import CLAIM_FILE
    from tcf.fsutil import try_lock

    doc = tiny_base(tiny_dataset, tmp_path, axes={"seed": [0, 1, 2, 3, 4, 5]})
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(doc))
    exp, out = load_experiment(tmp_path / "e.yaml"), tmp_path / "out"
    done, failed, running, stopped, other, fresh = exp.runs
    run_sweep(exp, out, progress=False, log=lambda _: None, only=[done.id, stopped.id])
    (out / stopped.id / "results.json").unlink()  # killed before its results were written: last.pt is left
    (out / failed.id).mkdir()
    (out / failed.id / "error.txt").write_text("ValueError: boom\ntraceback ...\n")
    shutil.copytree(out / done.id / "checkpoints", out / other.id / "checkpoints")  # another run's checkpoint
    with try_lock(out / running.id / CLAIM_FILE):
        assert main(["sweep", str(tmp_path / "e.yaml"), "--out", str(out), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    state = dict(re.fullmatch(r"\s*\d+ (\S+)  (.*)", line).groups() for line in lines[:6])
    assert state[done.id].startswith("done: test ndcg@10 ")
    assert state[failed.id] == "failed: ValueError: boom"
    assert state[running.id] == "running"
    assert state[stopped.id].startswith("stopped after epoch 1: resumes from its checkpoint; best valid ndcg@10 ")
    assert state[stopped.id].endswith("at epoch 1, 0 of 10 epochs without a better one")
    assert state[other.id].startswith("refused: ") and "other settings" in state[other.id]
    assert state[fresh.id] == "not started" and not (out / fresh.id).exists()
    assert lines[6].startswith("6 run(s) in ") and all(f"1 {w}" in lines[6] for w in
                                                         ("done", "failed", "running", "stopped", "refused",
                                                          "not started"))
