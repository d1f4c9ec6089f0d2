"""What the report measures about its own runs, beside the answers: how close early stopping came to cutting a
run short, how much of a seed's luck on validation carries to test (which makes a tower chosen on
validation optimistic on test), and what the verdicts resting on a seed-noise estimate of 0 would be with a
non-zero one.  Computed from the records, so the sentences never go stale as runs finish.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tcf.eval.metrics import holm
from tcf.experiments.results import HEAD_NAMES, Group, RunResult
from tcf.experiments.stats import t_from_basis

NEAR = 3  # the shorter patience asked about: the study's less this many epochs


@dataclass
class Stopping:
    run: RunResult
    patience: int
    longest: int  # the longest run of epochs without a better validation score that a better one then ended
    capped: bool  # ended at train.epochs before patience stopped it
    monitored: str  # the validation metric the trainer monitored
    shorter: tuple[int, int, float] | None = None  # patience - NEAR would have stopped it: (first, last epoch of
    # that plateau, the run's best validation score less its best then), None when it would not have

    @property
    def margin(self) -> int:
        """Epochs from stopping at the closest point (patience - longest survived plateau)."""
        return self.patience - self.longest


def _valid_curve(run: RunResult) -> tuple[str, list[float]] | None:
    """(the monitored ``valid_*`` key, its value at epochs 1, 2, ...) from the run's history; None unless the
    history is one value per epoch from epoch 1, every one a finite number."""
    history = run.record.to_dict().get("history") or []
    key = next((k for k in (history[0] if history else {}) if k.startswith("valid_")), None)
    if key is None or [h.get("epoch") for h in history] != list(range(1, len(history) + 1)):
        return None
    values = [h.get(key) for h in history]
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    return (key, [float(v) for v in values]) if ok else None


def stopping(run: RunResult) -> Stopping | None:
    """The run's early-stopping history (the validation score its trainer monitored, ``valid_*`` in each epoch's
    record, better only when strictly so): its longest survived plateau, whether train.epochs ended it, and
    where a patience NEAR epochs shorter would have stopped it (the first plateau that long, as the trainer,
    which replays the same epochs under the same seed, would have met it).  Under train.min_epochs only the
    epochs from it on count: earlier, no plateau could stop the run.  None without a usable history (one finite
    score per epoch from epoch 1, as ``_valid_curve`` reads it) or without train.patience."""
    curve, patience, cap = _valid_curve(run), run.config.get("train.patience"), run.config.get("train.epochs")
    if curve is None or patience is None:
        return None
    key, values = curve
    short, least = int(patience) - NEAR, int(run.config.get("train.min_epochs") or 0)
    best, bad, longest, shorter, near = -math.inf, 0, 0, None, 0
    for epoch, v in enumerate(values, 1):
        if v > best:  # the trainer's rule: strictly better
            longest = max(longest, near)
            best, bad, near = v, 0, 0
        else:
            bad += 1
            if epoch >= least:  # before train.min_epochs no plateau can stop the run: it is no close call
                near = bad
            if shorter is None and short >= 1 and bad >= short and epoch >= least:
                shorter = (epoch - bad + 1, epoch, best)
    capped = cap is not None and len(values) >= int(cap) and bad < int(patience)
    final = max(values)
    if shorter is not None:  # stopped there: what it would have missed (0 where it never got better)
        shorter = (shorter[0], shorter[1], final - shorter[2])
    return Stopping(run, int(patience), longest, capped, key[len("valid_"):],
                    shorter if shorter and shorter[2] > 0 else None)


def stopping_line(runs: list[RunResult]) -> str | None:
    found = [x for x in (stopping(r) for r in runs) if x is not None]
    if not found:
        return None
    patience = sorted({x.patience for x in found})
    monitored = sorted({x.monitored for x in found})
    capped = [x for x in found if x.capped]
    text = (f"Early stopping (computed from each run's per-epoch validation {', '.join(monitored)}; patience "
            f"{', '.join(map(str, patience))}): of {len(found)} trained runs")
    within = [sum(1 for x in found if x.longest and x.margin <= k) for k in range(1, NEAR + 1)]
    cut = sorted((x for x in found if x.shorter), key=lambda x: (-x.shorter[2], x.run.folder.name))
    if min(patience) > NEAR:
        text += (", " + ", ".join(f"{n} came within {k} epoch{'s' if k > 1 else ''}" for k, n in
                                  enumerate(within, 1)) + " of stopping on a plateau they later left")
        if cut:
            costs = np.array([x.shorter[2] for x in cut])
            shown = "; ".join(f"`{x.run.folder.name}` {x.shorter[2]:+.4f} (stopped after epochs {x.shorter[0]}-"
                              f"{x.shorter[1]})" for x in cut[:3])
            text += (f". With a patience {NEAR} epochs shorter, {len(cut)} would have stopped earlier, at a best "
                     f"validation score lower by median {np.median(costs):.4f} (largest: {shown}); a lower best "
                     "validation score, which need not mean a lower test score")
    text += (f"; {len(capped)} ended at train.epochs before patience stopped them, so are not converged by the "
             f"study's rule ({', '.join(f'`{x.run.folder.name}`' for x in capped[:5])}"
             f"{f' and {len(capped) - 5} more' if len(capped) > 5 else ''})" if capped
             else "; every run was stopped by patience, none by train.epochs")
    return text + "."


PLATEAU_GAIN = 0.10  # a sister run's later best must exceed the stopped run's best by this share to count
PLATEAU_LEVEL = 0.05  # ... having been at its level by the same epoch: within this share of its best


@dataclass(frozen=True)
class PlateauStop:
    """A run patience stopped where a sister run (the same configuration on another seed, or the same settings
    under another train.min_epochs) stood at the same level by the same epoch, and went on to a clearly better
    best: training on was worth it there."""

    run: RunResult
    epochs: int  # epochs the stopped run trained
    best: float  # its best validation score
    sister: RunResult
    sister_then: float  # the sister's best validation score by the same epoch
    sister_best: float
    sister_best_epoch: int


def _kin(run: RunResult) -> str:
    """What sisters share: every setting but the seed and train.min_epochs (tcf.experiments.results.group_key)."""
    from tcf.experiments.results import group_key

    cfg = json.loads(group_key(run))
    cfg.pop("train.min_epochs", None)
    return json.dumps(cfg, sort_keys=True, default=str)


def _curves(runs: list[RunResult]) -> dict[int, tuple[str, list[float]]]:
    """Each trained run's validation curve (``_valid_curve``) by ``id(run)``, runs without a usable one left out."""
    return {id(r): c for r in runs if r.task == "train" and (c := _valid_curve(r))}


def plateau_stops(runs: list[RunResult]) -> list[PlateauStop]:
    """Runs patience stopped where a sister (same settings but the seed or train.min_epochs; same monitored
    metric) stood within PLATEAU_LEVEL of the stopped run's best by its last epoch and whose own best later
    exceeded it by more than PLATEAU_GAIN: patience cannot tell such a pause from convergence, and a sister
    at the same point trained on to a better model.  A lower bound: where every sister stopped too, nothing
    shows what training on would have given.  The sister with the highest best is named."""
    return _plateau_stops(runs, _curves(runs))


def _plateau_stops(runs: list[RunResult], curves: dict[int, tuple[str, list[float]]]) -> list[PlateauStop]:
    """plateau_stops, given ``curves = _curves(runs)`` of these very runs (keyed by ``id(run)``)."""
    trained = [r for r in runs if r.task == "train"]
    kin = {id(r): _kin(r) for r in trained if id(r) in curves}
    out = []
    for r in trained:
        if id(r) not in curves:
            continue
        key, mine = curves[id(r)]
        cap = r.config.get("train.epochs")
        if cap is not None and len(mine) >= int(cap):
            continue  # train.epochs ended it, not patience
        e, best, found = len(mine), max(mine), None
        for s in trained:
            if s is r or id(s) not in curves or kin[id(s)] != kin[id(r)] or curves[id(s)][0] != key:
                continue
            theirs = curves[id(s)][1]
            if len(theirs) <= e:
                continue
            then, final = max(theirs[:e]), max(theirs)
            if abs(then - best) <= PLATEAU_LEVEL * best and final > best * (1 + PLATEAU_GAIN) \
                    and (found is None or final > found.sister_best):
                found = PlateauStop(r, e, best, s, then, final, theirs.index(final) + 1)
        if found is not None:
            out.append(found)
    return out


def plateau_line(runs: list[RunResult]) -> str | None:
    curves = _curves(runs)
    stops = _plateau_stops(runs, curves)
    if not stops:
        return None
    trained = [r for r in runs if id(r) in curves]
    kinds: dict[tuple[str, str], list[PlateauStop]] = {}
    for x in stops:
        kinds.setdefault((x.run.head, x.run.tower), []).append(x)
    total = {k: sum(1 for r in trained if (r.head, r.tower) == k) for k in kinds}
    parts = []
    for (head, tower), xs in sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        worst = max(xs, key=lambda x: (x.sister_best - x.best) / x.best)
        parts.append(f"{HEAD_NAMES.get(head, head)} {tower}: {len(xs)} of {total[(head, tower)]} runs "
                     f"(e.g. `{worst.run.folder.name}` stopped after epoch {worst.epochs} at {worst.best:.4f}, where "
                     f"`{worst.sister.folder.name}` was at {worst.sister_then:.4f} and went on to "
                     f"{worst.sister_best:.4f} at epoch {worst.sister_best_epoch})")
    return (f"Stopped early (computed from each run's per-epoch validation score): {len(stops)} of {len(trained)} "
            "trained runs were stopped by patience where a sister run (the same settings on another seed, or "
            f"under another train.min_epochs) stood at the same level by the same epoch (within "
            f"{PLATEAU_LEVEL:.0%}) and went on to a best more than {PLATEAU_GAIN:.0%} higher: " + "; ".join(parts)
            + ". Patience cannot tell such a pause from convergence, so a comparison with such runs on a side can "
            "measure when training stopped as well as the tower (each answer's line counts them, by side). A lower "
            "bound: where every sister stopped as early, nothing here shows what training on would give; "
            "train.min_epochs holds stopping off for a given number of epochs.")


def plateau_note(groups, stops: list[PlateauStop]) -> str:
    """"stopped early, a sister later better: 0 of 3 runs on the first side, 2 of 3 on the second" for a
    comparison of ``groups`` (a, b); "" where none is."""
    stopped = {id(x.run) for x in stops}
    counts = [(sum(1 for r in g.runs if id(r) in stopped), len(g.runs)) for g in groups]
    if not any(n for n, _ in counts):
        return ""
    sides = ", ".join(f"{n} of {k} on the {side} side" for (n, k), side in zip(counts, ("first", "second")))
    return f"stopped early where a sister run trained on to a better best: {sides}, see 'Stopped early'"


MIN_LUCK_DEVIATIONS = 8  # fewer: r's 95% interval spans most of [-1, 1]; said as too few to tell


def seed_luck(groups: list[Group], metric: str, split: str) -> dict[str, tuple[float, int, int]]:
    """Per head: Pearson's r and the least-squares slope (through 0) of a seed's deviation from its
    configuration's mean on ``split`` against its deviation on validation, over the configurations with 2+ seeds
    -> {head: (r, slope, seed deviations (seeds - 1 summed), configurations)}."""
    out: dict[str, tuple[list, list, int, int]] = {}
    for g in groups:
        pairs = [(v[0], t[0]) for r in g.runs
                 for v, t in [(r.metric(metric, "valid"), r.metric(metric, split))] if v is not None and t is not None]
        if len(pairs) < 2:
            continue
        v, t = np.array(pairs, np.float64).T
        dv, dt, df, k = out.setdefault(g.first.head, ([], [], 0, 0))
        dv.extend(v - v.mean())
        dt.extend(t - t.mean())
        out[g.first.head] = (dv, dt, df + len(v) - 1, k + 1)
    result = {}
    for head, (dv, dt, df, k) in out.items():
        dv, dt = np.asarray(dv), np.asarray(dt)
        if dv.std() == 0 or dt.std() == 0:
            continue
        result[head] = (float(np.corrcoef(dv, dt)[0, 1]), float((dv @ dt) / (dv @ dv)), df, k)
    return result


def seed_luck_line(groups: list[Group], metric: str, split: str) -> str | None:
    luck = seed_luck(groups, metric, split)
    if not luck:
        return None

    def part(h, r, slope, df, k):
        name = HEAD_NAMES.get(h, h)
        of = f"{df} seed deviation{'s' if df != 1 else ''} of {k} configuration{'s' if k != 1 else ''}"
        if df < MIN_LUCK_DEVIATIONS:
            return f"{name}: too few to tell ({of})"
        return f"{name} r = {r:.2f}, slope {slope:.2f} ({of})"

    parts = "; ".join(part(h, *v) for h, v in sorted(luck.items()))
    return (f"Selection luck (computed): a seed's deviation from its configuration's mean valid {metric} against "
            f"its deviation on {split} (the slope: the share of a validation deviation seen again on {split}): "
            f"{parts}. Where the slope is high, a tower chosen on validation over close rivals carries part of its "
            f"seeds' luck into its {split} number, which can then be optimistic as an estimate of its "
            "configuration's.")


def _slice(f) -> str:
    """Which users a finding's test is on: its seed-noise pools are estimated on those users alone."""
    return "cold" if "(cold items)" in f.question else "all"


def _adjusted(c) -> float | None:
    return c.p_value if c.p_holm is None else c.p_holm


def _tested(found: list) -> list:
    """The Findings whose t-test ran (a seed-noise basis and a p value)."""
    return [f for f in found if f.c.basis is not None and f.c.p_value is not None]


def zero_noise(found: list, alpha: float, also: list = ()) -> dict | None:
    """The answers' t-tests over users and seeds that read a seed-noise pool estimated as exactly 0 (its seed
    means spread no more than the user-by-seed interaction alone gives, so the test treats those checkpoints as
    fixed; a near-zero estimate is not redone), tested again with the largest non-zero estimate among the
    answers' tests on the same users (all, or the cold-item slice) in each such pool's place, its df with it, one
    estimate counted once however many sides read it; each family they are in Holm-adjusted again, every member
    compared.  -> {slice: {pools, alt, hit, tests: [(finding, adjusted p as reported, with alt)], flips}}: ``hit``
    the tests that read a zero estimate, ``tests`` every member of their families, ``flips`` those whose verdict
    at ``alpha`` changes; None when none reads one.
    ``found``: the report's Findings (``.c`` each comparison, Holm families set); ``also``: more Findings whose
    tested estimates count among the candidates for the one put in place (the planned answers', for the post-hoc
    tests: one largest estimate for both), not tested again themselves."""
    tested, candidates = _tested(found), _tested(also)
    out = {}
    for where in sorted({_slice(f) for f in tested}):
        mine = [f for f in tested if _slice(f) == where]
        hit = [f for f in mine if any(n.var == 0 for n, _, _ in f.c.basis[3])]
        if not hit:
            continue
        estimates = {(n.where, n.var, n.df): n for f in mine for n, _, _ in f.c.basis[3]}
        more = [n for f in candidates if _slice(f) == where for n, _, _ in f.c.basis[3]]
        alt = max((n for n in [*estimates.values(), *more] if n.var > 0), key=lambda n: (n.var, n.where),
                  default=None)
        out[where] = z = {"pools": sorted({n.where for n in estimates.values() if n.var == 0}), "alt": alt,
                          "hit": hit, "tests": []}
        if alt is None:
            continue

        def noise_of(n, alt=alt):
            e = alt if n.var == 0 else n
            return e.var, e.df, (e.where, e.var, e.df)

        swap = {id(f.c): t_from_basis(f.c.basis, noise_of)[0] for f in hit}
        by_comparison = {id(f.c): f for f in found}
        seen = set()
        for f in hit:
            family = f.c.peers or [f.c]
            if id(family) in seen:
                continue
            seen.add(id(family))
            adjusted = holm([swap.get(id(c), c.p_value) for c in family])
            z["tests"] += [(by_comparison[id(c)], _adjusted(c), q) for c, q in zip(family, adjusted)
                           if id(c) in by_comparison and c.p_value is not None]
        z["flips"] = [f for f, a, b in z["tests"] if (a is not None and a < alpha) != (b is not None and b < alpha)]
    return out or None


def _name(f) -> str:
    from tcf.experiments.answers import labelled

    ha, hb = (HEAD_NAMES.get(g.first.head, g.first.head) for g in (f.a, f.b))
    cold = " (cold items)" if _slice(f) == "cold" else ""
    return f"{ha} {labelled(f.a)} vs {hb + ' ' if hb != ha else ''}{labelled(f.b)}{cold}"


def zero_noise_line(found: list, alpha: float, also: list = ()) -> str | None:
    slices = zero_noise(found, alpha, also)
    if slices is None:
        return None
    parts = []
    for where, z in slices.items():
        users = "on the cold-item users" if where == "cold" else "on all users"
        head = (f"{users}, {len(z['hit'])} test{'s' if len(z['hit']) != 1 else ''} read a seed-noise estimate of 0 "
                f"({'; '.join(z['pools'])})")
        if z["alt"] is None:
            parts.append(head + ", and no test on these users has a non-zero estimate to put in its place")
            continue
        alt = z["alt"]
        flips = z["flips"]
        hit = {id(f) for f in z["hit"]}
        moved = "; ".join(f"{_name(f)} {a:.2g} -> {b:.2g}" for f, a, b in z["tests"] if id(f) in hit)
        verdict = (f"{len(flips)} verdict{'s' if len(flips) != 1 else ''} would change ({'; '.join(map(_name, flips))})"
                   if flips else "no verdict would change")
        parts.append(f"{head}; with the largest non-zero estimate among the tests on these users in its place (sd "
                     f"{math.sqrt(alt.var):.4f}, {alt.where}, {alt.df:.3g} df), {verdict} in their families "
                     f"(Holm-adjusted p as reported -> with it: {moved})")
    return ("Seed noise estimated as 0 (computed, on the answers' metric, for the trained models' tests; the "
            "zero-shot lines name their own estimate): a test that reads a seed-noise estimate of "
            "exactly 0 (the spread of the pool's seed means is within what the user-by-seed interaction alone gives) "
            "treats those checkpoints as fixed; each is redone with a non-zero estimate in its place: "
            + "; ".join(parts) + ".")


def zero_noise_record(found: list, alpha: float, also: list = ()) -> list[dict]:
    """:func:`zero_noise` as records for report.json, the numbers of :func:`zero_noise_line`: one per slice of
    users (all, cold) with a test that reads a seed-noise estimate of 0; [] when none does."""
    out = []
    for where, z in (zero_noise(found, alpha, also) or {}).items():
        alt, hit, flips = z["alt"], {id(f) for f in z["hit"]}, {id(f) for f in z.get("flips", [])}
        out.append({"users": where, "pools_at_zero": z["pools"],
                    "substitute": None if alt is None else {"pool": alt.where, "sd": math.sqrt(alt.var), "df": alt.df},
                    "alpha": alpha,
                    "tests": [{"comparison": _name(f), "comparison_index": _index(found, f), "question": f.question,
                               "reads_zero": id(f) in hit,
                               "p_holm_reported": a, "p_holm_with_substitute": b, "verdict_changes": id(f) in flips}
                              for f, a, b in z.get("tests", [])]})
    return out


def _index(found: list, f) -> int | None:
    """``f``'s position in ``found``: its entry in report.json's ``comparisons`` (None when it is not there)."""
    return next((i for i, x in enumerate(found) if x is f), None)


def own_noise(found: list, metric: str, split: str, alpha: float) -> list[tuple]:
    """The answers' t-tests on all users tested again with each side's seed noise the larger of the pooled
    estimate it read and one from its own configuration's seeds alone: a pool assumes that the configurations of
    a kind spread alike over seeds, and one whose seeds spread more than its pool's can hold a verdict only the
    pool gives.  An own estimate rests on its seeds less one (2 for 3 seeds, below the MIN_SEED_DF the tests
    require), too noisy to stand in for the pool either way, so it is only ever taken where it is larger: a
    conservative reading, which can only raise a p-value.  Each family Holm-adjusted again.  -> [(finding,
    adjusted p as reported, as read here, the sides whose own estimate was taken: (group, own sd, pooled sd))]
    for each member the report calls a difference."""
    from tcf.experiments.stats import _tables, noise_from_tables

    out, seen = [], set()
    by_comparison = {id(f.c): f for f in found}
    for f in found:
        family = f.c.peers or [f.c]
        if id(family) in seen or f.c.basis is None or _slice(f) != "all":
            continue
        seen.add(id(family))
        swapped, larger = [], {}
        for c in family:
            g = by_comparison.get(id(c))
            pooled = () if c.noise is None else (c.noise * 2 if len(c.noise) == 1 else c.noise)
            if g is None or c.basis is None or _slice(g) != "all" or len(pooled) != 2:
                swapped.append(c.p_value)
                continue
            own = [noise_from_tables(_tables([x], metric, split, None), "own") for x in (g.a, g.b)]
            # a side's pooled term is var * its factor (one pool for both sides may assume one side's noise from
            # the other's, at a multiple); an own estimate replaces it only where larger, with no more df than it
            factors = pooled[0].factors if pooled[0] is pooled[1] else (1.0, 1.0)
            parts, larger[id(c)] = [], []
            for x, o, n, f, k in zip((g.a, g.b), own, pooled, factors, c.seeds):
                if o is not None and o.var > n.var * f:
                    parts.append((replace(o, df=min(o.df, n.df)), 1, k))
                    larger[id(c)].append((x, math.sqrt(o.var), math.sqrt(n.var * f)))
                else:
                    parts.append((n, f, k))
            if not larger[id(c)]:
                swapped.append(c.p_value)
                continue
            diff, v_users, n_users, _ = c.basis
            swapped.append(t_from_basis((diff, v_users, n_users, tuple(parts)))[0])
        for c, q in zip(family, holm(swapped)):
            g, a = by_comparison.get(id(c)), _adjusted(c)
            if g is not None and a is not None and a < alpha:
                out.append((g, a, q, larger.get(id(c), [])))
    return out


def own_noise_line(found: list, metric: str, split: str, alpha: float, claims: str = "the answers") -> str | None:
    """:func:`own_noise` as the report's caveat line; ``claims`` names whose differences they are ("the answers",
    the planned ones; "the post-hoc tests")."""
    tests = own_noise(found, metric, split, alpha)
    if not tests:
        return None
    from tcf.experiments.answers import labelled

    flips = [(f, a, b, sides) for f, a, b, sides in tests if not (b is not None and b < alpha)]
    held = [b for f, a, b, _ in tests if b is not None and b < alpha]
    configs = len({id(g) for f in found if f.c.basis is not None and _slice(f) == "all" for g in (f.a, f.b)
                   if len(g.seeds) >= 2})

    def took(sides):
        return "; own seed sd " + " and ".join(f"{sd:.4f} for {labelled(g)} (pooled {p:.4f})" for g, sd, p in sides)
    moved = "; ".join(f"{_name(f)}: {a:.2g} -> {'no test' if b is None else f'{b:.2g}'}{took(sides)}"
                      for f, a, b, sides in flips)
    verdict = (f"{len(flips)} of the {len(tests)} differences {claims} claim would not hold (Holm-adjusted p as "
               f"reported -> so read: {moved})" if flips else (f"the one difference {claims} claim holds"
               if len(tests) == 1 else f"each of the {len(tests)} differences {claims} claim holds"))
    one = len(held) == 1
    rest = (f"; the other {len(held)} hold{'s' if one else ''} ({'its' if one else 'the largest of their'} adjusted p "
            f"so read: {max(held):.2g})" if flips and held
            else (f" ({'its' if one else 'the largest'} adjusted p so read: {max(held):.2g})" if held else ""))
    return ("Seed noise per configuration (computed, on the answers' metric, all users): the tests pool seed noise "
            "over the configurations of a kind, assuming their seeds spread alike; taking instead, for each side, "
            "its own configuration's seed spread wherever that is the larger, with its degrees of freedom (its seeds "
            "less one, 2 for 3 seeds: a verdict can turn on those few df as much as on the larger spread, and of the "
            f"{configs} configurations these tests compare some may exceed their pool by chance alone, so this is a "
            f"sensitivity reading, not a finding), {verdict}{rest}.")


def one_family(found: list, alpha: float) -> list[tuple]:
    """Every tested finding of ``found`` Holm-adjusted as one family (the report adjusts within each question):
    -> [(finding, adjusted p as reported, adjusted so)] for each difference the report claims."""
    tested = [f for f in found if f.c.p_value is not None]
    together = dict(zip(map(id, tested), holm([f.c.p_value for f in tested])))
    return [(f, _adjusted(f.c), together[id(f)]) for f in tested
            if _adjusted(f.c) is not None and _adjusted(f.c) < alpha]


def one_family_line(found: list, alpha: float, what: str = "post-hoc") -> str | None:
    """:func:`one_family` as a caveat line, where the questions are more than one family; None otherwise."""
    tests = one_family(found, alpha)
    n = sum(f.c.p_value is not None for f in found)
    if not tests or n <= max((f.c.family or 0) for f in found):
        return None
    flips = [(f, a, b) for f, a, b in tests if not b < alpha]
    moved = "; ".join(f"{_name(f)}: {a:.2g} -> {b:.2g}" for f, a, b in flips)
    verdict = (f"{len(flips)} of the {len(tests)} differences claimed would not hold ({moved})" if flips
               else ("the one difference claimed holds" if len(tests) == 1
                     else f"each of the {len(tests)} differences claimed holds")
               + " (Holm-adjusted p as reported -> so: " + "; ".join(f"{a:.2g} -> {b:.2g}" for _, a, b in tests) + ")")
    return (f"One Holm family (computed): the {what} tests are adjusted within each question; adjusted instead "
            f"as one family of all {n}, {verdict}.")


def own_noise_record(found: list, metric: str, split: str, alpha: float) -> list[dict]:
    """:func:`own_noise` for report.json, the numbers of :func:`own_noise_line`: one entry per difference the
    report claims, with its adjusted p as reported and as read on each side's own seed noise."""
    from tcf.experiments.answers import labelled

    return [{"comparison": _name(f), "comparison_index": _index(found, f), "question": f.question,
             "p_holm_reported": a, "p_holm_own_noise": b, "holds": b is not None and b < alpha,
             "own_larger": [{"group": labelled(g), "own_sd": sd, "pooled_sd": p} for g, sd, p in sides]}
            for f, a, b, sides in own_noise(found, metric, split, alpha)]


def runner_up(groups: list[Group], found: list, s) -> list[tuple]:
    """"Does text beat ID?" asked again of each head's runner-up text tower on validation: the chosen tower
    can lead it by less than a seed's noise, and then the answer should not hinge on which of the two led.
    The runner-up's test replaces the chosen one's in the family, Holm-adjusted with the other heads' tests as
    reported.  -> [(finding, lead on validation, the seeds the choice was made on, runner-up group, its
    Comparison)]."""
    from tcf.experiments.answers import TEXT_TOWERS, _selection_seeds, selection_ranking
    from tcf.experiments.stats import compare

    m, family, out = s.metrics[0], [f for f in found if f.question == "text vs ID"], []
    for i, f in enumerate(family):
        texts = [g for g in groups if g.first.head == f.head and g.first.tower in TEXT_TOWERS]
        ranked = selection_ranking(texts, m)
        if len(ranked) < 2 or ranked[0][1] is not f.a:
            continue
        c = compare(ranked[1][1], f.b, m, s.split, alpha=s.alpha, pool=groups)
        if c is None or c.p_value is None:
            continue
        ps = [c.p_value if j == i else g.c.p_value for j, g in enumerate(family)]
        c.p_holm, c.family = holm(ps)[i], sum(p is not None for p in ps)
        out.append((f, ranked[0][0] - ranked[1][0], len(_selection_seeds(texts, m)[0]), ranked[1][1], c))
    return out


def valid_seed_sd(groups: list[Group], metric: str) -> tuple[float, int] | None:
    """The spread of a seed's validation mean about its configuration's, pooled over ``groups`` with 2+ seeds
    (sum of squares over sum of seeds - 1) -> (sd, configurations); None without such a group."""
    ss = df = k = 0
    for g in groups:
        v = np.array([x[0] for r in g.runs if (x := r.metric(metric, "valid")) is not None], np.float64)
        if len(v) > 1:
            ss, df, k = ss + float(((v - v.mean()) ** 2).sum()), df + len(v) - 1, k + 1
    return (math.sqrt(ss / df), k) if df else None


def runner_up_line(groups: list[Group], found: list, s) -> str | None:
    from tcf.experiments.answers import TEXT_TOWERS, _diff, chosen_on, labelled

    m, parts = s.metrics[0], []
    for f, lead, on, second, c in runner_up(groups, found, s):
        texts = [g for g in groups if g.first.head == f.head and g.first.tower in TEXT_TOWERS]
        sd = valid_seed_sd(texts, m)
        noise = (f" (a seed's valid mean in these towers spreads with sd {sd[0]:.4f}, pooled over {sd[1]} "
                 f"configuration{'s' if sd[1] != 1 else ''} with 2+ seeds: a lead of two means over {on} seed"
                 f"{'s' if on != 1 else ''} about {sd[0] * math.sqrt(2 / on):.4f})" if sd and on else "")
        seeds = min(c.seeds)
        note = f"; provisional: on {seeds} of {f.planned_seeds} seeds" if seeds < f.planned_seeds else \
            (f"; provisional: its towers chosen on {on} of {f.planned_seeds} seeds" if on and on < f.planned_seeds
             else "")
        parts.append(f"{HEAD_NAMES.get(f.head, f.head)}: {labelled(f.a)} led the runner-up, {labelled(second)}, by "
                     f"{lead:.4f} valid {m}{chosen_on(texts, m)}{noise}; had the runner-up been chosen, the line "
                     f"would read {s.split} {m} {c.a.mean:.4f} vs {c.b.mean:.4f} ({_diff(c)}; Holm-adjusted over "
                     f"{c.family} tests p = {c.p_holm:.3g}{c.seed_note()}{note}) — {c.verdict(s.alpha, *f.words)}, "
                     f"where with the chosen tower it reads {f.c.verdict(s.alpha, *f.words)}")
    if not parts:
        return None
    return ("Selection of the text tower (computed; 'Does text beat ID?' asked of the tower second on validation "
            "too, to show whether the answer hinges on which of the two led; a second look, not a second "
            "finding): " + "; ".join(parts) + ".")


def _machine(run: RunResult) -> tuple[str, str]:
    """(the machine as its record names it, how its bf16 linears ran) from the record's hardware section."""
    h = run.record.provenance.get("hardware") or {}
    cpu = h.get("processor") or "CPU model not recorded"
    where = f"{cpu}, {h.get('cpus', '?')} cores, {h.get('platform') or 'platform not recorded'}"
    native = h.get("native_bf16_matmul")
    bf16 = ("native" if native else "emulated through the fp32 kernel (tcf.models.precision)") if native is not None \
        else "not recorded"
    return where, bf16


def machines_line(runs: list[RunResult]) -> str | None:
    """Which machines the runs ran on, from their records, when more than one: a study resumed on another
    machine mixes CPUs (and, for bf16 runs, native and emulated bf16 matmuls) across its seeds."""
    kinds: dict[tuple[str, str], list[RunResult]] = {}
    for r in runs:
        kinds.setdefault(_machine(r), []).append(r)
    if len(kinds) < 2:
        return None

    def seeds(rs: list[RunResult]) -> str:
        low = sum(1 for r in rs if r.config.get("encoder.dtype") in ("bf16", "fp16")
                  or r.config.get("model.llm_dtype") in ("bf16", "fp16"))
        by_seed = sorted({str(r.config.get("seed")) for r in rs})
        return f"{len(rs)} run{'s' if len(rs) != 1 else ''} (seeds {', '.join(by_seed)}; {low} of them in bf16 / fp16)"

    parts = "; ".join(f"{where}, bf16 matmuls {bf16}: {seeds(rs)}"
                      for (where, bf16), rs in sorted(kinds.items(), key=lambda kv: -len(kv[1])))
    unnamed = " (a record written before tcf recorded the CPU model names fewer fields, so a kind without one can " \
        "be one of the others)" if any(where.startswith("CPU model not recorded") for where, _ in kinds) else ""
    return (f"Machines (computed from each record's hardware): the runs' records describe {len(kinds)} kinds of "
            f"machine{unnamed}: {parts}. Results are compared across them as if from one; a run's record names its "
            "machine.")


def code_line(runs: list[RunResult]) -> str | None:
    """Which revisions of tcf trained the runs (each record's ``git`` commit), when more than one: a study run
    over days spans commits, and a reader checking that none of them changed what a run computes needs the list."""
    commits: dict[str, int] = {}
    for r in runs:
        c = r.record.provenance.get("git")
        key = (str(c)[:7] + ("+dirty" if str(c).endswith("+dirty") else "")) if c else "not recorded"
        commits[key] = commits.get(key, 0) + 1
    if len(commits) < 2:
        return None
    listed = ", ".join(f"{c} ({n})" for c, n in sorted(commits.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"Code (computed from each record's git commit): {len(commits)} revisions of tcf trained these "
            f"{len(runs)} runs (runs each): {listed}. Results are compared across them as if from one; "
            "`git diff` between two of them over tcf/train, tcf/eval, tcf/run, tcf/models and tcf/data shows what "
            "changed (+dirty: the checkout had uncommitted changes to tracked files, which the record does not "
            "hold).")


def _slots(sample: dict) -> list[int] | None:
    """The presentation slots (from 0) of a zero-shot reply's parsed ranking, None without one."""
    where = {c: i for i, c in enumerate(sample.get("candidates") or [])}
    slots = [where[c] for c in sample.get("ranking") or [] if c in where]
    return slots or None


def _position_part(run: RunResult) -> str | None:
    """One zero-shot run's share of first choices in its most chosen slot, against the share of true items shown
    there, and how many rankings copy the prompt's example answer (3, 1, 2, 4, 5, then on in order)."""
    import json

    from tcf.zeroshot.prompts import example_answer

    path = run.folder / "samples.jsonl"
    if not path.is_file():
        return None
    samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ranked = [(s, sl) for s in samples if (sl := _slots(s)) is not None]
    if not ranked:
        return None
    first = np.bincount([sl[0] for _, sl in ranked])
    top = [int(i) for i in np.argsort(-first, kind="stable")[:2] if first[i]]
    shown = np.bincount([int(s["target_position"]) for s in samples if s.get("target_position") is not None],
                        minlength=len(first))
    n_cand = max(len(s.get("candidates") or []) for s, _ in ranked)
    example = [i - 1 for i in example_answer(n_cand)]
    copies = sum(1 for s, sl in ranked if len(sl) == len(s.get("candidates") or []) == n_cand
                 and sl == example + list(range(len(example), n_cand)))
    picks = ", ".join(f"slot {i + 1} for {first[i]}" for i in top)
    targets = " and ".join(f"slot {i + 1} for {shown[i] if i < len(shown) else 0}" for i in top)
    model = Path(str(run.config.get("zeroshot.model", "?"))).name
    text = (f"{model} ({run.config.get('zeroshot.protocol', '?')}): of {len(ranked)} replies with a ranking "
            f"({len(samples)} prompts), the first choice was the candidate shown in {picks}, while the true item was "
            f"shown in {targets}")
    if ", ".join(str(i + 1) for i in example) in (ranked[0][0].get("prompt") or ""):  # a prompt showing the example
        text += (f"; {copies} rank all {n_cand} in the order of the prompt's example answer "
                 f"({', '.join(str(i + 1) for i in example)}, then on in order)")
    return text


def position_line(runs: list[RunResult]) -> str | None:
    """Where a zero-shot model's first choices sat in the presented lists.  Slots are shuffled with a seed, so a
    model that picks by position scores as a random order would, in expectation: this line says whether the
    score measures a preference or a slot."""
    parts = [x for r in runs if r.task == "zeroshot" and (x := _position_part(r))]
    if not parts:
        return None
    return ("Zero-shot position bias (computed from each reply's parsed ranking and the slot each candidate was "
            "shown in): " + "; ".join(parts) + ". The true item's slot is drawn at random, so a reply that picks "
            "by slot scores, in expectation, what a random order scores; such replies count as following the "
            "format.")


def annotate(found: list, groups: list[Group], s) -> None:
    """Give each answer's test the notes the report's measurements attach to it: how many of its runs, by side,
    stopped where a sister run trained on to a better best, and whether its verdict holds with each side's own seed
    noise (a sensitivity reading on few df, not a finding)."""
    stops = plateau_stops([r for g in groups for r in g.runs])
    for f in found:
        note = plateau_note((f.a, f.b), stops)
        if note:
            f.notes.append(note)
    for f, a, b, _ in own_noise(found, s.metrics[0], s.split, s.alpha):
        if not (b is not None and b < s.alpha):
            f.notes.append(f"sensitive to each configuration's own seed noise (few df): Holm-adjusted p {a:.2g} -> "
                           f"{'no test' if b is None else f'{b:.2g}'}, see 'Seed noise per configuration'")


def diagnostics(groups: list[Group], metric: str, split: str, found: list = (), s=None,
                zeroshot: list[RunResult] = ()) -> list[str]:
    """The report's computed caveats (markdown bullet texts); ``s`` the ReportSettings (the lines on the
    answers' tests need it)."""
    from tcf.experiments.answers import planned_groups

    runs = [r for g in groups for r in g.runs]  # run accounting and stopping read every run, post hoc too
    planned = planned_groups(groups, s) if s is not None else groups  # what the answers chose among
    lines = [stopping_line(runs), plateau_line(runs), seed_luck_line(planned, metric, split), machines_line(runs),
             code_line(runs), position_line(list(zeroshot))]
    if s is not None:
        lines += [zero_noise_line(found, s.alpha), own_noise_line(found, metric, split, s.alpha),
                  runner_up_line(planned, found, s)]
    return [x for x in lines if x]
