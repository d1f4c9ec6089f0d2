"""Zero-shot runs against their baselines on the run's own candidate lists.

Random (each user's exact expectation) and popularity (the zero-shot run's stored paired test, or
re-scored here from the training counts for a metric it did not test): paired tests over the run's users.
The validation-best trained configuration of each head: every seed's checkpoint re-scored here on the same
lists with the history of the split the candidate file was built for, each user's value averaged over the
seeds, and tested by the report's t-test over users and seeds, its seed noise measured on these same lists
(a seed's spread on a 20-item list is not its spread over the full catalogue, so it is not borrowed from the
full-ranking pools; the same pools are scored here instead); the zero-shot run has no training seed.  A
configuration of one seed is one checkpoint, tested as fixed, and the line says so.  One Holm–Bonferroni
family per zero-shot run.  Scores are stored with the zero-shot run (derived/) and read back where the
checkpoints are gone, so a report without them regenerates the same lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tcf.eval.metrics import holm, metrics_from_ranks, paired_test, target_ranks
from tcf.experiments.answers import ReportSettings, chosen_on, extra_settings, seeds_planned, select
from tcf.experiments.derived import derived
from tcf.experiments.results import HEAD_NAMES, TOWER_NAMES, Group, RunResult, Stat, _seed_average
from tcf.experiments.stats import PAIRED, PAIRED_RESAMPLES, USERS_AND_SEEDS, _seed_tables, p_words, users_and_seeds


def zs_metric(run: RunResult, s: ReportSettings) -> str:
    """The metric a zero-shot run is tested on: hr@1 under ``choice`` (pick 1 of a short list), else the report's
    first.  A choice reply names one candidate and leaves the rest tied, while popularity and a trained model
    order them all, so ndcg@10 would score the LLM's other candidates at their tie's expectation and a
    baseline's at their ranks; hr@1 scores the first pick alone, the same way for each (and the LLM's ndcg@10
    there is hr@1 rescaled, so it adds nothing)."""
    return "hr@1" if run.config.get("zeroshot.protocol") == "choice" else s.metrics[0]


def zeroshot_rows(runs: list[RunResult], trained: list[Group], s: ReportSettings,
                  planned: int | None = None) -> list[dict]:
    """One row per zero-shot run: its metrics, compliance, and the baselines on its own candidate lists
    (popularity and random from the run; the best trained model of each head, scored here).  ``planned``: the
    seeds experiment.json plans (else the most any trained group has); a test against fewer is provisional."""
    planned = seeds_planned(planned, trained)
    rows = []
    for r in runs:
        if r.task != "zeroshot":
            continue
        split = r.record.split(s.split)
        compliance = split.get("compliance") or {}
        row = {"run": r, "model": Path(str(r.config.get("zeroshot.model", "?"))).name,
               "protocol": r.config.get("zeroshot.protocol", "?"), "metrics": split.get("metrics", {}),
               "n_users": split.get("n_users"), "compliance": compliance.get("valid"),
               "partial": compliance.get("partial"), "baselines": {}, "notes": []}
        for name, b in (split.get("baselines") or {}).items():
            row["baselines"][name] = b.get("metrics", {}) if isinstance(b, dict) else {}
        row["metric"] = zs_metric(r, s)
        row["ci95"] = (split.get("metrics", {}).get(row["metric"]) or {}).get("ci95")
        scored = trained_on_candidates(r, trained, s, notes=row["notes"])
        row["baselines"].update({name: v["metrics"] for name, v in scored.items()})
        row["tests"] = zeroshot_tests(r, row, scored, s, planned)
        rows.append(row)
    return rows


SCORER = 2  # in a stored score's key: raise it whenever score_on_candidates changes what it returns
CAND_KS = (1, 5, 10, 20)  # the cut-offs a candidate list is scored at


def trained_on_candidates(zs: RunResult, trained: list[Group], s: ReportSettings,
                          notes: list[str] | None = None) -> dict[str, dict]:
    """The trained configuration of each head (same dataset) best on validation, every seed's checkpoint scored
    on the zero-shot run's candidate lists: name -> {metrics, users, per_user (each user's value averaged over
    the seeds scored), seeds (those scored), finished (its runs), noise}.  ``noise``: the seed noise *on these
    lists* of the run's test metric (:func:`zs_metric`), from the pool :func:`tcf.experiments.stats.seed_noise`
    reads (the head's configurations of that tower kind with 2+ seeds, else all its towers, each scored here
    too), so the zero-shot run is tested against the configuration, not one checkpoint; None for one seed.
    The run whose top items are the lists' hard negatives (``zeroshot.hard_run``) is left out, said in
    ``notes``: its rank of the target among them equals its full-catalogue rank, and the lists were made hard
    for it alone, so it is no baseline there (nor a measure of seed noise on them)."""
    cand = zs.record.section("candidates", {})
    path, fingerprint = cand.get("path"), zs.record.dataset.get("fingerprint")
    if not path and not cand.get("key"):
        return {}
    hard, m, tm = hard_run_of(zs), s.metrics[0], zs_metric(zs, s)  # selected on m (validation), tested on tm
    memo: dict[str, tuple[dict | None, str]] = {}

    def score(run: RunResult) -> tuple[dict | None, str]:
        if str(run.folder) not in memo:
            memo[str(run.folder)] = _stored_score(zs, run, cand)
        return memo[str(run.folder)]

    def per_user(run: RunResult, metric: str):
        got = score(run)[0]
        return None if got is None or metric not in got["per_user"] else (got["users"], got["per_user"][metric])

    out = {}
    for head in sorted({g.first.head for g in trained}):
        same = [g for g in trained if g.first.head == head
                and g.first.record.dataset.get("fingerprint") == fingerprint]
        best = select(same, m)
        if best is None:
            continue
        label = (f"trained {HEAD_NAMES.get(head, head)} ({TOWER_NAMES.get(best.first.tower, best.first.tower)}"
                 + (f", {best.first.encoder}" if best.first.encoder else "")
                 + (f", {extra}" if (extra := extra_settings(best)) else ""))  # the chosen setting, not only tower
        one, on = len(best.runs) == 1, chosen_on(same, m)  # on: "; chosen on seed 2020, which all have" or ""
        whole = label + (f"; seed {best.first.config.get('seed')}" if one else f"; {len(best.runs)} seeds") + on + ")"
        if hard is not None and (h := next((r for r in best.runs if is_hard_run(r, hard)), None)) is not None:
            if notes is not None:
                notes.append(f"{whole} not scored: {'it' if one else 'its seed ' + str(h.config.get('seed'))} is the "
                             f"hard_run (`{h.folder.name}`) whose top items are the negatives, so its rank among them "
                             "is its full-catalogue rank")
            continue
        done = [r for r in best.runs if score(r)[0] is not None]
        if notes is not None:
            notes.extend(f"{whole}{'' if one else ': its seed ' + str(r.config.get('seed'))} not scored on these "
                         f"lists: {score(r)[1]}" for r in best.runs if score(r)[0] is None)
        if not done:
            continue
        seeds = [str(r.config.get("seed")) for r in done]
        name = whole if len(done) == len(best.runs) else label + f"; {len(done)} of its {len(best.runs)} seeds: " \
            f"{', '.join(seeds)}{on})"
        noise = None
        if len(done) > 1:
            pool = [g for g in same if hard is None or not any(is_hard_run(r, hard) for r in g.runs)]
            noise = _seed_tables(pool, head, best.first.tower, tm, None, None, per_user)[1]
        out[name] = {**_seed_averaged([score(r)[0] for r in done], tm), "seeds": seeds, "noise": noise, "finished": len(best.runs)}
    return out


def _seed_averaged(scored: list[dict], m: str) -> dict:
    """Several checkpoints' scores on the same lists -> {metrics, users, per_user}: each user's value averaged
    over them (users in sorted order; ``m``'s users where a metric is missing somewhere)."""
    avg = {k: _seed_average([(s["users"], s["per_user"][k]) if k in s["per_user"] else None for s in scored])
           for k in scored[0]["per_user"]}
    avg = {k: v for k, v in avg.items() if v is not None}
    return {"metrics": {k: {"mean": float(v[1].mean())} for k, v in avg.items()},
            "users": avg[m][0] if m in avg else scored[0]["users"], "per_user": {k: v[1] for k, v in avg.items()}}


def _stored_score(zs: RunResult, run: RunResult, cand: dict) -> tuple[dict | None, str]:
    """``score_on_candidates`` of ``run``'s best checkpoint on the zero-shot run's lists: computed (and stored
    under the zero-shot run, derived/) where the checkpoint and the candidate file are here and are the ones the
    records name, else what was stored for the same run, checkpoint (as its record names it), lists and scorer;
    (None, why) when neither."""
    from tcf.encoders.zoo import file_hash
    from tcf.zeroshot.candidates import Candidates
    from tcf.zeroshot.candidates import key_hash as cand_key_hash

    path, best = Path(cand.get("path") or ""), Path(run.folder) / "checkpoints" / "best.pt"
    recorded = run.record.section("checkpoint", {}).get("best_sha256")
    key = {"trained_run": Path(run.folder).name, "checkpoint": recorded,
           "candidates": cand_key_hash(cand.get("key") or {}), "scorer": SCORER}
    name, compute, why = f"trained-{Path(run.folder).name}", None, ""
    if not (path.is_file() and best.is_file()):
        why = "its checkpoint or the candidate file is not here"
    elif recorded and file_hash(best)[:16] != recorded:
        why = f"{best} is not the checkpoint its results came from"
    elif cand.get("key") and cand_key_hash(Candidates.load(path).key) != key["candidates"]:
        why = f"{path} holds other lists than the run's"
    else:  # the inputs are here: scored afresh, so a change in the scoring code or the lists shows (derived warns)
        def compute():  # the target's rank on each list (items above it, ties): every metric follows
            got = score_on_candidates(run, path, zs.config.get("zeroshot.split"))
            return {"users": np.asarray(got["users"]).tolist(), "greater": np.asarray(got["greater"]).tolist(),
                    "ties": np.asarray(got["ties"]).tolist()}
    try:
        value = derived(zs.folder, name, key, compute, compact=True)
    except Exception as e:  # noqa: BLE001 - not fatal: the score stored for these very inputs, else reported
        value = derived(zs.folder, name, key, None)  # e.g. the encoder a fine-tuned run needs is not here
        if value is None:
            return None, f"re-scoring failed ({type(e).__name__}: {e})"
    if value is None:
        return None, why + " and no score is stored for them"
    per_user = metrics_from_ranks(value["greater"], value["ties"], ks=CAND_KS)
    return {"metrics": {m: {"mean": float(np.mean(v))} for m, v in per_user.items()},
            "users": np.asarray(value["users"], dtype=np.int64), "per_user": per_user}, ""


def hard_run_of(zs: RunResult) -> dict | None:
    """The trained run a zero-shot run drew hard negatives from ({path, best_sha256} as its candidate file's key
    records it), or None for uniform / popularity negatives."""
    key = zs.record.section("candidates", {}).get("key") or {}
    if key.get("negatives") == "hard" and isinstance(key.get("hard_run"), dict):
        return key["hard_run"]
    if zs.config.get("zeroshot.negatives") == "hard" and zs.config.get("zeroshot.hard_run"):
        return {"path": str(zs.config.get("zeroshot.hard_run"))}
    return None


def is_hard_run(run: RunResult, hard: dict) -> bool:
    """``run`` is that hard run: the same folder, or (a moved or copied folder) the same best checkpoint."""
    folder = Path(run.folder)
    if hard.get("path") and Path(hard["path"]).resolve() == folder.resolve():
        return True
    best = folder / "checkpoints" / "best.pt"
    if not hard.get("best_sha256") or not best.is_file():
        return False
    from tcf.encoders.zoo import file_hash

    return file_hash(best)[:16] == hard["best_sha256"]


def score_on_candidates(run: RunResult, path: Path, split: str | None = None) -> dict:
    """A trained run's best checkpoint ranking each user's zero-shot candidates (first round), with the history
    of the split the candidate file was built for (its key's ``split``; ``split`` only for a file without one)
    -> {"metrics": {name: {"mean"}}, "users": [U], "per_user": {name: [U]}, "greater": [U], "ties": [U]} in the
    file's user order (greater, ties: the target's rank, :func:`tcf.eval.metrics.target_ranks`)."""
    import torch

    from tcf.eval.ranking import score_users
    from tcf.train.trained import load_trained
    from tcf.zeroshot.candidates import Candidates

    cands = Candidates.load(path)
    split = cands.key.get("split") or split or "test"
    trained = load_trained(run.folder, record=run.record)  # strict: a checkpoint that does not fit is refused
    model, data, cfg = trained.model, trained.data, trained.cfg
    lists = torch.as_tensor(cands.lists[:, 0, :])
    with torch.no_grad():
        scores, _ = score_users(model, data, cands.users, split, max_len=cfg.model.max_len, mask_history="none",
                                device="cpu")
    greater, ties = target_ranks(scores.gather(1, lists), torch.as_tensor(cands.target_pos[:, 0]))
    per_user = metrics_from_ranks(greater, ties, ks=CAND_KS)
    return {"metrics": {k: {"mean": float(np.mean(v))} for k, v in per_user.items()},
            "users": np.asarray(cands.users, dtype=np.int64), "per_user": per_user, "greater": greater, "ties": ties}


def metric_mean(m: dict, name: str) -> float | None:
    v = m.get(name)
    v = v.get("mean") if isinstance(v, dict) else v
    return None if v is None else float(v)


ZS_POP_RESAMPLES = 10_000  # tcf.eval.metrics.paired_test's default, which the zero-shot run uses
ZS_POP_TEST = f"{PAIRED} (stored by the zero-shot run, {ZS_POP_RESAMPLES:,} sign flips)"


def _zs_test(name: str, label: str, b_mean: float | None, diff: float | None, ci, p: float | None, test: str,
             reason: str = "") -> dict:
    return {"baseline": name, "label": label, "b_mean": b_mean, "diff": diff, "ci95": ci, "test": test if p is not
            None else None, "p_value": p, "p_holm": None, "family": 1, **({"no_test": reason} if p is None else {})}


ZERO_NOISE_FIXED = "treated as fixed"  # the words of a test whose seed-noise estimate on the lists is 0
ONE_CHECKPOINT = " (one trained checkpoint, treated as fixed: a claim about its configuration also needs seeds)"
CHECKPOINTS_FIXED = (" (its trained checkpoints averaged, treated as fixed: no seed-noise estimate on these lists, "
                     "a claim about its configuration needs one)")


def _aligned(own, users: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """The zero-shot run's per-user values and a baseline's, matched by user id; or why they cannot be."""
    if own is None:
        return "no test: the zero-shot run has no per-user records"
    common, ia, ib = np.intersect1d(own[0], users, return_indices=True)
    if len(common) != len(own[0]):
        return "no test: the baseline was not scored on every user"
    return np.asarray(own[1], np.float64)[ia], np.asarray(values, np.float64)[ib]


def _paired_zs(name: str, label: str, own, users: np.ndarray, values: np.ndarray, b_mean: float | None,
               trained: int = 0) -> dict:
    """The zero-shot run's per-user values against a baseline's on the same users (matched by id); a trained
    model's test (``trained``: its checkpoints scored) says that it treats them as fixed (popularity and random
    have no training seed)."""
    pair = _aligned(own, users, values)
    if isinstance(pair, str):
        return _zs_test(name, label, b_mean, None, None, None, "", pair)
    r = paired_test(*pair, n=PAIRED_RESAMPLES)
    why = "no test: a per-user value is not a finite number"
    fixed = ONE_CHECKPOINT if trained == 1 else CHECKPOINTS_FIXED if trained > 1 else ""
    return _zs_test(name, label, b_mean, r["mean_diff"], r["ci95"], r["p_value"], PAIRED + fixed, why)


def _seeded_zs(name: str, label: str, own, v: dict, m: str, b_mean: float | None) -> dict:
    """The zero-shot run against a trained configuration's checkpoints (each user's value averaged over its
    seeds) by the report's t-test over users and seeds: the users' part from the paired differences, the seeds'
    part sigma_b^2 / seeds from the seed noise measured on these same lists (``v["noise"]``); the zero-shot run
    has no training seed and adds none."""
    pair = _aligned(own, v["users"], v["per_user"][m])
    if isinstance(pair, str):
        return _zs_test(name, label, b_mean, None, None, None, "", pair)
    a, b = pair
    k, n = len(v["seeds"]), v["noise"]
    c = users_and_seeds(Stat(float(a.mean()), None, None, 1, "users"), Stat(float(b.mean()), None, None, k, "users"),
                        a, b, (1, k), None, n)
    pool = f"{n.where}, {n.configs} configuration{'s' if n.configs > 1 else ''}"
    sd = (f"seed sd on these lists {n.var ** 0.5:.4f} ({pool}, {n.df:.3g} df)" if n.var > 0 else
          f"seed sd on these lists estimated at 0 ({pool}, {n.seed_df} seed deviations: their seed means spread no "
          f"more than the user-by-seed interaction gives), so the seed term drops out and the checkpoints are in "
          f"effect {ZERO_NOISE_FIXED}")
    test = (f"{USERS_AND_SEEDS} (the zero-shot run has no training seed; {len(a)} users, each user's trained value "
            f"averaged over {k} seeds; {sd}" + (f"; {c.df:.3g} df" if c.df is not None else "") + ")")
    out = _zs_test(name, label, b_mean, c.diff if c.p_value is not None else None, c.diff_ci, c.p_value, test,
                   c.reason)
    return {**out, "df": c.df, **({"diff": c.diff} if c.reason.startswith("not testable") else {})}


def pop_on_candidates(zs: RunResult) -> tuple[np.ndarray, dict] | None:
    """Popularity (training counts) ranking the zero-shot run's candidate lists (first round), as the runner
    scores it: (users, per-user metrics), or None when the candidate file or the dataset is not here."""
    from tcf.data import load_dataset
    from tcf.eval.metrics import metrics_from_scores
    from tcf.run.seqdata import SeqData
    from tcf.zeroshot.candidates import Candidates

    path, ds = zs.record.section("candidates", {}).get("path"), zs.record.dataset or {}
    if not path or not Path(path).is_file() or not ds.get("path"):
        return None
    try:
        dataset = load_dataset(ds["path"], verify=False)
    except Exception:  # noqa: BLE001 - a dataset that is gone makes the test impossible, not the report
        return None
    if dataset.fingerprint != ds.get("fingerprint"):
        return None
    cands = Candidates.load(Path(path))
    counts = SeqData(dataset).train_counts[cands.lists[:, 0]].astype(np.float64)
    return np.asarray(cands.users, np.int64), metrics_from_scores(counts, cands.target_pos[:, 0], ks=(1, 5, 10, 20))


def _pop_rescored(run: RunResult, own, m: str, pop: float) -> dict:
    scored = pop_on_candidates(run)
    if scored is None or m not in scored[1]:
        return _zs_test("pop", "popularity", pop, None, None, None, "", f"no test: the run stored no paired test "
                        f"against popularity on {m}, and its candidate file or dataset is not here to re-score it")
    return _paired_zs("pop", "popularity", own, scored[0], scored[1][m], pop)


def zs_evidence(t: dict) -> str:
    """A zero-shot test's evidence as the report prints it: test, p, and the Holm-adjusted p over its family."""
    resamples = ZS_POP_RESAMPLES if t["test"] == ZS_POP_TEST else PAIRED_RESAMPLES if t["test"].startswith(PAIRED) \
        else None
    return p_words(t["test"], t["p_value"], t["p_holm"] if t["family"] > 1 else None, t["family"], resamples)


def zs_provisional(t: dict) -> str:
    """"provisional: on 2 of 3 seeds" for a test against a trained configuration with fewer seeds scored than
    planned while some are still to train; where all have trained and a checkpoint is missing, which finishing
    runs will not mend, says so instead; "" otherwise."""
    k, planned, finished = t.get("seeds"), t.get("planned"), t.get("finished")
    if not (k and planned and k < planned):
        return ""
    if finished and finished >= planned:  # every seed trained; a checkpoint missing here will not come by itself
        return (f"on {k} of its {finished} seeds: the others' checkpoints are not here to score on these lists "
                "(restore them, or rerun those seeds and replace their records, to complete it)")
    return f"provisional: on {k} of {planned} seeds"


def zeroshot_tests(run: RunResult, row: dict, scored: dict, s: ReportSettings, planned: int = 1) -> list[dict]:
    """One Holm family per zero-shot run: paired tests over its users against random (each user's exact
    expectation), popularity (the run's own stored test, else re-scored) and each trained configuration on the
    same candidate lists (its ``seeds`` scored, of ``planned``: fewer make the verdict provisional)."""
    m, tests = row.get("metric") or zs_metric(run, s), []
    own = run.per_user(m, s.split)
    rand = metric_mean(row["baselines"].get("random", {}), m)
    if rand is not None:  # every list has the same length: one exact expectation for every user
        users = own[0] if own is not None else np.zeros(0, np.int64)
        tests.append(_paired_zs("random", "random", own, users, np.full(len(users), rand), rand))
    pop = metric_mean(row["baselines"].get("pop", {}), m)
    if pop is not None:
        stored = (run.record.split(s.split).get("vs_pop") or {}).get(m)
        if stored and stored.get("p_value") is not None:
            tests.append(_zs_test("pop", "popularity", pop, stored.get("mean_diff"), stored.get("ci95"),
                                  float(stored["p_value"]), ZS_POP_TEST))
        else:
            tests.append(_pop_rescored(run, own, m, pop))
    for name, v in scored.items():
        if m in v["per_user"]:
            b_mean = metric_mean(v["metrics"], m)
            if v.get("noise") is not None:
                tests.append(_seeded_zs(name, f"the {name}", own, v, m, b_mean))
            else:
                tests.append(_paired_zs(name, f"the {name}", own, v["users"], v["per_user"][m], b_mean,
                                        trained=len(v.get("seeds") or [0])))
            tests[-1].update(seeds=len(v.get("seeds") or [0]), planned=planned, finished=v.get("finished"))
    adjusted = holm([t["p_value"] for t in tests])
    family = sum(p is not None for p in adjusted)
    for t, p in zip(tests, adjusted):
        t.update(p_holm=p, family=family, alpha=s.alpha, significant=p is not None and p < s.alpha)
    return tests
