"""Reports: grouping over seeds, CIs by hand, answers computed from the numbers, plots written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scripted import ReverseRanker
from tcf.cli import main
from tcf.experiments.report import ReportSettings, neighbor_table, write_report
from tcf.experiments.results import group_runs, load_runs
from tcf.experiments.sweep import expand, run_sweep

PNG = b"\x89PNG\r\n\x1a\n"


def put(root: Path, name: str, *, head="sasrec", tower="id", encoder="minilm-l6", params=None, seed=0, ndcg=0.05,
        hr=0.1, half=0.005, cold=None, per_user=None) -> Path:
    """A results.json in the trainer's layout with chosen numbers (the report reads nothing else); validation
    numbers equal the test ones (tests/test_report_selection.py sets them apart)."""
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {"ndcg@10": {"mean": ndcg, "ci95": [ndcg - half, ndcg + half]},
               "hr@10": {"mean": hr, "ci95": [hr - 2 * half, hr + 2 * half]}}
    res = {"config": {"name": name, "seed": seed, "model": {"head": head, "tower": tower},
                      "encoder": {"model": encoder}, "train": {"lr": 0.001}},
           "metrics": {split: {"metrics": metrics, "slices": {"cold": {"metrics": {"ndcg@10": cold or ndcg / 2}}}}
                       for split in ("valid", "test")},
           "parameters": {"trainable": 10, **({"encoder": params} if params else {})}}
    if per_user is not None:
        res["per_user_columns"] = ["user_id", "ndcg@10"]
        np.save(folder / "per_user_test.npy", np.stack([np.arange(1, len(per_user) + 1), per_user]))
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def report_text(root: Path, **settings) -> str:
    return write_report(root, settings=settings or None).read_text()


def test_seeds_form_a_group_with_a_t_interval_by_hand(tmp_path):
    for seed, v in enumerate([0.1, 0.2, 0.3]):
        put(tmp_path, f"s{seed}", seed=seed, ndcg=v)
    put(tmp_path, "other", tower="frozen", params=22_713_216, ndcg=0.4)
    runs, failed = load_runs(tmp_path)
    groups = group_runs(runs)
    assert len(groups) == 2 and not failed
    st = next(g for g in groups if g.first.tower == "id").stat("ndcg@10")
    assert st.n == 3 and st.over == "seeds" and st.mean == pytest.approx(0.2)
    assert st.hi - st.mean == pytest.approx(4.303 * 0.1 / np.sqrt(3), rel=1e-3)
    single = next(g for g in groups if g.first.tower == "frozen").stat("ndcg@10")
    assert (single.lo, single.hi, single.over) == (pytest.approx(0.395), pytest.approx(0.405), "users")
    md = report_text(tmp_path)
    assert "0.2000 ± 0.2484" in md and "0.4000 [0.3950, 0.4050]" in md and "22.7M" in md


def test_answers_follow_the_numbers(tmp_path):
    put(tmp_path, "sid", ndcg=0.02, cold=0.001)
    put(tmp_path, "smini", tower="frozen", params=22_713_216, ndcg=0.030)
    put(tmp_path, "ssmol", tower="frozen", encoder="smollm2-135m", params=134_515_008, ndcg=0.040)
    put(tmp_path, "sgem", tower="frozen", encoder="gemma3-270m", params=268_098_176, ndcg=0.050, cold=0.02)
    put(tmp_path, "did", head="dssm", ndcg=0.03)
    put(tmp_path, "dmini", head="dssm", tower="frozen", params=22_713_216, ndcg=0.031)
    md = report_text(tmp_path)
    answers = md.split("## Trained")[0]
    assert ("SASRec: the text tower best on valid ndcg@10 (of 3 towers), frozen text (gemma3-270m), against the ID "
            "setting best on valid: test ndcg@10 0.0500 vs 0.0200") in answers
    assert "**text beats ID**" in answers
    cold = next(x for x in answers.splitlines() if x.startswith("- SASRec on cold items"))
    assert "0.0200 vs 0.0010" in cold and "no test: no per-user records" in cold
    assert "**no clear difference**" in cold  # a cold-slice claim needs its own test
    assert "DSSM: the text tower best on valid ndcg@10, frozen text" in answers and "**no clear difference**" in answers
    assert "Holm-adjusted over 2 tests p = " in answers  # one test per head, one family
    assert "Does fine-tuning beat a frozen encoder?**\n\n- not measured" in answers
    assert "SASRec frozen text: ndcg@10 0.0300 (22.7M) → 0.0400 (134.5M) → 0.0500 (268.1M)" in answers
    assert "Spearman ρ(size, ndcg@10) = 1.00" in answers and "**yes, the largest beats the smallest**" in answers
    assert "zero-shot prompting from trained models?**\n\n- not measured" in answers
    for png in ("scaling.png", "towers.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == PNG
    assert not (tmp_path / "report" / "zeroshot.png").exists()
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {g["encoder_parameters"] for g in summary["groups"]} == {None, 22_713_216, 134_515_008, 268_098_176}


def test_single_runs_are_compared_by_a_paired_test(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(400) * 0.1
    put(tmp_path, "id", ndcg=float(base.mean()), half=0.05, per_user=base)
    put(tmp_path, "ft", tower="finetune", params=10, ndcg=float(base.mean() + 0.01), half=0.05, per_user=base + 0.01)
    put(tmp_path, "fr", tower="frozen", params=10, ndcg=float(base.mean()), half=0.05, per_user=base)
    md = report_text(tmp_path)
    # one seed each: no seed noise to measure, so the paired test over users, which says what it ignores
    assert "fine-tuned text against frozen" in md
    assert "paired permutation test over users (checkpoints treated as fixed: no configuration of this head " in md
    assert "**fine-tuning helps**" in md  # CIs overlap widely, but every user gains: the paired test sees it


def test_report_settings_and_failed_runs(tmp_path):
    put(tmp_path, "a", ndcg=0.02)
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / "error.txt").write_text("RuntimeError: out of memory\ntraceback...")
    md = report_text(tmp_path, metrics=["hr@10"], title="My study")
    assert md.startswith("# My study") and "| test hr@10 |" in md and "test ndcg@10" not in md
    assert "## Failed runs" in md and "`b`: RuntimeError: out of memory" in md
    with pytest.raises(Exception, match="unknown setting 'report.metric'"):
        write_report(tmp_path, settings={"metric": "x"})
    assert isinstance(ReportSettings().metrics, list)


def test_report_command_on_a_real_tiny_sweep(tiny_dataset, tiny_models, tmp_path, capsys):
    """Two tiny encoders of different sizes, ID and frozen towers: a real scaling plot and table."""
    base = {"name": "tiny", "data": {"dataset": str(tiny_dataset.path)}, "cache_root": str(tmp_path / "cache"),
            "model": {"dim": 16, "max_len": 8}, "encoder": {"max_tokens": 12},
            "train": {"epochs": 1, "batch_size": 16}, "eval": {"bootstrap": 20},
            "runs": [{"model.tower": "id"},
                     {"model.tower": "frozen", "axes": {"encoder.model": [str(tiny_models["llama"]),
                                                                          str(tiny_models["bert"])]}}]}
    out = tmp_path / "out"
    summary = run_sweep(expand(base), out, progress=False, log=lambda _: None)
    assert len(summary.ran) == 3 and not summary.failed
    assert main(["report", str(out)]) == 0
    assert f"report: {out / 'report' / 'report.md'}" in capsys.readouterr().out
    md = (out / "report" / "report.md").read_text()
    assert md.count("| SASRec | frozen text |") == 2 and "| SASRec | ID |" in md
    assert "![Accuracy against encoder size](scaling.png)" in md
    assert (out / "report" / "scaling.png").read_bytes()[:8] == PNG
    groups = json.loads((out / "report" / "report.json").read_text())["groups"]
    sizes = sorted(g["encoder_parameters"] for g in groups if g["encoder_parameters"])
    assert len(sizes) == 2 and sizes[0] < sizes[1]
    # the sweep built an exact FAISS index beside each pooled cache; the report lists neighbours from it
    assert len(list((tmp_path / "cache").glob("*-pooled-*/index-flat.faiss"))) == 2
    query = tiny_dataset.item_texts(tiny_dataset.template)[3]
    rows = neighbor_table(group_runs(load_runs(out)[0]), ReportSettings(neighbors=[query, "no such item"],
                                                                        neighbors_k=3))
    assert len(rows) == 2 + 2  # header, rule, one row per encoder; the unknown name is skipped
    for row in rows[2:]:
        cells = row.strip("|").split("|")
        assert cells[0].strip() == query and len(cells[2].split(";")) == 3


def test_zero_shot_against_baselines_and_a_trained_model_on_the_same_candidates(tiny_dataset, tmp_path):
    from tcf.experiments.config import load_config
    from tcf.train.loop import train
    from tcf.zeroshot import run_zeroshot

    common = [f"data.dataset={tiny_dataset.path}", f"cache_root={tmp_path / 'cache'}", "eval.bootstrap=20"]
    train(load_config(None, [*common, "model.dim=16", "model.max_len=8", "train.epochs=2", "train.batch_size=16"]),
          tmp_path / "runs" / "sasrec-id", progress=False)
    zs = load_config(None, [*common, "task=zeroshot", "zeroshot.protocol=rank", "zeroshot.n_candidates=5",
                            "zeroshot.limit=12", "zeroshot.history_len=4", "zeroshot.use_cache=false"])
    run_zeroshot(zs, tmp_path / "runs" / "zs", progress=False, backend=ReverseRanker())
    md = report_text(tmp_path / "runs")
    answer = md.split("**How far is zero-shot prompting from trained models?**")[1].split("## ")[0]
    assert "smollm2-135m (rank): ndcg@10" in answer and "against popularity " in answer and "against random " in answer
    assert "100% of replies followed the format" in answer
    assert "against the trained SASRec (ID; seed 2020) on the same candidates" in answer
    assert answer.count("paired permutation test over users") == 3
    row = next(line for line in md.splitlines() if line.startswith("| smollm2-135m | rank |"))
    assert row.endswith("| 100.0% |")
    assert (tmp_path / "runs" / "report" / "zeroshot.png").read_bytes()[:8] == PNG
    zs_summary = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())["zeroshot"][0]
    trained = zs_summary["baselines"]["trained SASRec (ID; seed 2020)"]
    assert 0 <= trained <= 1 and zs_summary["baselines"]["random"] == pytest.approx(
        np.mean([1 / np.log2(r + 2) for r in range(5)]))  # random order over 5 candidates: exact expectation


def test_the_hard_run_itself_is_not_scored_on_the_lists_made_hard_for_it(tiny_dataset, tmp_path):
    """Lists drawn from a trained run's own top items rank its target exactly as the full catalogue does: that
    run is no baseline on them.  The report leaves it out with a note; another head is still scored."""
    from tcf.experiments.config import load_config
    from tcf.train.loop import train
    from tcf.zeroshot import run_zeroshot

    common = [f"data.dataset={tiny_dataset.path}", f"cache_root={tmp_path / 'cache'}", "eval.bootstrap=20"]
    for head in ("sasrec", "dssm"):
        train(load_config(None, [*common, f"model.head={head}", "model.dim=16", "model.max_len=8", "train.epochs=2",
                                 "train.batch_size=16"]), tmp_path / "runs" / f"{head}-id", progress=False)
    zs = load_config(None, [*common, "task=zeroshot", "zeroshot.protocol=rank", "zeroshot.n_candidates=5",
                            "zeroshot.limit=12", "zeroshot.history_len=4", "zeroshot.use_cache=false",
                            "zeroshot.negatives=hard", f"zeroshot.hard_run={tmp_path / 'runs' / 'sasrec-id'}"])
    run_zeroshot(zs, tmp_path / "runs" / "zs", progress=False, backend=ReverseRanker())
    md = report_text(tmp_path / "runs")
    answer = md.split("**How far is zero-shot prompting from trained models?**")[1].split("## ")[0]
    assert "the trained DSSM (ID; seed 2020) on the same candidates" in answer
    assert "the trained SASRec (ID; seed 2020) on the same candidates" not in answer
    assert "trained SASRec (ID; seed 2020) not scored: it is the hard_run (`sasrec-id`)" in answer
    row = next(line for line in md.splitlines() if line.startswith("| smollm2-135m | rank |"))
    assert "trained SASRec (ID; seed 2020) not scored: it is the hard_run (`sasrec-id`)" in row
    zs_summary = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())["zeroshot"][0]
    assert "trained DSSM (ID; seed 2020)" in zs_summary["baselines"] and "trained SASRec (ID; seed 2020)" not in zs_summary["baselines"]
    assert any("hard_run" in note for note in zs_summary["notes"])
    # runs copied elsewhere: the hard run is known by its best checkpoint's hash, not its old folder
    shutil.copytree(tmp_path / "runs", tmp_path / "moved", ignore=shutil.ignore_patterns("report"))
    moved = report_text(tmp_path / "moved")
    assert "trained SASRec (ID; seed 2020) not scored: it is the hard_run (`sasrec-id`)" in moved
    assert "the trained SASRec (ID; seed 2020) on the same candidates" not in moved


def test_report_regenerates_without_checkpoints_and_caches(tiny_dataset, tiny_model, tmp_path):
    """A published study keeps results, not checkpoints or embedding caches: the parts of the report that read
    those (trained models re-scored on the zero-shot lists, nearest items) come back from what the first
    report stored beside the runs, so the report is the same byte for byte."""
    from tcf.experiments.config import load_config
    from tcf.train.loop import train
    from tcf.zeroshot import run_zeroshot

    runs, cache = tmp_path / "runs", tmp_path / "cache"
    common = [f"data.dataset={tiny_dataset.path}", f"cache_root={cache}", "eval.bootstrap=20"]
    train(load_config(None, [*common, "model.dim=16", "model.max_len=8", "train.epochs=1", "train.batch_size=16",
                             "model.tower=frozen", f"encoder.model={tiny_model}", "encoder.max_tokens=12"]),
          runs / "sasrec-frozen", progress=False)
    zs = load_config(None, [*common, "task=zeroshot", "zeroshot.protocol=rank", "zeroshot.n_candidates=5",
                            "zeroshot.limit=12", "zeroshot.history_len=4", "zeroshot.use_cache=false"])
    run_zeroshot(zs, runs / "zs", progress=False, backend=ReverseRanker())
    query = tiny_dataset.item_texts(tiny_dataset.template)[3]
    settings = {"neighbors": [query], "neighbors_k": 3}
    first = write_report(runs, tmp_path / "first", settings).read_text()
    assert "against the trained SASRec (frozen text" in first and f"| {query} |" in first
    shutil.rmtree(runs / "sasrec-frozen" / "checkpoints")
    shutil.rmtree(cache)
    again = write_report(runs, tmp_path / "again", settings).read_text()
    assert again == first
    assert (tmp_path / "again" / "report.json").read_text() == (tmp_path / "first" / "report.json").read_text()
    # a checkpoint that is not the one the results came from is not re-scored: the stored score (made from
    # the recorded checkpoint) stands
    (runs / "sasrec-frozen" / "checkpoints").mkdir()
    (runs / "sasrec-frozen" / "checkpoints" / "best.pt").write_bytes(b"other weights")
    assert write_report(runs, tmp_path / "swapped", settings).read_text() == first
    # without the stored score either, the report says why the trained model is missing
    for f in (runs / "zs" / "derived").glob("trained-*.json"):
        f.unlink()
    gone = write_report(runs, tmp_path / "gone", settings).read_text()
    assert "not scored on these lists: its checkpoint or the candidate file is not here and no score is stored" in gone
    # a stored derivation is used only for the inputs it was made from
    assert "| " + query + " |" not in write_report(runs, tmp_path / "other", {"neighbors": [query],
                                                                                 "neighbors_k": 2}).read_text()


def test_positive_controls_are_answered_inside_the_main_report(tmp_path):
    """report.controls: each control folder's answers, computed from its own runs and settings."""
    control = tmp_path / "control"
    put(control, "id", tower="id", ndcg=0.05, per_user=np.full(40, 0.05))
    put(control, "text", tower="frozen", ndcg=0.2, per_user=np.full(40, 0.2))
    (control / "experiment.json").write_text(json.dumps({"name": "ctl", "report": {
        "title": "The control", "caveats": ["Its seed noise is 0."]}}))
    main_dir = tmp_path / "main"
    put(main_dir, "id", tower="id", ndcg=0.1)
    md = report_text(main_dir, controls=[str(control)])
    section = md.split("## Positive controls")[1].split("\n## ")[0]
    assert "### The control" in section and f"`{control}` (2 runs; its own report:" in section
    assert "Its caveats:\n\n- Its seed noise is 0." in section  # a control's limits travel with its answers
    assert "SASRec: the text tower best on valid ndcg@10, frozen text (minilm-l6)" in section
    assert "**text beats ID**" in section
    record = json.loads((main_dir / "report" / "report.json").read_text())["controls"][0]
    assert record["path"] == str(control) and record["comparisons"][0]["significant"] is True


def test_a_choice_on_fewer_seeds_than_a_candidate_has_names_them(tmp_path):
    """select() scores candidates on the seeds they all have; the line says which, since its test may use more."""
    for k in (0, 1):
        put(tmp_path, f"sid{k}", seed=k, ndcg=0.02)
        put(tmp_path, f"smini{k}", tower="frozen", params=22_713_216, seed=k, ndcg=0.03)
    put(tmp_path, "ssmol0", tower="frozen", encoder="smollm2-135m", params=134_515_008, seed=0, ndcg=0.04)
    line = next(x for x in report_text(tmp_path).splitlines() if x.startswith("- SASRec: the text tower best"))
    assert "(of 2 towers; chosen on seed 0, which all have)" in line
    assert "against the ID setting best on valid: " in line  # one ID setting: no choice, no note


def test_two_sizes_get_no_rank_correlation(tmp_path):
    """Two sizes give rho = +-1 and an exact p of 1 whatever they hold: the size line gives no trend statistic."""
    put(tmp_path, "sid", ndcg=0.02)
    put(tmp_path, "smini", tower="frozen", params=22_713_216, ndcg=0.030)
    put(tmp_path, "ssmol", tower="frozen", encoder="smollm2-135m", params=134_515_008, ndcg=0.040)
    line = next(x for x in report_text(tmp_path).splitlines() if x.startswith("- SASRec frozen text: ndcg@10"))
    assert "0.0300 (22.7M) → 0.0400 (134.5M)" in line and "Spearman" not in line


def test_cost_of_the_runs_is_summed_from_their_records(tmp_path):
    for name, t in (("a", {"train_seconds": 3600.0, "wall_seconds": 1800.0, "peak_rss_mb": 2048.0,
                           "peak_rss_scope": "run"}),
                    ("b", {"train_seconds": 1800.0, "wall_seconds": 1900.0}),
                    ("c", {"train_seconds": 0.0, "wall_seconds": 0.0, "peak_rss_mb": 4096.0})):  # an older record
        folder = put(tmp_path, name, seed=len(name))
        res = json.loads((folder / "results.json").read_text())
        (folder / "results.json").write_text(json.dumps({**res, "timings": t}))
    md = report_text(tmp_path)
    assert ("Cost of the 3 finished runs, from their records: 1.5 h of training epochs and 0.0 h of zero-shot "
            "generation") in md
    # a's last sitting (1800 s) is shorter than its training (3600 s): resumed, so its wall clock is left out and
    # its peak says it covers the last sitting only
    assert ("(summed over runs, some of which ran side by side; 1 runs were resumed after a stop, their training "
            "time accumulated over sittings); 0.5 h of wall clock summed over the 2 runs never resumed; the largest "
            "peak memory of one run 2.00 GiB (measured by 1 of 3 runs from the start of their last sitting, which "
            "for the 1 of them that were resumed leaves their earlier sittings out); 1 older records give their "
            "process's peak so far instead (a sweep process runs many runs, so it may be an earlier run's), at most "
            "4.00 GiB; 1 records give no peak; runs that ran side by side add up.") in md
    assert json.loads((tmp_path / "report" / "report.json").read_text())["cost"]["train_seconds"] == 5400.0


def test_heads_are_compared_on_the_same_item_tower_and_pretraining_against_random(tmp_path):
    def run(name, head, ndcg, init=None):
        folder = put(tmp_path, name, head=head, tower="id", ndcg=ndcg, per_user=np.full(50, ndcg) +
                     np.linspace(-0.01, 0.01, 50))
        res = json.loads((folder / "results.json").read_text())
        if init:
            res["config"]["model"]["llm_init"] = init
        (folder / "results.json").write_text(json.dumps(res))

    run("sasrec", "sasrec", 0.10)
    run("dssm", "dssm", 0.05)
    run("llm-pre", "llm", 0.20, "pretrained")
    run("llm-rand", "llm", 0.08, "random")
    md = report_text(tmp_path)
    heads = md.split("**Which user model: does another head beat SASRec (and the LLM head DSSM) on the same item "
                     "tower?**")[1].split("\n\n**")[0]
    assert "ID: DSSM against SASRec: test ndcg@10 0.0500 vs 0.1000" in heads and "**SASRec beats DSSM**" in heads
    # the LLM head's setting best on validation (pretrained) is the one compared
    assert "ID: LLM head [model.llm_init=pretrained] (of 2 settings; the best on valid) against SASRec: test " \
           "ndcg@10 0.2000 vs 0.1000" in heads and "**LLM head beats SASRec**" in heads
    # and, beyond SASRec, the LLM head against DSSM on the same tower
    assert "ID: LLM head [model.llm_init=pretrained] (of 2 settings; the best on valid) against DSSM: test " \
           "ndcg@10 0.2000 vs 0.0500" in heads and "**LLM head beats DSSM**" in heads
    assert "Holm-adjusted over 3 tests" in heads and "DSSM against LLM head" not in heads
    pre = md.split("**Does a pretrained user LM (the LLM head) beat the same model at random initialisation?**")[1]
    pre = pre.split("\n\n**")[0]
    assert "pretrained against random initialisation: test ndcg@10 0.2000 vs 0.0800" in pre
    assert "**pretraining helps**" in pre
    # an experiment without LLM-head runs is not asked about them
    assert "random initialisation?" not in report_text(tmp_path / "sasrec")


def test_text_vs_id_compares_towers_without_ids_and_id_plus_text_is_answered_apart(tmp_path):
    users = np.linspace(-0.01, 0.01, 60)
    put(tmp_path, "id", ndcg=0.10, per_user=0.10 + users)
    put(tmp_path, "frozen", tower="frozen", params=22_713_216, ndcg=0.07, per_user=0.07 + users)
    put(tmp_path, "both", tower="id+text", ndcg=0.13, per_user=0.13 + users)  # best on valid, but it has IDs
    md = report_text(tmp_path)
    text = md.split("**Does text beat ID?**")[1].split("\n\n**")[0]
    assert "SASRec: the text tower best on valid ndcg@10, frozen text (minilm-l6), against the ID setting best on " \
           "valid: test ndcg@10 0.0700 vs 0.1000" in text and "**ID beats text**" in text
    both = md.split("**Does adding text to the ID embeddings help?**")[1].split("\n\n**")[0]
    assert "SASRec: ID + text (minilm-l6) against ID: test ndcg@10 0.1300 vs 0.1000" in both
    assert "**adding text helps**" in both
    shutil.rmtree(tmp_path / "both")
    shutil.rmtree(tmp_path / "report")
    assert "adding text" not in report_text(tmp_path)  # asked only where an experiment has such runs


def test_a_verdict_on_fewer_seeds_than_the_others_is_marked_provisional(tmp_path):
    users = np.linspace(-0.01, 0.01, 60)
    for seed in (0, 1, 2, 3):  # 3 seed deviations: enough to measure the seed noise the test needs
        put(tmp_path, f"id{seed}", seed=seed, ndcg=0.10, per_user=0.10 + users + 0.001 * seed)
    put(tmp_path, "frozen", tower="frozen", params=22_713_216, seed=0, ndcg=0.07, per_user=0.07 + users)
    text = report_text(tmp_path).split("**Does text beat ID?**")[1].split("\n\n**")[0]
    assert "0.0700 vs 0.1000" in text  # ID on seed 0 alone, the seed both have
    assert "on the seed both groups have (0; they have 1 and 4)" in text
    assert "**ID beats text** (provisional: on 1 of 4 seeds)." in text


def test_provisional_counts_the_seeds_the_experiment_plans(tmp_path):
    """Early in a study every group may have one seed: the plan's three make each verdict provisional."""
    users = np.linspace(-0.01, 0.01, 60)
    put(tmp_path, "id0", seed=0, ndcg=0.10, per_user=0.10 + users)
    put(tmp_path, "frozen0", tower="frozen", params=22_713_216, seed=0, ndcg=0.07, per_user=0.07 + users)
    plan = {"name": "p", "runs": [{"id": f"{n}{k}", "config": {"seed": k}} for n in ("id", "frozen") for k in (0, 1, 2)]}
    plan["runs"] = [r for r in plan["runs"] if r["id"] in ("id0", "frozen0")] + \
        [{"id": r["id"], "config": r["config"]} for r in plan["runs"] if r["id"] not in ("id0", "frozen0")]
    (tmp_path / "experiment.json").write_text(json.dumps(plan))
    text = report_text(tmp_path).split("**Does text beat ID?**")[1].split("\n\n**")[0]
    assert "**ID beats text** (provisional: on 1 of 3 seeds)." in text


def test_heads_meet_on_a_tower_whatever_settings_vary_among_one_heads_groups(tmp_path):
    """Once SASRec had fine-tuning runs of several depths, its ID group carried model.finetune_layers among its
    distinguishing settings and DSSM's did not, so the two ID towers no longer matched: heads are matched on
    the resolved settings a tower reads."""
    users = np.linspace(-0.01, 0.01, 50)

    def run(name, head, tower, ndcg, layers=None):
        folder = put(tmp_path, name, head=head, tower=tower, ndcg=ndcg, per_user=ndcg + users,
                     params=22_713_216 if tower != "id" else None)
        res = json.loads((folder / "results.json").read_text())
        res["config"]["model"]["finetune_layers"] = layers or 2
        (folder / "results.json").write_text(json.dumps(res))

    run("s-id", "sasrec", "id", 0.10)
    run("d-id", "dssm", "id", 0.05)
    run("s-ft1", "sasrec", "finetune", 0.08, layers=1)
    run("s-ft2", "sasrec", "finetune", 0.09, layers=2)
    heads = report_text(tmp_path).split("(and the LLM head DSSM) on the same item tower?**")[1]
    assert "ID: DSSM against SASRec: test ndcg@10 0.0500 vs 0.1000" in heads.split("\n\n**")[0]


def test_caveats_of_the_design_stand_above_the_answers(tmp_path):
    put(tmp_path, "id", ndcg=0.1)
    md = write_report(tmp_path, settings={"caveats": ["bf16 against fp32.", " five families. "]}).read_text()
    answers = md.split("## Answers")[1]
    block = "Read the answers with these limits of the design:\n\n- bf16 against fp32.\n- five families.\n"
    assert block in answers and answers.index(block) < answers.index("**Does text beat ID?**")
    assert "limits of the design" not in report_text(tmp_path)  # none asked: none shown
