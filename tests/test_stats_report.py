"""The report's statistics: seed groups are compared over users and seeds (paired over users, on seed-averaged
per-user values, plus the seed noise pooled over the head's configurations), CIs are over users with the seed
spread beside them, a NaN is no test, the cold-item claim is tested, and the run
list follows experiment.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tcf.eval.metrics import normal_pvalue, paired_test, t_pvalue
from tcf.experiments.report import compare, write_report
from tcf.experiments.results import group_runs, load_runs

N_USERS = 943


def put(root: Path, name: str, *, tower="id", seed=0, per_user=None, mean=None, half=0.01, dataset=None,
        cold_max_count=8) -> Path:
    """A trained run's results.json (valid = test numbers) and, when given, its per-user test and valid values."""
    folder = root / name
    folder.mkdir(parents=True)
    mean = float(np.mean(per_user)) if mean is None else mean
    metrics = {"ndcg@10": {"mean": mean, "ci95": [mean - half, mean + half]}}
    res = {"config": {"name": name, "seed": seed, "model": {"head": "sasrec", "tower": tower},
                      "encoder": {"model": "minilm-l6"}, "eval": {"cold_max_count": cold_max_count}},
           "metrics": {split: {"metrics": metrics, "slices": {"cold": {"metrics": {"ndcg@10": mean}}}}
                       for split in ("valid", "test")}}
    if dataset is not None:
        res["dataset"] = {"path": str(dataset.path), "fingerprint": dataset.fingerprint}
    if per_user is not None:
        res["per_user_columns"] = ["user_id", "ndcg@10"]
        for split in ("valid", "test"):
            np.save(folder / f"per_user_{split}.npy", np.stack([np.arange(1, len(per_user) + 1), per_user]))
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def seed_groups(root: Path, effect: np.ndarray, offsets_id, offsets_text, seed=0):
    """Three seeds of an ID and a text tower on the same users: each user's text value is its ID value plus
    ``effect``; a seed shifts every user of its run by its offset."""
    rng = np.random.default_rng(seed)
    base = rng.random(N_USERS) * 0.3
    for k, (oi, ot) in enumerate(zip(offsets_id, offsets_text)):
        put(root, f"id-s{k}", seed=k, per_user=base + oi)
        put(root, f"text-s{k}", tower="frozen", seed=k, per_user=base + effect + ot)


def text_vs_id(root: Path) -> dict:
    summary = json.loads((root / "report" / "report.json").read_text())
    return next(c for c in summary["comparisons"] if c["question"] == "text vs ID")


def welch_p(x, y) -> float:
    x, y = np.asarray(x), np.asarray(y)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    return t_pvalue((x.mean() - y.mean()) / math.sqrt(va + vb), df)


def users_and_seeds_p(root: Path, a: str, b: str, k: int = 3) -> tuple[float, float]:
    """The t-test over users and seeds written out by hand from the run files: (p, df).  Users' part: the
    variance of the seed-averaged per-user difference over U.  Seeds' part: one configuration of k seeds per
    tower kind has only k - 1 = 2 seed deviations, so both sides borrow the head's pool of both towers
    (2 (k - 1) df): the pooled seed-mean variance less the pooled seed x user residual mean square over U,
    times 1/k + 1/k; Welch-Satterthwaite df."""
    ys = [np.stack([np.load(root / f"{t}-s{i}" / "per_user_test.npy")[1] for i in range(k)]) for t in (a, b)]
    d = ys[0].mean(0) - ys[1].mean(0)
    u = d.size
    vu = d.var(ddof=1) / u
    df_m, df_r = 2 * (k - 1), 2 * (k - 1) * (u - 1)
    ms_m = sum(((y.mean(1) - y.mean()) ** 2).sum() for y in ys) / df_m
    ms_r = sum(((y - y.mean(1)[:, None] - y.mean(0)[None, :] + y.mean()) ** 2).sum() for y in ys) / df_r
    var = max(0.0, ms_m - ms_r / u)
    df_seed = min(var ** 2 / (ms_m ** 2 / df_m + (ms_r / u) ** 2 / df_r), df_m) if var > 0 else df_m
    vs = var * 2 / k
    total = vu + vs
    df = total ** 2 / (vu ** 2 / (u - 1) + (vs ** 2 / df_seed if vs > 0 else 0.0))
    return t_pvalue(d.mean() / math.sqrt(total), df), df


def test_seed_groups_equal_over_users_are_no_clear_difference(tmp_path):
    """Tight seed means (Welch: significant) but a per-user difference indistinguishable from 0 over 943 users."""
    rng = np.random.default_rng(1)
    d = rng.normal(0, 0.1, N_USERS)
    d = d - d.mean() + 0.003  # the two towers differ by 0.003 on these users, user noise sd 0.1
    offsets = [0.0003, -0.0002, 0.0]
    seed_groups(tmp_path, d, offsets, offsets)
    means_id = [np.load(tmp_path / f"id-s{k}" / "per_user_test.npy")[1].mean() for k in range(3)]
    means_tx = [np.load(tmp_path / f"text-s{k}" / "per_user_test.npy")[1].mean() for k in range(3)]
    assert welch_p(means_tx, means_id) < 0.01  # what the seed-mean test said
    expected, df = users_and_seeds_p(tmp_path, "text", "id")
    assert expected > 0.05
    md = write_report(tmp_path).read_text()
    line = next(x for x in md.splitlines() if x.startswith("- SASRec: the text tower"))
    assert "t-test over users and seeds" in line and "**no clear difference**" in line
    got = text_vs_id(tmp_path)
    assert got["test"] == "t-test over users and seeds" and not got["significant"]
    assert got["p_value"] == pytest.approx(expected, rel=1e-9) and got["df"] == pytest.approx(df)
    assert got["n_users"] == N_USERS and got["seeds"] == [3, 3]


def test_a_per_user_difference_counts_only_beyond_the_seed_noise(tmp_path):
    """Every seed-averaged user gains 0.02 on average over 943 users (a paired test over users alone: p < 0.01).
    With seeds that move a whole run by +-0.03 that is within what retraining alone gives: no clear difference;
    with seeds that move it by +-0.0003 it is told apart."""
    rng = np.random.default_rng(2)
    d = rng.normal(0.02, 0.1, N_USERS)
    assert paired_test(d, np.zeros(N_USERS), n=2000)["p_value"] < 0.01
    for name, oi, ot, verdict in (("noisy", [0.03, -0.03, 0.0], [0.0, 0.03, -0.03], "**no clear difference**"),
                                  ("tight", [0.0003, -0.0003, 0.0], [0.0, 0.0003, -0.0003], "**text beats ID**")):
        root = tmp_path / name
        seed_groups(root, d, oi, ot)
        expected, _ = users_and_seeds_p(root, "text", "id")
        md = write_report(root).read_text()
        line = next(x for x in md.splitlines() if x.startswith("- SASRec: the text tower"))
        assert verdict in line and "t-test over users and seeds" in line, (name, line)
        assert text_vs_id(root)["p_value"] == pytest.approx(expected, rel=1e-9)


def test_two_seeds_of_one_configuration_are_not_called_different(tmp_path):
    """The placebo the paired test over users failed on ml-100k (8 of 19 same-configuration seed pairs at
    p < 0.05): two single-seed groups of identical configurations whose runs differ only by a seed's shift,
    with a third configuration's 3 seeds measuring that shift's size."""
    rng = np.random.default_rng(4)
    base = rng.random(N_USERS) * 0.3
    for k, o in enumerate((0.01, -0.012, 0.002, -0.004)):  # 4 seeds of the ID tower: the pool's seed noise
        put(tmp_path, f"id-s{k}", seed=k, per_user=base + o + rng.normal(0, 0.02, N_USERS))
    put(tmp_path, "a", tower="frozen", seed=0, per_user=base + 0.011 + rng.normal(0, 0.02, N_USERS))
    put(tmp_path, "b", tower="finetune", seed=0, per_user=base - 0.009 + rng.normal(0, 0.02, N_USERS))
    groups = {g.first.tower: g for g in group_runs(load_runs(tmp_path)[0])}
    fixed = paired_test(groups["frozen"].user_values("ndcg@10")[1], groups["finetune"].user_values("ndcg@10")[1])
    assert fixed["p_value"] < 1e-3  # what treating the two checkpoints as fixed said
    c = compare(groups["frozen"], groups["finetune"], "ndcg@10", "test", pool=list(groups.values()))
    assert c.test == "t-test over users and seeds" and c.p_value > 0.05
    lone = compare(groups["frozen"], groups["finetune"], "ndcg@10", "test")  # no pool: the fallback says so
    assert "checkpoints treated as fixed" in lone.test


def test_seed_group_cells_are_user_cis_with_the_seed_spread_beside(tmp_path):
    rng = np.random.default_rng(3)
    seed_groups(tmp_path, rng.normal(0.02, 0.1, N_USERS), [0.03, -0.03, 0.0], [0.0, 0.03, -0.03])
    groups = group_runs(load_runs(tmp_path)[0])
    g = next(g for g in groups if g.first.tower == "id")
    st = g.stat("ndcg@10")
    users = np.mean([np.load(tmp_path / f"id-s{k}" / "per_user_test.npy")[1] for k in range(3)], axis=0)
    from tcf.eval.metrics import bootstrap_ci

    assert st.over == "users" and st.n == 3 and st.mean == pytest.approx(users.mean())
    assert (st.lo, st.hi) == pytest.approx(bootstrap_ci(users, n=1000, seed=0))
    assert st.sd_seeds == pytest.approx(np.std([users.mean() + o - 0.0 for o in (0.03, -0.03, 0.0)], ddof=1))
    md = write_report(tmp_path).read_text()
    assert f"{st.mean:.4f} [{st.lo:.4f}, {st.hi:.4f}] (sd {st.sd_seeds:.4f} over 3 seeds)" in md
    assert "bootstrap 95% CI over users" in md


def test_seed_groups_without_per_user_records_fall_back_labelled(tmp_path):
    for k, (a, b) in enumerate(((0.10, 0.20), (0.11, 0.21), (0.12, 0.22))):
        put(tmp_path, f"id-s{k}", seed=k, mean=a)
        put(tmp_path, f"text-s{k}", tower="frozen", seed=k, mean=b)
    md = write_report(tmp_path).read_text()
    assert "(t over 3 seeds)" in md
    got = text_vs_id(tmp_path)
    assert got["test"].startswith("Welch t-test over seeds") and "no per-user records" in got["test"]


def test_mixed_interval_kinds_are_not_z_tested(tmp_path):
    """A seed group without per-user records (t interval over seeds) and a single run (bootstrap over users):
    the two intervals measure different things, so no z-test is made from them."""
    for k, a in enumerate((0.10, 0.11, 0.12)):
        put(tmp_path, f"id-s{k}", seed=k, mean=a)
    put(tmp_path, "text", tower="frozen", seed=7, mean=0.3, half=0.001)  # no seed in common: nothing to cut to
    groups = {g.first.tower: g for g in group_runs(load_runs(tmp_path)[0])}
    c = compare(groups["frozen"], groups["id"], "ndcg@10", "test")
    assert c.p_value is None and "different kinds" in c.evidence()


def test_non_finite_statistics_are_no_test():
    assert t_pvalue(float("nan"), 3) is None and normal_pvalue(float("nan")) is None
    assert t_pvalue(float("inf"), 3) is None and normal_pvalue(float("-inf")) is None
    assert t_pvalue(1.0, float("nan")) is None
    assert paired_test(np.array([np.nan, 0.1]), np.array([0.0, 0.0]), n=100)["p_value"] is None


def test_a_nan_seed_mean_is_no_test_not_significant(tmp_path):
    put(tmp_path, "id-s0", seed=0, mean=0.1)
    put(tmp_path, "id-s1", seed=1, mean=float("nan"))
    put(tmp_path, "text-s0", tower="frozen", seed=0, mean=0.3)
    put(tmp_path, "text-s1", tower="frozen", seed=1, mean=0.31)
    md = write_report(tmp_path).read_text()
    got = text_vs_id(tmp_path)
    assert got["p_value"] is None and not got["significant"]
    assert "**no clear difference**" in next(x for x in md.splitlines() if x.startswith("- SASRec: the text"))


def test_the_cold_item_claim_is_tested_over_cold_users(tiny_dataset, tmp_path):
    from tcf.run.seqdata import SeqData

    data = SeqData(tiny_dataset)
    targets = np.array([data.seqs[u][-1] for u in data.users])
    cold = data.train_counts[targets] <= 2
    assert 5 <= cold.sum() < len(cold)
    rng = np.random.default_rng(4)
    base = rng.random(len(cold)) * 0.2
    text = base + np.where(cold, 0.5, 0.0) + rng.normal(0, 0.01, len(cold))
    for k in range(3):  # 2 x 2 seed deviations: enough to measure seed noise (none here: every seed the same)
        put(tmp_path, f"id-s{k}", seed=k, per_user=base, dataset=tiny_dataset, cold_max_count=2)
        put(tmp_path, f"text-s{k}", tower="frozen", seed=k, per_user=text, dataset=tiny_dataset, cold_max_count=2)
    md = write_report(tmp_path).read_text()
    answer = md.split("**Does text beat ID?**")[1].split("**Does fine-tuning")[0]
    line = next(x for x in answer.splitlines() if "cold items" in x)
    assert f"{int(cold.sum())} users" in line and "t-test over users and seeds" in line
    assert "**text beats ID on cold items**" in line
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    got = next(c for c in summary["comparisons"] if c["question"] == "text vs ID (cold items)")
    d = text[cold] - base[cold]  # the seeds repeat each run exactly: no seed noise, the users' part alone
    assert got["p_value"] == pytest.approx(t_pvalue(d.mean() / (d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1))
    assert got["family"] == 1 and got["n_users"] == int(cold.sum())


def test_failed_and_foreign_runs_with_an_experiment_file(tmp_path):
    put(tmp_path, "a", mean=0.1)
    failed = tmp_path / "b"
    failed.mkdir()
    (failed / "error.txt").write_text("RuntimeError: out of memory\n")
    put(tmp_path, "stray", tower="frozen", mean=0.9)
    plan = {"name": "exp", "source": "exp.yaml", "runs": [{"id": i} for i in ("a", "b", "c", "d")]}
    (tmp_path / "experiment.json").write_text(json.dumps(plan))
    md = write_report(tmp_path).read_text()
    assert "2 planned run(s) have no results yet: `c`, `d`." in md
    assert "1 planned run(s) failed" in md and f"`b`: RuntimeError: out of memory (see `{failed / 'error.txt'}`)" in md
    assert "Not in this experiment" in md and "`stray`" in md
    tables = md.split("## Trained recommenders")[1]
    assert "stray" not in tables.split("Not in this experiment")[0] and "0.9000" not in md
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r for g in summary["groups"] for r in g["runs"]] == ["a"]
    assert summary["not_in_experiment"] == ["stray"]


def test_seeds_recorded_before_and_after_a_setting_was_added_form_one_group(tmp_path):
    """A run written after a new setting appeared (the tracking section, or any key at its default) is the same
    setting as an older seed without it: one group of three seeds, not a group of two beside a group of one."""
    for k in range(3):
        folder = put(tmp_path, f"id-s{k}", seed=k, mean=0.1 + k / 100)
        if k == 2:
            res = json.loads((folder / "results.json").read_text())
            res["config"]["tracking"] = {"enabled": False, "timeout_s": 60.0}
            res["config"]["train"] = {"lr": 0.001}  # the default learning rate, written out
            (folder / "results.json").write_text(json.dumps(res))
    groups = group_runs(load_runs(tmp_path)[0])
    assert len(groups) == 1 and len(groups[0].runs) == 3


def test_the_report_is_the_same_bytes_when_written_again(tmp_path):
    """Bootstraps and permutation tests are seeded: the same records give the same report.md and report.json."""
    rng = np.random.default_rng(5)
    seed_groups(tmp_path, rng.normal(0.01, 0.1, N_USERS), [0.01, -0.01, 0.0], [0.0, 0.01, -0.01])
    first = write_report(tmp_path, out=tmp_path.parent / "r1")
    second = write_report(tmp_path, out=tmp_path.parent / "r2")
    for name in ("report.md", "report.json"):
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes()


def test_many_runs_outside_the_experiment_are_a_short_list(tmp_path):
    put(tmp_path, "a", mean=0.1)
    for i in range(12):
        put(tmp_path, f"stray{i:02d}", tower="frozen", mean=0.5)
    (tmp_path / "experiment.json").write_text(json.dumps({"runs": [{"id": "a"}]}))
    md = write_report(tmp_path).read_text()
    line = next(x for x in md.splitlines() if x.startswith("Not in this experiment"))
    assert "`stray09`" in line and "`stray10`" not in line and "and 2 more (report.json lists them)" in line
    assert len(json.loads((tmp_path / "report" / "report.json").read_text())["not_in_experiment"]) == 12


def test_groups_with_different_seeds_are_compared_on_the_seeds_they_share(tmp_path):
    """A 1-seed group against a 3-seed average would count the seed spread as an effect: both are cut to the
    shared seed, and the line says so."""
    rng = np.random.default_rng(0)
    users = rng.random(300) * 0.1
    for k, shift in enumerate((0.0, -0.004, -0.008)):  # seed 0 is the ID tower's luckiest
        put(tmp_path, f"id-s{k}", seed=k, per_user=users + shift)
    put(tmp_path, "text", tower="frozen", seed=0, per_user=users + 0.0005 * (rng.random(300) > 0.5))
    groups = {g.first.tower: g for g in group_runs(load_runs(tmp_path)[0])}
    c = compare(groups["frozen"], groups["id"], "ndcg@10", "test")
    assert c.shared == ("0",) and c.of_seeds == (1, 3) and c.seeds == (1, 1)
    assert c.b.mean == pytest.approx(users.mean()) and c.diff == pytest.approx(0.00025, abs=1e-4)
    assert "on the seed both groups have (0; they have 1 and 3)" in c.evidence()
    every = compare(groups["id"], groups["id"], "ndcg@10", "test")
    assert every.shared is None and every.seeds == (3, 3)


def test_too_few_differing_users_is_not_a_test(tmp_path):
    """With m users differing a sign-flip p is at least 2^(1-m): under 6 no result could count, so there is no test
    (and no place in a Holm family), said as such."""
    base = np.zeros(16)
    put(tmp_path, "id", per_user=base)
    put(tmp_path, "text", tower="frozen", per_user=np.where(np.arange(16) < 1, 0.5, 0.0))
    groups = {g.first.tower: g for g in group_runs(load_runs(tmp_path)[0])}
    c = compare(groups["frozen"], groups["id"], "ndcg@10", "test")
    assert c.p_value is None and "not testable: 1 of 16 users differ" in c.evidence()
    assert not c.significant(0.05) and c.diff_ci is None


def test_the_seed_note_is_said_on_lines_without_a_test_and_when_no_seed_is_shared(tmp_path):
    base = np.zeros(16)
    for seed in (0, 1):
        put(tmp_path, f"id{seed}", seed=seed, per_user=base)
    put(tmp_path, "text", tower="frozen", seed=0, per_user=np.where(np.arange(16) < 1, 0.5, 0.0))
    groups = {g.first.tower: g for g in group_runs(load_runs(tmp_path)[0])}
    c = compare(groups["frozen"], groups["id"], "ndcg@10", "test")
    assert c.p_value is None and c.evidence().endswith("; on the seed both groups have (0; they have 1 and 2)")
    assert c.record()["shared_seeds"] == ["0"] and c.record()["of_seeds"] == [1, 2]
    put(tmp_path, "text9", tower="finetune", seed=9, per_user=base + 0.01 * np.arange(16))
    groups = {g.first.tower: g for g in group_runs(load_runs(tmp_path)[0])}
    c = compare(groups["finetune"], groups["id"], "ndcg@10", "test")
    assert "; the groups share no seed (1 vs 2 seeds, each averaged over its own)" in c.evidence()


def test_the_least_number_of_differing_users_follows_alpha():
    from tcf.experiments.stats import min_differing

    assert [min_differing(a) for a in (0.1, 0.05, 0.01)] == [5, 6, 8]  # 2^(1-m) < alpha: 1/16, 1/32, 1/128


def test_spearman_averages_tied_ranks_and_its_exact_p_is_the_share_of_orders_as_extreme():
    from tcf.experiments.answers import _spearman, spearman_exact_p

    # ties: ordinal ranks would make this 0.8; average ranks give the textbook 0.9487
    x, y = [1, 2, 3, 4, 5], [1.0, 2.0, 2.0, 4.0, 5.0]
    assert _spearman(x, y) == pytest.approx(np.corrcoef([0, 1, 2, 3, 4], [0, 1.5, 1.5, 3, 4])[0, 1])
    assert spearman_exact_p(x, [1, 2, 3, 4, 5]) == pytest.approx(2 / 120)  # only the two monotone orders
    assert spearman_exact_p(x, [5, 4, 3, 2, 1]) == pytest.approx(2 / 120)
    assert spearman_exact_p(x, [1, 3, 2, 5, 4]) > 0.05
    assert spearman_exact_p(list(range(9)), list(range(9))) is None  # 9! orders: not enumerated


def _placebo_rate(sigma_b: float, reps: int = 300, users: int = 200) -> tuple[float, float]:
    """Two equal configurations of one pool of 4 configurations x 3 seeds under the model the test assumes
    (y_us = a_u + b_cs + e_ucs): the share of reps called different at 0.05 by the test over users and seeds,
    and by the paired test over users alone (a t-test here, for speed)."""
    from tcf.experiments.results import Stat
    from tcf.experiments.stats import noise_from_tables, users_and_seeds

    rng = np.random.default_rng(11)
    new = old = 0
    for _ in range(reps):
        a = rng.normal(0, 0.1, users)
        tables = [a + rng.normal(0, sigma_b, (3, 1)) + rng.normal(0, 0.05, (3, users)) for _ in range(4)]
        noise = noise_from_tables(tables, "pool")
        st = Stat(0.0, None, None, 3, "users")
        ua, ub = tables[0].mean(0), tables[1].mean(0)
        new += users_and_seeds(st, st, ua, ub, (3, 3), noise, noise).p_value < 0.05
        d = ua - ub
        old += t_pvalue(d.mean() / (d.std(ddof=1) / math.sqrt(users)), users - 1) < 0.05
    return new / reps, old / reps


@pytest.mark.parametrize("sigma_b", [0.0, 0.008])
def test_the_users_and_seeds_test_holds_its_level_where_seeds_matter(sigma_b):
    """Calibration under the mixed model, not a copy of the formula: with no seed effect both tests hold 5%; with
    a seed effect as large as ml-100k SASRec's (sd 0.008) the test over users alone calls most equal
    configurations different, this one about 5%."""
    new, old = _placebo_rate(sigma_b)
    assert 0.02 <= new <= 0.09, new
    if sigma_b:
        assert old > 0.3, old


def test_seed_noise_seen_in_fewer_than_three_seed_deviations_gives_no_test():
    from tcf.experiments.results import Stat
    from tcf.experiments.stats import noise_from_tables, users_and_seeds

    rng = np.random.default_rng(0)
    tables = [rng.normal(0, 0.1, 50) + rng.normal(0, 0.01, (2, 1)) + rng.normal(0, 0.05, (2, 50)) for _ in range(2)]
    noise = noise_from_tables(tables, "two configurations of 2 seeds")
    assert noise.seed_df == 2
    st = Stat(0.0, None, None, 2, "users")
    c = users_and_seeds(st, st, tables[0].mean(0), tables[1].mean(0) + 0.5, (2, 2), noise, noise)
    assert c.p_value is None and c.reason.startswith("not testable: the seed noise of two configurations")
    assert c.verdict(0.05, "a", "b") == "not testable"


def test_the_user_by_seed_interaction_is_not_counted_twice():
    """Seed means spread by sigma_b^2 + sigma_e^2/U; the users' paired variance already holds sigma_e^2/U."""
    from tcf.experiments.stats import noise_from_tables

    rng = np.random.default_rng(1)
    u = 400
    tables = [rng.normal(0, 0.1, u) + rng.normal(0, 0.2, (3, u)) for _ in range(30)]  # no seed effect at all
    noise = noise_from_tables(tables)
    raw = np.mean([t.mean(1).var(ddof=1) for t in tables])
    assert raw == pytest.approx(0.2 ** 2 / u, rel=0.3)  # the seed means do spread, by the interaction alone
    assert noise.var < 0.2 * raw


def test_a_side_without_seed_noise_of_its_own_borrows_the_other_sides_not_none(tmp_path):
    """A new head with one seed against SASRec with three: treating its checkpoint as fixed would call a
    seed's luck a difference; the test assumes SASRec's seed noise for it too, and says so."""
    rng = np.random.default_rng(5)
    base = rng.random(N_USERS) * 0.3
    for k, o in enumerate((0.01, -0.012, 0.002, -0.004)):
        put(tmp_path, f"id-s{k}", seed=k, per_user=base + o + rng.normal(0, 0.02, N_USERS))
    folder = put(tmp_path, "llm", seed=0, per_user=base - 0.012 + rng.normal(0, 0.02, N_USERS))
    res = json.loads((folder / "results.json").read_text())
    res["config"]["model"]["head"] = "llm"
    (folder / "results.json").write_text(json.dumps(res))
    groups = {g.first.head: g for g in group_runs(load_runs(tmp_path)[0])}
    c = compare(groups["llm"], groups["sasrec"], "ndcg@10", "test", pool=list(groups.values()))
    assert c.test == "t-test over users and seeds" and len(c.noise) == 1  # one estimate: one component, once in df
    assert "assumed for LLM head too" in c.noise[0].where
    from tcf.experiments.stats import on_shared_seeds

    a, b, _ = on_shared_seeds(groups["llm"], groups["sasrec"])  # seed 0, the one both have
    n, d = c.noise[0], a.user_values("ndcg@10", "test")[1] - b.user_values("ndcg@10", "test")[1]
    assert n.factors == (4.0, 1.0)  # the LLM head's share counts 4x: its sd doubled, in case a new head is noisier
    assert c.record()["seed_noise"][0]["factors"] == [4.0, 1.0]  # and report.json says so
    v_users, v_seeds = d.var(ddof=1) / len(d), n.var * (4 / len(a.runs) + 1 / len(b.runs))
    assert c.df == pytest.approx((v_users + v_seeds) ** 2 / (v_users ** 2 / (len(d) - 1) + v_seeds ** 2 / n.df))
    assert c.p_value > 0.05  # a 1-seed shift of -0.022 against SASRec's seed sd ~0.01


def test_a_head_with_two_seeds_still_borrows_until_its_own_seed_noise_is_testable(tmp_path):
    """A new head's second seed gives its pool 1 seed deviation, too few to test with: the test assumes the other
    side's seed noise, as it did with one seed, instead of turning "testable" into "not testable" for a seed more."""
    rng = np.random.default_rng(5)
    base = rng.random(N_USERS) * 0.3
    for k, o in enumerate((0.01, -0.012, 0.002, -0.004)):
        put(tmp_path, f"id-s{k}", seed=k, per_user=base + o + rng.normal(0, 0.02, N_USERS))
    for k, o in enumerate((-0.012, -0.02)):
        folder = put(tmp_path, f"llm-s{k}", seed=k, per_user=base + o + rng.normal(0, 0.02, N_USERS))
        res = json.loads((folder / "results.json").read_text())
        res["config"]["model"]["head"] = "llm"
        (folder / "results.json").write_text(json.dumps(res))
    groups = {g.first.head: g for g in group_runs(load_runs(tmp_path)[0])}
    c = compare(groups["llm"], groups["sasrec"], "ndcg@10", "test", pool=list(groups.values()))
    assert c.test == "t-test over users and seeds" and c.p_value is not None, c.reason
    n = c.noise[0]
    assert "pooled with LLM head ID: 1 seed deviation (equal seed noise assumed" in n.where and len(c.noise) == 1
    # the pooled variance of a two-sample t-test: both heads' seed deviations in one estimate, not its own set aside
    from tcf.experiments.stats import _tables, noise_from_tables, seed_noise

    both = noise_from_tables(_tables(list(groups.values()), "ndcg@10", "test", None))
    sasrec = seed_noise(list(groups.values()), "sasrec", "id", "ndcg@10", "test")
    assert (n.var, n.df, n.seed_df) == (both.var, both.df, sasrec.seed_df + 1) and n.var != sasrec.var


def _as_head(folder: Path, head: str, tower: str | None = None) -> None:
    res = json.loads((folder / "results.json").read_text())
    res["config"]["model"]["head"] = head
    if tower:
        res["config"]["model"]["tower"] = tower
    (folder / "results.json").write_text(json.dumps(res))


def test_an_assumed_seed_noise_counts_4x_on_the_lacking_side_whichever_side_it_is(tmp_path):
    """Equal seed noise cannot be checked on a new head's 1-2 deviations and a new head may be the noisier (a
    review simulated 11-13% false positives at 5% with twice the sd): its share counts 4x, on its own side."""
    from tcf.experiments.stats import _noise

    rng = np.random.default_rng(7)
    base = rng.random(N_USERS) * 0.3
    for k, o in enumerate((0.01, -0.012, 0.002, -0.004)):
        put(tmp_path, f"id-s{k}", seed=k, per_user=base + o + rng.normal(0, 0.02, N_USERS))
    _as_head(put(tmp_path, "llm", seed=0, per_user=base + rng.normal(0, 0.02, N_USERS)), "llm")
    groups = {g.first.head: g for g in group_runs(load_runs(tmp_path)[0])}
    pool = list(groups.values())
    ab, ba = _noise(pool, groups["llm"], groups["sasrec"], "ndcg@10", "test"), \
        _noise(pool, groups["sasrec"], groups["llm"], "ndcg@10", "test")
    assert ab[0] is ab[1] and ab[0].factors == (4.0, 1.0) and ba[0].factors == (1.0, 4.0)
    assert "assumed for LLM head too (it has no 2-seed configuration; equal seed noise assumed, and LLM head's " \
           "share of it counted 4x" in ab[0].where


def test_a_pooled_estimate_names_where_the_lacking_sides_deviations_came_from(tmp_path):
    """The LLM head's only seed deviation is of another tower kind: the line says so, not "its own"."""
    from tcf.experiments.stats import _noise

    rng = np.random.default_rng(8)
    base = rng.random(N_USERS) * 0.3
    for k, o in enumerate((0.01, -0.012, 0.002, -0.004)):
        put(tmp_path, f"id-s{k}", seed=k, per_user=base + o + rng.normal(0, 0.02, N_USERS))
    _as_head(put(tmp_path, "llm-id", seed=0, per_user=base + rng.normal(0, 0.02, N_USERS)), "llm")
    for k in range(2):
        _as_head(put(tmp_path, f"llm-frozen-s{k}", tower="frozen", seed=k,
                     per_user=base + rng.normal(0, 0.02, N_USERS)), "llm")
    groups = {(g.first.head, g.first.tower): g for g in group_runs(load_runs(tmp_path)[0])}
    na, _ = _noise(list(groups.values()), groups["llm", "id"], groups["sasrec", "id"], "ndcg@10", "test")
    assert "pooled with LLM head, all towers (borrowed): 1 seed deviation" in na.where, na.where
