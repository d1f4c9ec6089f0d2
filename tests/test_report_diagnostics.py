"""The report measures its own runs beside the answers: how close patience came to stopping a run on a plateau it
later left (and runs train.epochs cut off), how much of a seed's validation luck carries to test, and what the
tests resting on a seed-noise estimate of 0 give with a non-zero one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tcf.experiments.diagnostics import seed_luck, stopping, stopping_line
from tcf.experiments.report import write_report
from tcf.experiments.results import group_runs, load_runs


def put(root: Path, name: str, history: list[float], *, seed=0, tower="id", valid=None, test=None,
        patience=5, epochs=50, head="sasrec", encoder=None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    valid = max(history) if valid is None else valid
    test = valid if test is None else test
    res = {"config": {"name": name, "seed": seed, "model": {"head": head, "tower": tower},
                      "train": {"patience": patience, "epochs": epochs},
                      **({"encoder": {"model": encoder}} if encoder else {})},
           "metrics": {split: {"metrics": {"ndcg@10": {"mean": v, "ci95": [v - 0.01, v + 0.01]}}}
                       for split, v in (("valid", valid), ("test", test))},
           "history": [{"epoch": k + 1, "loss": 1.0, "valid_ndcg@10": v} for k, v in enumerate(history)]}
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def runs_of(root: Path):
    return [r for r in load_runs(root)[0] if r.task == "train"]


def test_plateaus_survived_and_where_a_shorter_patience_would_have_stopped(tmp_path):
    # patience 5: epochs 3-4 without a better score (a tie is not better: the trainer's rule), then better at 5
    # and 6; the last 5 bad epochs are the stop, not a survived plateau.  A patience 3 shorter (2) would have
    # stopped after epoch 4 at 0.2, 0.1 below the best; run b would have stopped on its last plateau, at its best
    put(tmp_path, "a", [0.1, 0.2, 0.2, 0.15, 0.25, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])
    put(tmp_path, "b", [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])
    a, b = sorted(runs_of(tmp_path), key=lambda r: r.folder.name)
    x = stopping(a)
    assert (x.longest, x.margin, x.capped, x.shorter[:2]) == (2, 3, False, (3, 4))
    assert abs(x.shorter[2] - 0.1) < 1e-12
    assert stopping(b).longest == 0 and stopping(b).shorter is None
    line = stopping_line([a, b])
    # a margin of exactly 3 counts as within 3, not within 2
    assert "of 2 trained runs, 0 came within 1 epoch, 0 came within 2 epochs, 1 came within 3 epochs" in line
    assert ("With a patience 3 epochs shorter, 1 would have stopped earlier, at a best validation score lower by "
            "median 0.1000 (largest: `a` +0.1000 (stopped after epochs 3-4))") in line
    assert "every run was stopped by patience" in line


def test_the_first_plateau_long_enough_is_where_a_shorter_patience_stops(tmp_path):
    # patience 6 (shorter: 3): a 3-epoch plateau at 0.2 (epochs 3-5), later a 4-epoch one at 0.3 (7-10): the
    # shorter patience stops at the first, missing 0.4 - 0.2, not at the longest
    put(tmp_path, "c", [0.1, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4] + [0.4] * 6, patience=6)
    x = stopping(runs_of(tmp_path)[0])
    assert x.longest == 4 and x.shorter[:2] == (3, 5) and abs(x.shorter[2] - 0.2) < 1e-12


def test_a_run_cut_off_by_train_epochs_is_named_as_not_converged(tmp_path):
    put(tmp_path, "capped", [0.1, 0.2, 0.3, 0.4], epochs=4)
    put(tmp_path, "stopped", [0.1, 0.2] + [0.2] * 5, epochs=50)
    line = stopping_line(runs_of(tmp_path))
    assert "1 ended at train.epochs before patience stopped them, so are not converged" in line
    assert "`capped`" in line and "`stopped`" not in line.split("not converged")[1]


def test_seed_luck_is_the_relation_of_seed_deviations_across_valid_and_test(tmp_path):
    rng = np.random.default_rng(0)
    dv_all, dt_all = [], []
    for c in range(5):  # 5 configurations x 3 seeds: 10 deviations
        v = 0.2 + 0.02 * c + rng.normal(0, 0.01, 3)
        t = v - 0.05 + rng.normal(0, 0.004, 3)
        for k in range(3):
            put(tmp_path, f"c{c}-s{k}", [v[k]], seed=k, tower="frozen" if c else "id", encoder=f"m{c}" if c else None,
                valid=float(v[k]), test=float(t[k]))
        dv_all += list(v - v.mean())
        dt_all += list(t - t.mean())
    for k in range(3):  # another head with 2 deviations only: too few to tell
        put(tmp_path, f"dssm-s{k}", [0.1 + 0.01 * k], seed=k, head="dssm", valid=0.1 + 0.01 * k, test=0.1 - 0.01 * k)
    luck = seed_luck(group_runs(runs_of(tmp_path)), "ndcg@10", "test")
    r, slope, df, k = luck["sasrec"]
    dv_all, dt_all = np.array(dv_all), np.array(dt_all)
    assert (df, k) == (10, 5)
    assert abs(r - np.corrcoef(dv_all, dt_all)[0, 1]) < 1e-12 and r > 0.5
    assert abs(slope - np.polyfit(dv_all, dt_all, 1)[0]) < 1e-9  # deviations have mean 0: through 0 is the fit
    md = write_report(tmp_path).read_text()
    assert f"SASRec r = {r:.2f}, slope {slope:.2f} (10 seed deviations of 5 configurations)" in md
    assert "DSSM: too few to tell (2 seed deviations of 1 configuration)" in md
    assert "- Early stopping (computed from each run's per-epoch validation ndcg@10; patience 5)" in md


def _zero_noise_setup():
    from types import SimpleNamespace

    from tcf.experiments.results import Stat
    from tcf.experiments.stats import SeedNoise, users_and_seeds

    rng = np.random.default_rng(1)
    st = Stat(0.1, 0.09, 0.11, 3, "users")

    def test(na, nb, shift, question="text vs ID"):
        ua = rng.normal(0.1, 0.05, 400)
        ub = ua + rng.normal(0, 0.02, 400)
        c = users_and_seeds(st, st, ua + shift, ub, (3, 3), na, nb)
        return SimpleNamespace(c=c, question=question, arrays=(ua + shift, ub))

    return SeedNoise, test


def test_tests_on_a_zero_seed_noise_estimate_are_redone_with_the_largest_non_zero_one():
    from tcf.eval.metrics import holm
    from tcf.experiments.diagnostics import zero_noise
    from tcf.experiments.results import Stat
    from tcf.experiments.stats import holm_family, users_and_seeds

    SeedNoise, test = _zero_noise_setup()
    zero = SeedNoise(0.0, 4.0, 2, 4, "LLM head ID")
    small, large = SeedNoise(1e-5, 6.0, 3, 6, "DSSM frozen text"), SeedNoise(4e-4, 5.0, 3, 6, "SASRec frozen text")
    hit, peer = test(zero, large, 0.004), test(small, small, 0.01)  # one family: hit reads the zero estimate
    other = test(large, large, 0.0)  # another family, no zero estimate
    holm_family([hit.c, peer.c])
    holm_family([other.c])
    z = zero_noise([hit, peer, other], 0.05)["all"]
    assert z["pools"] == ["LLM head ID"] and z["alt"] is large and [id(x) for x in z["hit"]] == [id(hit)]
    assert [(id(t[0]), t[1]) for t in z["tests"]] == [(id(hit), hit.c.p_holm), (id(peer), peer.c.p_holm)]  # all of
    # its family
    # both sides now read one estimate: one variance component, its df counted once, as users_and_seeds gives
    # for one pool serving both sides (not two independent copies of it)
    st = Stat(0.1, 0.09, 0.11, 3, "users")
    once = users_and_seeds(st, st, *hit.arrays, (3, 3), large, large)
    assert z["tests"][0][2] == pytest.approx(holm([once.p_value, peer.c.p_value])[0], rel=1e-9)
    assert z["tests"][0][2] > hit.c.p_holm
    assert zero_noise([other], 0.05) is None  # nothing reads a zero estimate: no line


def test_a_family_member_whose_verdict_moves_is_reported_and_slices_keep_their_own_estimates():
    from tcf.experiments.diagnostics import zero_noise
    from tcf.experiments.stats import holm_family

    SeedNoise, test = _zero_noise_setup()
    zero, large = SeedNoise(0.0, 4.0, 2, 4, "SASRec ID"), SeedNoise(2e-4, 5.0, 3, 6, "DSSM ID")
    cold_big = SeedNoise(5e-3, 5.0, 3, 6, "DSSM ID")  # the same pool on the cold-item users: another estimate
    # Holm step-down: while the hit's p is tiny the peer (p 0.03) is adjusted by 1 (0.03, significant); once the
    # hit's p rises above it, by 2 (0.06): the peer's verdict flips although its own test is unchanged
    hit, peer = test(zero, zero, 0.01), test(large, large, 0.0)
    peer.c.p_value = 0.03
    holm_family([hit.c, peer.c])
    assert hit.c.p_value < 1e-6 and peer.c.p_holm == pytest.approx(0.03)
    cold = test(zero, cold_big, 0.05, question="text vs ID (cold items)")
    holm_family([cold.c])
    z = zero_noise([hit, peer, cold], 0.05)
    assert z["all"]["alt"] is large and z["cold"]["alt"] is cold_big  # each slice its own largest estimate
    assert [id(x) for x in z["all"]["hit"]] == [id(hit)] and [id(x) for x in z["cold"]["hit"]] == [id(cold)]
    moved = {id(f): (a, b) for f, a, b in z["all"]["tests"]}
    assert moved[id(peer)][0] == pytest.approx(0.03) and moved[id(peer)][1] == pytest.approx(0.06)
    assert [id(x) for x in z["all"]["flips"]] == [id(hit), id(peer)]  # the peer too, though only the hit read a zero estimate
    assert z["cold"]["flips"] == []


def test_text_vs_id_is_asked_again_of_the_runner_up_text_tower(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tcf.config import from_dict
    from tcf.eval.metrics import holm
    from tcf.experiments.answers import ReportSettings, findings
    from tcf.experiments.diagnostics import runner_up, runner_up_line
    from test_stats_report import put as put_user

    rng = np.random.default_rng(3)
    base = rng.random(300) * 0.3
    for head, gap in (("sasrec", -0.05), ("dssm", -0.002)):  # two heads: one Holm family of two tests
        for k in range(3):
            towers = [("id", None, 0.0), ("frozen", "m1", 0.0), ("frozen", "m2", gap)]  # m1 leads on validation
            for tower, enc, shift in towers:
                folder = put_user(tmp_path, f"{head}-{enc or tower}-s{k}", tower=tower, seed=k,
                                  per_user=base + shift + rng.normal(0, 0.01, 300))
                res = json.loads((folder / "results.json").read_text())
                res["config"]["model"]["head"] = head
                res["config"]["encoder"]["model"] = enc
                (folder / "results.json").write_text(json.dumps(res))
    groups = group_runs(runs_of(tmp_path))
    s = from_dict(ReportSettings, {}, "report")
    found = findings(groups, s)
    family = [f for f in found if f.question == "text vs ID"]
    got = {f.head: (f, lead, on, second, c) for f, lead, on, second, c in runner_up(groups, found, s)}
    assert set(got) == {"sasrec", "dssm"}
    f, lead, on, second, c = got["sasrec"]
    assert f.a.first.encoder == "m1" and second.first.encoder == "m2" and on == 3
    assert lead == pytest.approx(f.a.stat("ndcg@10", "valid").mean - second.stat("ndcg@10", "valid").mean)
    assert 0.04 < lead < 0.06 and c.diff < -0.04
    i = family.index(f)  # the runner-up's p in its place, the other head's test as reported
    assert c.family == 2 and c.p_holm == holm([c.p_value if j == i else g.c.p_value for j, g in
                                               enumerate(family)])[i]
    line = runner_up_line(groups, found, s)
    assert "SASRec: frozen text (m1) led the runner-up, frozen text (m2)" in line
    assert "a seed's valid mean in these towers spreads with sd" in line
    assert f"— ID beats text, where with the chosen tower it reads {f.c.verdict(s.alpha, *f.words)}" in line


def test_runs_from_two_machines_are_named_with_how_their_bf16_matmuls_ran(tmp_path):
    from tcf.experiments.diagnostics import machines_line

    hw = {"a": {"processor": "CPU A", "cpus": 2, "platform": "p1", "native_bf16_matmul": True},
          "b": {"processor": "CPU B", "cpus": 2, "platform": "p2", "native_bf16_matmul": False}}
    for name, machine, seed in (("r1", "a", 0), ("r2", "a", 1), ("r3", "b", 2)):
        folder = put(tmp_path, name, [0.1, 0.2], seed=seed)
        res = json.loads((folder / "results.json").read_text())
        res["hardware"] = hw[machine]
        (folder / "results.json").write_text(json.dumps(res))
    line = machines_line(runs_of(tmp_path))
    assert "describe 2 kinds of machine: CPU A, 2 cores, p1, bf16 matmuls native: 2 runs (seeds 0, 1;" in line
    assert "CPU B, 2 cores, p2, bf16 matmuls emulated through the fp32 kernel" in line and "1 run (seeds 2;" in line
    assert machines_line([r for r in runs_of(tmp_path) if r.folder.name != "r3"]) is None  # one machine: no line
    res = json.loads((tmp_path / "r3" / "results.json").read_text())
    del res["hardware"]["processor"]  # a record from before the CPU model was recorded: maybe one of the others
    (tmp_path / "r3" / "results.json").write_text(json.dumps(res))
    assert "so a kind without one can be one of the others" in machines_line(runs_of(tmp_path))


def test_zero_shot_replies_that_pick_by_slot_are_named(tmp_path):
    """A model that answers "A" to every choice prompt, or copies a rank prompt's example answer, scores like a
    random order: the report must say its score measures slots, not a preference."""
    from types import SimpleNamespace

    from tcf.experiments.diagnostics import position_line

    def run(name, protocol, samples):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
        return SimpleNamespace(folder=folder, task="zeroshot",
                               config={"zeroshot.model": "models/m", "zeroshot.protocol": protocol})

    cands = [10, 11, 12, 13, 14, 15]
    choice = [{"candidates": cands[:4], "target_position": u % 4, "target": cands[u % 4], "ranking": [10],
               "prompt": "Answer with a single letter (A, B, C, D)"} for u in range(8)]
    example = [12, 10, 11, 13, 14, 15]  # slots 3, 1, 2, 4, 5, 6
    rank = [{"candidates": cands, "target_position": u % 6, "ranking": example if u < 5 else [15, 14],
             "prompt": "(for example: 3, 1, 2, 4, 5, ...)"} for u in range(7)]
    rank.append({"candidates": cands, "target_position": 0, "ranking": [], "prompt": "(for example: 3, 1, 2, 4, 5, ...)"})
    rank[4]["ranking"] = example[:5]  # the example's order, but not all 6 ranked: not a copy of it
    line = position_line([run("c", "choice", choice), run("r", "rank", rank), SimpleNamespace(task="train")])
    assert "m (choice): of 8 replies with a ranking (8 prompts), the first choice was the candidate shown in slot 1 " \
           "for 8, while the true item was shown in slot 1 for 2;" in line
    assert "m (rank): of 7 replies with a ranking (8 prompts), the first choice was the candidate shown in slot 3 for " \
           "5, slot 6 for 2, while the true item was shown in slot 3 for 1 and slot 6 for 1; 4 rank all 6 in the " \
           "order of the prompt's example answer (3, 1, 2, 4, 5, then on in order)" in line
    assert "(choice): of 8 replies with a ranking (8 prompts), the first choice was the candidate shown in slot 1 for " \
           "8, while the true item was shown in slot 1 for 2; m (rank)" in line  # no example clause without one
    assert position_line([SimpleNamespace(task="train")]) is None
    five = [{"candidates": cands[:5], "target_position": 1, "ranking": [12, 10, 11, 13, 14],
             "prompt": "(for example: 3, 1, 2, 4, 5)"}]
    assert "1 rank all 5 in the order of the prompt's example answer" in position_line([run("f", "rank", five)])


@pytest.mark.parametrize("pools", [2, 1])
def test_a_configuration_whose_seeds_spread_more_than_its_pool_is_tested_again_with_its_own_spread(tmp_path, pools):
    """The tests pool seed noise over a kind's configurations; where the chosen configuration's own seeds spread
    more than the pool says, the claim is read again with its own spread (only ever the larger: p can only rise).
    Two pools (frozen text has 2 configurations, ID borrows the head's) or one (each kind too few: both sides
    read the head's pool, one variance component)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tcf.config import from_dict
    from tcf.experiments.answers import ReportSettings, findings
    from tcf.experiments.diagnostics import own_noise, own_noise_line
    from test_stats_report import put as put_user

    rng = np.random.default_rng(5)
    base = rng.random(300) * 0.3
    for k, luck in enumerate((-0.03, 0.0, 0.03)):  # m1's seeds move its mean by +-0.03; m2's and ID's do not
        lead = 0.04 if pools == 2 else 0.1  # one pool of two configurations is wide: a larger lead to be a claim
        for tower, enc, shift in (("id", None, 0.0), ("frozen", "m1", lead + luck), ("frozen", "m2", -0.05)):
            if enc == "m2" and pools == 1:
                continue
            folder = put_user(tmp_path, f"{enc or tower}-s{k}", tower=tower, seed=k,
                              per_user=base + shift + rng.normal(0, 0.01, 300))
            res = json.loads((folder / "results.json").read_text())
            res["config"]["encoder"]["model"] = enc
            (folder / "results.json").write_text(json.dumps(res))
    groups = group_runs(runs_of(tmp_path))
    s = from_dict(ReportSettings, {}, "report")
    found = findings(groups, s)
    tests = {f.question: (f, a, b, sides) for f, a, b, sides in own_noise(found, "ndcg@10", "test", 0.05)}
    f, a, b, sides = tests["text vs ID"]
    assert f.a.first.encoder == "m1" and a < 0.05 and len(f.c.noise) == pools
    assert [g.first.encoder for g, _, _ in sides] == ["m1"]  # ID's own spread is below its pool: kept
    own_sd, pooled_sd = sides[0][1:]
    assert own_sd > pooled_sd and b > a
    line = own_noise_line(found, "ndcg@10", "test", 0.05)
    assert line.startswith("Seed noise per configuration (computed")
    assert b > a
    if b >= 0.05:  # a claim only the pool gave
        assert "1 of the 1 differences the answers claim would not hold" in line
        assert f"SASRec frozen text (m1) vs ID: {a:.2g} -> {b:.2g}; own seed sd {own_sd:.4f} for frozen text (m1) " \
               f"(pooled {pooled_sd:.4f})" in line
    else:
        assert f"the one difference the answers claim holds (its adjusted p so read: {b:.2g})" in line


def test_a_verdict_whose_towers_were_chosen_on_fewer_seeds_than_planned_is_provisional(tmp_path):
    """Selection scores candidates on the seeds they all have: while one candidate lacks a seed, the choice can
    change once it lands, so the line is provisional even when its test uses every seed."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tcf.config import from_dict
    from tcf.experiments.answers import ReportSettings, findings
    from test_stats_report import put as put_user

    rng = np.random.default_rng(7)
    base = rng.random(300) * 0.3
    for k in range(3):
        for tower, enc, shift in (("id", None, 0.0), ("frozen", "m1", 0.01), ("frozen", "m2", -0.02)):
            if enc == "m2" and k == 2:
                continue  # m2's third seed has not finished
            folder = put_user(tmp_path, f"{enc or tower}-s{k}", tower=tower, seed=k,
                              per_user=base + shift + rng.normal(0, 0.01, 300))
            res = json.loads((folder / "results.json").read_text())
            res["config"]["encoder"]["model"] = enc
            (folder / "results.json").write_text(json.dumps(res))
    s = from_dict(ReportSettings, {}, "report")
    found = findings(group_runs(runs_of(tmp_path)), s, planned_seeds=3)
    f = next(f for f in found if f.question == "text vs ID")
    assert f.a.first.encoder == "m1" and min(f.c.seeds) == 3 and f.chosen_seeds == 2
    assert f.provisional() == "provisional: its towers chosen on 2 of 3 seeds"
    assert f.line(s).endswith("(provisional: its towers chosen on 2 of 3 seeds).") and f.record(s)["provisional"]
    whole = findings(group_runs([r for r in runs_of(tmp_path) if r.config.get("encoder.model") != "m2"]), s, 3)
    assert next(f for f in whole if f.question == "text vs ID").provisional() == ""  # every candidate on 3 seeds


def test_a_permutation_p_at_its_floor_reads_as_a_bound():
    """1 / (resamples + 1) is the smallest p a sign-flip test can give: printed as an estimate it understates the
    evidence's resolution, so it reads "p <= ..."; an ordinary p, or a t-test's, keeps "=" ."""
    from tcf.eval.metrics import paired_test
    from tcf.experiments.stats import p_words

    floor = paired_test(np.ones(50), np.zeros(50), n=999)["p_value"]
    assert floor == pytest.approx(1 / 1000)
    assert p_words("perm", floor, 0.002, 2, 999) == "perm p <= 0.001, Holm-adjusted over 2 tests p <= 0.002"
    assert p_words("perm", 0.0123, None, 1, 999) == "perm p = 0.0123"
    assert p_words("t", floor, None, 1, None) == "t p = 0.001"


def test_runs_from_several_code_revisions_are_listed(tmp_path):
    from tcf.experiments.diagnostics import code_line

    for name, commit in (("r1", "aaaaaaa111"), ("r2", "aaaaaaa111"), ("r3", "bbbbbbb222"), ("r4", None),
                         ("r5", "aaaaaaa111+dirty")):
        folder = put(tmp_path, name, [0.1, 0.2])
        res = json.loads((folder / "results.json").read_text())
        if commit:
            res["git"] = commit
        (folder / "results.json").write_text(json.dumps(res))
    line = code_line(runs_of(tmp_path))
    assert "4 revisions of tcf trained these 5 runs (runs each): aaaaaaa (2), aaaaaaa+dirty (1), bbbbbbb (1), " \
           "not recorded (1)." in line
    assert code_line([r for r in runs_of(tmp_path) if r.folder.name in ("r1", "r2")]) is None


def test_a_run_stopped_where_a_sister_trained_on_to_better_is_counted_and_its_answers_say_so(tmp_path):
    from tcf.experiments.diagnostics import plateau_line, plateau_stops

    flat = [0.03] * 16  # patience 5 stopped it after 16 epochs
    put(tmp_path, "ft-s0", flat, seed=0, tower="finetune", encoder="m")
    # the same settings on another seed: at epoch 16 it stands at 0.0305 (within 5%), then trains on to 0.06
    put(tmp_path, "ft-s1", [0.03] * 15 + [0.0305] * 10 + [0.06] * 6, seed=1, tower="finetune", encoder="m")
    # another encoder that climbs far: not a sister (a better encoder says nothing of this run's pause)
    put(tmp_path, "other-s0", [0.03] * 10 + [0.09] * 10, seed=0, tower="finetune", encoder="big")
    # a sister above (0.04 > 0.031 + 5%) or below (0.025) the stopped run's level at its last epoch: another
    # course, not the same pause
    put(tmp_path, "lo-s0", [0.031] * 16, seed=0, tower="lora", encoder="m")
    put(tmp_path, "lo-s1", [0.04] * 16 + [0.08] * 5, seed=1, tower="lora", encoder="m")
    put(tmp_path, "lo-s2", [0.025] * 16 + [0.08] * 5, seed=2, tower="lora", encoder="m")
    # train.epochs ended it, not patience: not counted
    put(tmp_path, "cap-s0", [0.03] * 16, seed=0, tower="finetune", encoder="m", epochs=16)
    put(tmp_path, "cap-s1", [0.03] * 16 + [0.06] * 3, seed=1, tower="finetune", encoder="m", epochs=16)
    for k in range(2):  # frozen towers of the same encoder: the fine-tuned-vs-frozen answer compares with them
        put(tmp_path, f"fz-s{k}", [0.05 + 0.001 * k] * 12, seed=k, tower="frozen", encoder="m")
    stops = plateau_stops(runs_of(tmp_path))
    assert [(x.run.folder.name, x.sister.folder.name, x.epochs) for x in stops] == [("ft-s0", "ft-s1", 16)]
    assert abs(stops[0].sister_then - 0.0305) < 1e-12 and stops[0].sister_best == 0.06
    line = plateau_line(runs_of(tmp_path))
    assert line.startswith("Stopped early (computed from each run's per-epoch validation score): 1 of 10 trained")
    assert "SASRec finetune: 1 of 5 runs (e.g. `ft-s0` stopped after epoch 16 at 0.0300, where `ft-s1` was at " \
           "0.0305 and went on to 0.0600 at epoch 26)" in line
    md = write_report(tmp_path).read_text()
    assert "- Stopped early (computed" in md
    # the answer comparing the fine-tuned seeds with the frozen ones counts the stopped run, on its side
    assert "stopped early where a sister run trained on to a better best: 1 of 2 on the first side, 0 of 2 on " \
           "the second side, see 'Stopped early')" in md


def test_a_plateau_before_min_epochs_is_no_close_call(tmp_path):
    # 8 epochs without a better score (2-9), then better: with patience 5 it survived only because
    # train.min_epochs (10) held stopping off, so it is not a plateau it "came within" patience of; a shorter
    # patience could not have stopped it there either, only from epoch 10 on
    folder = put(tmp_path, "m", [0.1] + [0.05] * 8 + [0.2, 0.3] + [0.25] * 5, patience=5)
    res = json.loads((folder / "results.json").read_text())
    res["config"]["train"]["min_epochs"] = 10
    (folder / "results.json").write_text(json.dumps(res))
    x = stopping(runs_of(tmp_path)[0])
    assert x.longest == 0 and x.shorter is None
    put(tmp_path, "p", [0.1] + [0.05] * 3 + [0.2] + [0.15] * 5, patience=5)  # no min_epochs: a 3-epoch close call
    y = stopping(next(r for r in runs_of(tmp_path) if r.folder.name == "p"))
    assert y.longest == 3 and y.shorter == (2, 3, 0.1)


def _post_hoc_folder(root: Path, with_post: bool, post_seeds: int = 4, lonely: bool = False,
                     post_spread: float = 0.03) -> None:
    """SASRec ID, frozen and fine-tuned towers (4 seeds each: every kind's own pool testable) and, with
    ``with_post``, the fine-tuned tower again under train.min_epochs 60: better on validation than every planned
    tower, its seeds ``post_spread`` apart (far); with ``lonely`` a post-hoc LoRA tower too, which no planned run
    twins."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_stats_report import put as put_user

    rng = np.random.default_rng(5)
    base = rng.random(300) * 0.3
    arms = [("id", 0, 0.0, 0.002, 4), ("frozen", 0, 0.01, 0.002, 4), ("finetune", 0, 0.02, 0.002, 4)]
    arms += [("finetune", 60, 0.05, post_spread, post_seeds)] if with_post else []
    arms += [("lora", 60, 0.03, 0.03, post_seeds)] if lonely else []
    for tower, least, shift, spread, seeds in arms:
        for k in range(seeds):
            noise = rng.normal(0, 0.01, 300)
            noise -= noise.mean() if spread == 0 else 0  # no spread: every seed's mean exactly the same
            folder = put_user(root, f"{tower}-{least}-s{k}", tower=tower, seed=k,
                              per_user=base + shift + spread * (k - 1.5) + noise)
            res = json.loads((folder / "results.json").read_text())
            res["config"]["train"] = {"min_epochs": least, "patience": 10}
            res["config"]["model"]["finetune_layers"] = 1
            (folder / "results.json").write_text(json.dumps(res))


def test_post_hoc_runs_stay_out_of_the_planned_answers_and_are_answered_on_their_own(tmp_path):
    from tcf.config import from_dict
    from tcf.experiments.answers import ReportSettings, findings, planned_groups, post_hoc_findings

    _post_hoc_folder(tmp_path / "all", True)
    _post_hoc_folder(tmp_path / "planned", False)
    s = from_dict(ReportSettings, {"post_hoc": {"train.min_epochs": 60}}, "report")
    groups = group_runs(runs_of(tmp_path / "all"))
    planned = planned_groups(groups, s)
    assert len(groups) == 4 and len(planned) == 3
    # the planned answers read as if the post-hoc runs did not exist: no selection picks them (the post-hoc tower
    # leads on validation), no seed-noise pool or Holm family holds them
    got = [f.record(s) for f in findings(planned, s)]
    alone = [f.record(s) for f in findings(group_runs(runs_of(tmp_path / "planned")), s)]
    strip = ("a", "b")  # labels name train.min_epochs only where two values are present
    assert [{k: v for k, v in r.items() if k not in strip} for r in got] == \
           [{k: v for k, v in r.items() if k not in strip} for r in alone]
    text_vs_id = next(f for f in findings(planned, s) if f.question == "text vs ID")
    assert text_vs_id.a.first.config.get("train.min_epochs") == 0
    assert next(f for f in findings(groups, s) if f.question == "text vs ID").a.first.config.get(
        "train.min_epochs") == 60  # what happened before: the post-hoc tower was chosen
    post = post_hoc_findings(groups, s)
    assert sorted(f.question for f in post) == ["post hoc vs frozen", "post hoc vs planned"]
    twin = next(f for f in post if f.question == "post hoc vs planned")
    assert twin.a.first.config.get("train.min_epochs") == 60 and twin.b.first.config.get("train.min_epochs") == 0
    # each side's seed noise is its own population's: the post-hoc seeds' wide spread is not the twin's
    a_noise, b_noise = twin.c.noise
    assert a_noise.where == "SASRec fine-tuned text (post hoc)" and b_noise.where == "SASRec fine-tuned text"
    assert a_noise.var > 25 * b_noise.var
    vs_frozen = next(f for f in post if f.question == "post hoc vs frozen")
    assert [n.where for n in vs_frozen.c.noise] == ["SASRec fine-tuned text (post hoc)", "SASRec frozen text"]
    md = write_report(tmp_path / "all", settings={"post_hoc": {"train.min_epochs": 60}, "papers": True}).read_text()
    assert "## Post-hoc runs" in md and "against its planned twin" in md
    answers, rest = md.split("## Post-hoc runs")
    from tcf.experiments.diagnostics import seed_luck_line

    luck = seed_luck_line(planned, "ndcg@10", "test")  # selection luck measured on the planned runs only
    assert luck and luck in answers and seed_luck_line(groups, "ndcg@10", "test") not in answers
    assert "min_epochs=60" not in answers  # nor in a computed line (runner-up, selection luck) above the section
    assert "led the runner-up, fine-tuned text (minilm-l6)" not in answers and "led the runner-up" in answers
    assert "min_epochs=60" not in rest.split("## Against the papers")[1].split("\n## ")[0]
    rec = json.loads((tmp_path / "all" / "report" / "report.json").read_text())
    assert rec["post_hoc"]["settings"] == {"train.min_epochs": 60} and len(rec["post_hoc"]["comparisons"]) == 2
    assert all("min_epochs=60" not in c["a"] + c["b"] for c in rec["comparisons"])
    assert [g.get("post_hoc", False) for g in rec["groups"]].count(True) == 1


def test_post_hoc_runs_with_too_few_seeds_borrow_from_post_hoc_runs_only(tmp_path):
    from tcf.config import from_dict
    from tcf.experiments.answers import ReportSettings, post_hoc_findings

    _post_hoc_folder(tmp_path, True, post_seeds=3, lonely=True)  # 2 deviations each: the own pool is too small
    s = from_dict(ReportSettings, {"post_hoc": {"train": {"min_epochs": "60"}}}, "report")  # nested, a string
    groups = group_runs(runs_of(tmp_path))
    twin = next(f for f in post_hoc_findings(groups, s) if f.question == "post hoc vs planned")
    a_noise, b_noise = twin.c.noise
    assert a_noise.where == "SASRec, all towers (post hoc) (borrowed)" and a_noise.configs == 2
    assert b_noise.where == "SASRec fine-tuned text"
    md = write_report(tmp_path, settings={"post_hoc": {"train.min_epochs": 60}}).read_text()
    assert "LoRA text (minilm-l6) [train.min_epochs=60]: no planned twin" in md


def test_post_hoc_runs_with_too_few_seed_deviations_are_not_tested_on_the_planned_runs_noise(tmp_path):
    from tcf.config import from_dict
    from tcf.experiments.answers import ReportSettings, post_hoc_findings

    _post_hoc_folder(tmp_path, True, post_seeds=2)  # 1 deviation: the planned pool must not be assumed for it
    s = from_dict(ReportSettings, {"post_hoc": {"train.min_epochs": 60}}, "report")
    post = post_hoc_findings(group_runs(runs_of(tmp_path)), s)
    assert len(post) == 2
    for f in post:
        assert f.c.p_value is None and "not testable" in f.line(s) and "(post hoc) rests on 1 seed deviation" in \
            f.line(s) and "pooled with" not in f.line(s)


@pytest.mark.parametrize("spread, caveat", [(0.0, True), (0.03, False)])
def test_a_post_hoc_test_on_a_seed_noise_estimate_of_0_carries_the_computed_caveat_in_its_section(
        tmp_path, spread, caveat):
    # post-hoc seeds with exactly equal means (the user-by-seed noise centred): the post-hoc pool is estimated as
    # 0 by construction, so its tests treat the checkpoints as fixed; the section says so and redoes them, as the
    # planned answers' caveats would, with the largest estimate among the planned tests too
    _post_hoc_folder(tmp_path, True, post_spread=spread)
    md = write_report(tmp_path, settings={"post_hoc": {"train.min_epochs": 60}}).read_text()
    above, section = md.split("## Post-hoc runs")
    lines = section.split("\n## ")[0].splitlines()
    at = next((k for k, x in enumerate(lines) if x.startswith("- Seed noise estimated as 0")), None)
    assert (at is not None) is caveat and "Seed noise estimated as 0" not in above
    rec = json.loads((tmp_path / "report" / "report.json").read_text())
    assert ("seed_noise_zero" in rec["post_hoc"]) is caveat and "seed_noise_zero" not in rec
    if caveat:  # under a lead of its own, not as one more bullet of the last question's list
        assert lines[at - 1] == "" and lines[at - 2].startswith("Computed caveat")
        line = lines[at]
        assert "read a seed-noise estimate of 0 (SASRec fine-tuned text (post hoc))" in line
        assert "SASRec fine-tuned text (minilm-l6) [train.min_epochs=60] vs frozen text (minilm-l6)" in line
        from tcf.config import from_dict
        from tcf.experiments.answers import ReportSettings, findings, planned_groups
        groups = group_runs(runs_of(tmp_path))
        s = from_dict(ReportSettings, {"post_hoc": {"train.min_epochs": 60}}, "report")
        largest = max((n for f in findings(planned_groups(groups, s), s) if f.c.basis for n, _, _ in f.c.basis[3]),
                      key=lambda n: n.var)  # the planned tests' largest estimate: the one put in place
        assert f"in its place (sd {largest.var ** 0.5:.4f}, {largest.where}," in line
        (z,) = rec["post_hoc"]["seed_noise_zero"]  # report.json carries the caveat's numbers
        assert z["users"] == "all" and z["pools_at_zero"] == ["SASRec fine-tuned text (post hoc)"]
        assert z["substitute"]["pool"] == largest.where and z["substitute"]["sd"] == pytest.approx(largest.var ** 0.5)
        assert z["tests"] and all(f"{t['comparison']} {t['p_holm_reported']:.2g} -> {t['p_holm_with_substitute']:.2g}"
                                  in line for t in z["tests"] if t["reads_zero"])
        assert any(t["reads_zero"] for t in z["tests"])


def test_a_post_hoc_run_with_two_planned_twins_is_an_error_not_a_pick(tmp_path):
    from tcf.config import from_dict
    from tcf.experiments.answers import ReportSettings, post_hoc_findings

    _post_hoc_folder(tmp_path, True)
    for f in sorted(tmp_path.glob("finetune-0-s*")):  # the planned tower again, at min_epochs 30: a second twin
        twin = tmp_path / f.name.replace("-0-", "-30-")
        shutil.copytree(f, twin)
        res = json.loads((twin / "results.json").read_text())
        res["config"]["train"]["min_epochs"] = 30
        (twin / "results.json").write_text(json.dumps(res))
    s = from_dict(ReportSettings, {"post_hoc": {"train.min_epochs": 60}}, "report")
    with pytest.raises(ValueError, match="has 2 planned twins"):
        post_hoc_findings(group_runs(runs_of(tmp_path)), s)


@pytest.mark.parametrize("post_hoc, error", [
    ({"train.min_epoch": 60}, "unknown setting 'train.min_epoch'"),
    ({"train": 5}, "'train' is a section of the run config"),
    ({"seed": 0}, "not a setting a configuration's runs share"),
    ({"train.min_epochs": "6x"}, "expected an integer"),
    ({"train": {}}, "names no setting"),
    ({"train.min_epochs": 600}, "marks none of the 16 planned runs"),
])
def test_a_post_hoc_setting_that_cannot_mark_the_amendment_is_an_error(tmp_path, post_hoc, error):
    _post_hoc_folder(tmp_path, True)
    plan = {"runs": [{"id": f.name, "config": json.loads((f / "results.json").read_text())["config"]}
                     for f in sorted(tmp_path.iterdir())]}
    (tmp_path / "experiment.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match=error):
        write_report(tmp_path, settings={"post_hoc": post_hoc})
    write_report(tmp_path, settings={"post_hoc": {"train.min_epochs": 60}})  # the right one reports


def test_post_hoc_towers_are_marked_in_the_plots(tmp_path, monkeypatch):
    from tcf.config import from_dict
    from tcf.experiments import render
    from tcf.experiments.answers import ReportSettings

    _post_hoc_folder(tmp_path, True)
    s = from_dict(ReportSettings, {"post_hoc": {"train.min_epochs": 60}}, "report")
    figures = []
    monkeypatch.setattr(render, "_save_figure", lambda plt, fig, *a, **k: figures.append(fig) or True)
    groups = group_runs(runs_of(tmp_path))
    render.plot_towers(groups, s, tmp_path / "towers.png", "t")
    (towers,) = figures
    ax = towers.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    hatched = [names[k] for k, bar in enumerate(ax.patches[:len(names)]) if bar.get_hatch()]
    assert hatched == [n for n in names if n.endswith("(post hoc)")] and len(hatched) == 1
    assert "train.min_epochs=60" in hatched[0]


def test_a_post_hoc_difference_is_read_again_on_its_own_configurations_seed_noise(tmp_path):
    # the post-hoc tower beats its twin and frozen: the section reads those claims again on each configuration's
    # own seed spread, as the planned answers' 'Seed noise per configuration' caveat does for theirs
    _post_hoc_folder(tmp_path, True, post_spread=0.01, lonely=True)
    md = write_report(tmp_path, settings={"post_hoc": {"train.min_epochs": 60}}).read_text()
    section = md.split("## Post-hoc runs")[1].split("\n## ")[0]
    own = [x for x in section.splitlines() if x.startswith("- Seed noise per configuration")]
    assert len(own) == 1 and "Computed caveat" in section.split(own[0])[0]
    # the post-hoc tests' own claims, not the planned answers'; the configurations they compare counted, not assumed
    assert "each of the 2 differences the post-hoc tests claim holds" in own[0] and "the answers claim" not in own[0]
    assert "of the 4 configurations these tests compare" in own[0]
    # the amendment's tests adjusted within each question (2 + 1 here), and read again as one family of all 3
    (one,) = [x for x in section.splitlines() if x.startswith("- One Holm family")]
    assert "adjusted instead as one family of all 3, each of the 2 differences claimed holds" in one
    assert "share their seed, data and code" in section  # the twin test's independence assumption is stated
    rec = json.loads((tmp_path / "report" / "report.json").read_text())["post_hoc"]
    own_json = rec["own_seed_noise"]  # report.json carries the line's numbers, each pointing at its comparison
    assert len(own_json) == 2 and all(x["holds"] and x["p_holm_own_noise"] < 0.05 for x in own_json)
    for x in own_json:
        c = rec["comparisons"][x["comparison_index"]]
        assert c["question"] == x["question"] and c["p_holm"] == pytest.approx(x["p_holm_reported"])
        assert f"{c['a']}" in x["comparison"]


def test_a_controls_post_hoc_runs_stay_out_of_its_answers_in_the_main_report(tmp_path):
    # a control folder whose own plan marks post-hoc runs: the main report's section on it answers its planned
    # runs only (as its own report does), never choosing the post-hoc tower as its best on validation
    ctl, main = tmp_path / "ctl", tmp_path / "main"
    _post_hoc_folder(ctl, True)
    _post_hoc_folder(main, False)
    (ctl / "experiment.json").write_text(json.dumps({"report": {"post_hoc": {"train.min_epochs": 60}}}))
    md = write_report(main, settings={"controls": [str(ctl)]}).read_text()
    assert "Its post-hoc runs (train.min_epochs=60) are left out of the answers below" in md
    (control,) = json.loads((main / "report" / "report.json").read_text())["controls"]
    assert control["comparisons"] and not any("min_epochs=60" in c["a"] + c["b"] for c in control["comparisons"])


def test_the_scaling_plots_id_baseline_is_never_a_post_hoc_run(tmp_path, monkeypatch):
    from tcf.config import from_dict
    from tcf.experiments import render
    from tcf.experiments.answers import ReportSettings

    _post_hoc_folder(tmp_path, False)
    for f in sorted(tmp_path.glob("id-0-s*")):  # ID again at min_epochs 60: a post-hoc candidate
        g = tmp_path / f.name.replace("id-0", "id-60")
        shutil.copytree(f, g)
        res = json.loads((g / "results.json").read_text())
        res["config"]["train"]["min_epochs"] = 60
        (g / "results.json").write_text(json.dumps(res))
    for f in tmp_path.glob("frozen-*"):  # a measured encoder size: the plot draws
        res = json.loads((f / "results.json").read_text())
        res["parameters"] = {"encoder": 22_700_000}
        (f / "results.json").write_text(json.dumps(res))
    s = from_dict(ReportSettings, {"post_hoc": {"train.min_epochs": 60}}, "report")
    groups = group_runs(runs_of(tmp_path))
    chosen = []
    monkeypatch.setattr(render, "select", lambda gs, metric: chosen.append(gs) or (gs[0] if gs else None))
    monkeypatch.setattr(render, "_save_figure", lambda *a, **k: True)
    render.plot_scaling(groups, s, tmp_path / "scaling.png", "t")
    assert chosen and all(g.settings.get("train.min_epochs") != 60 for gs in chosen for g in gs)


def test_the_plots_mark_groups_on_fewer_seeds_than_planned(tmp_path, monkeypatch):
    """A one-seed bar's interval leaves out seed noise, so its label says it stands on fewer seeds (as its
    verdicts say "provisional"); a group on every planned seed, or a plot without a plan, says nothing."""
    from tcf.config import from_dict
    from tcf.experiments import render
    from tcf.experiments.answers import ReportSettings

    _post_hoc_folder(tmp_path, True, post_seeds=2)
    for f in tmp_path.glob("frozen-*"):  # a measured encoder size: the scaling plot draws the frozen series
        res = json.loads((f / "results.json").read_text())
        res["parameters"] = {"encoder": 22_700_000}
        (f / "results.json").write_text(json.dumps(res))
    for f in sorted(tmp_path.glob("frozen-0-s*"))[1:]:  # frozen keeps one of its 4 seeds
        shutil.rmtree(f)
    s = from_dict(ReportSettings, {"post_hoc": {"train.min_epochs": 60}}, "report")
    figures = []
    monkeypatch.setattr(render, "_save_figure", lambda plt, fig, *a, **k: figures.append(fig) or True)
    groups = group_runs(runs_of(tmp_path))
    render.plot_towers(groups, s, tmp_path / "towers.png", "t", planned_seeds=4)
    render.plot_scaling(groups, s, tmp_path / "scaling.png", "t", planned_seeds=4)
    render.plot_towers(groups, s, tmp_path / "towers.png", "t")  # no plan: no note
    towers, scaling, bare = figures
    names = [t.get_text() for t in towers.axes[0].get_yticklabels()]
    (frozen,) = [n for n in names if n.lower().startswith("frozen")]
    (post,) = [n for n in names if n.endswith("(post hoc)")]
    assert len(names) == 4 and sum("seeds)" in n for n in names) == 2
    assert frozen.endswith("(1 of 4 seeds)") and post.endswith("(2 of 4 seeds) (post hoc)")
    (series,) = [x for x in scaling.axes[0].get_legend_handles_labels()[1] if "ID baseline" not in x]
    assert series.endswith("(1 of 4 seeds)")
    assert not any("seeds)" in t.get_text() for t in bare.axes[0].get_yticklabels())


def test_a_report_without_a_plan_marks_the_plots_as_its_verdicts(tmp_path, monkeypatch):
    """No experiment.json: a verdict on fewer seeds than the most any group has is provisional, and the plots
    mark that group the same way."""
    from tcf.experiments import render

    _post_hoc_folder(tmp_path, False)
    for f in sorted(tmp_path.glob("frozen-0-s*"))[1:]:  # frozen keeps one of its 4 seeds
        shutil.rmtree(f)
    figures = []
    monkeypatch.setattr(render, "_save_figure", lambda plt, fig, *a, **k: figures.append(fig) or True)
    md = write_report(tmp_path).read_text()
    assert "provisional: on 1 of 4 seeds" in md
    (towers,) = figures
    names = [t.get_text() for t in towers.axes[0].get_yticklabels()]
    assert [n for n in names if "seeds)" in n] == [n for n in names if n.lower().startswith("frozen")]
    assert all(n.endswith("(1 of 4 seeds)") for n in names if "seeds)" in n) and len(names) == 3
