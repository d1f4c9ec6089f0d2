"""What the report measures about its own runs, beside the answers: how close early stopping came to cutting a
run short, how much of a seed's luck on validation carries to test (which makes a tower chosen on
validation optimistic on test), and what the verdicts resting on a seed-noise estimate of 0 would be with a
non-zero one.  Computed from the records, so the sentences never go stale as runs finish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def stopping(run: RunResult) -> Stopping | None:
    """The run's early-stopping history (the validation score its trainer monitored, ``valid_*`` in each epoch's
    record, better only when strictly so): its longest survived plateau, whether train.epochs ended it, and
    where a patience NEAR epochs shorter would have stopped it (the first plateau that long, as the trainer,
    which replays the same epochs under the same seed, would have met it).  None without a usable history."""
    history = run.record.to_dict().get("history") or []
    patience, cap = run.config.get("train.patience"), run.config.get("train.epochs")
    key = next((k for k in (history[0] if history else {}) if k.startswith("valid_")), None)
    values = [h.get(key) for h in history] if key else []
    if not values or patience is None or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    short = int(patience) - NEAR
    best, bad, longest, shorter = -math.inf, 0, 0, None
    for epoch, v in enumerate(values, 1):
        if v > best:  # the trainer's rule: strictly better
            longest = max(longest, bad)
            best, bad = v, 0
        else:
            bad += 1
            if shorter is None and short >= 1 and bad == short:
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


def zero_noise(found: list, alpha: float) -> dict | None:
    """The answers' t-tests over users and seeds that read a seed-noise pool estimated as 0 (its seed means spread
    no more than the user-by-seed interaction alone gives, so the test treats those checkpoints as fixed), tested
    again with the largest non-zero estimate among all the answers' tests in each such pool's place, each family
    Holm-adjusted again -> {pools, alt, tests: [(finding, adjusted p as reported, with alt)]}; None when no test
    reads a zero estimate.  ``found``: the report's Findings (``.c`` each comparison, Holm families set)."""
    tested = [f for f in found if f.c.basis is not None and f.c.p_value is not None]
    pools = {n.where: n for f in tested for n, _, _ in f.c.basis[3]}
    hit = [f for f in tested if any(n.var == 0 for n, _, _ in f.c.basis[3])]
    if not hit:
        return None
    alt = max((n for n in pools.values() if n.var > 0), key=lambda n: (n.var, n.where), default=None)
    out = {"pools": sorted(w for w, n in pools.items() if n.var == 0), "alt": alt, "tests": []}
    if alt is None:
        return out
    swap = {id(f.c): t_from_basis(f.c.basis, lambda n: (alt.var, alt.df) if n.var == 0 else (n.var, n.df))[0]
            for f in hit}
    for f in hit:
        family = f.c.peers or [f.c]
        adjusted = holm([swap.get(id(c), c.p_value) for c in family])
        out["tests"].append((f, f.c.p_holm, adjusted[next(i for i, c in enumerate(family) if c is f.c)]))
    return out


def zero_noise_line(found: list, alpha: float) -> str | None:
    z = zero_noise(found, alpha)
    if z is None:
        return None
    from tcf.experiments.answers import labelled

    pools = "; ".join(z["pools"])
    text = (f"Seed noise estimated as 0 (computed): {len(z['tests']) if z['alt'] else 'some'} of the answers' tests "
            f"read a seed-noise estimate of 0 ({pools}: the spread of its seed means is within what the user-by-seed "
            "interaction alone gives), so they treat those checkpoints as fixed")
    if z["alt"] is None:
        return text + "; no test in this report has a non-zero estimate to put in its place."
    alt = z["alt"]

    def name(f) -> str:
        ha, hb = (HEAD_NAMES.get(g.first.head, g.first.head) for g in (f.a, f.b))
        cold = " (cold items)" if "on cold items" in f.before else ""
        return f"{ha} {labelled(f.a)} vs {hb + ' ' if hb != ha else ''}{labelled(f.b)}{cold}"

    flips = [(f, a, b) for f, a, b in z["tests"] if (a < alpha) != (b is not None and b < alpha)]
    parts = "; ".join(f"{name(f)} {a:.2g} -> {b:.2g}" for f, a, b in z["tests"])
    verdict = (f"{len(flips)} verdict{'s' if len(flips) != 1 else ''} would change ("
               + "; ".join(name(f) for f, _, _ in flips) + ")" if flips else "no verdict would change")
    return (text + f". With the largest non-zero estimate among the answers' tests in its place (sd "
            f"{math.sqrt(alt.var):.4f}, {alt.where}, {alt.df:.3g} df), {verdict}; Holm-adjusted p as reported -> "
            f"with it: {parts}.")


def runner_up(groups: list[Group], found: list, s) -> list[tuple]:
    """"Does text beat ID?" asked again of each head's runner-up text tower on validation: the chosen tower
    can lead it by less than a seed's noise, and then the answer should not hinge on which of the two led.
    -> [(finding, lead on validation, runner-up group, its Comparison with the family's Holm-adjusted p)]."""
    from tcf.experiments.answers import TEXT_TOWERS, selection_ranking
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
        c.p_holm = holm([c.p_value if j == i else g.c.p_value for j, g in enumerate(family)])[i]
        c.family = sum(g.c.p_value is not None for g in family)
        out.append((f, ranked[0][0] - ranked[1][0], ranked[1][1], c))
    return out


def runner_up_line(groups: list[Group], found: list, s) -> str | None:
    from tcf.experiments.answers import TEXT_TOWERS, _diff, chosen_on, labelled

    parts = []
    for f, lead, second, c in runner_up(groups, found, s):
        texts = [g for g in groups if g.first.head == f.head and g.first.tower in TEXT_TOWERS]
        seeds = min(c.seeds)
        note = f" (provisional: on {seeds} of {f.planned_seeds} seeds)" if seeds < f.planned_seeds else ""
        parts.append(f"{HEAD_NAMES.get(f.head, f.head)}: {labelled(f.a)} led the runner-up, {labelled(second)}, by "
                     f"{lead:.4f} valid {s.metrics[0]}{chosen_on(texts, s.metrics[0])}; with the runner-up in its "
                     f"place, {s.split} {s.metrics[0]} {c.a.mean:.4f} vs {c.b.mean:.4f} ({_diff(c)}; Holm-adjusted "
                     f"over {c.family} tests p = {c.p_holm:.3g}) — {c.verdict(s.alpha, *f.words)}{note}, as reported "
                     f"with the chosen tower: {f.c.verdict(s.alpha, *f.words)}")
    if not parts:
        return None
    return ("Selection of the text tower (computed; 'Does text beat ID?' asked of the runner-up on validation "
            "too: a lead smaller than a seed's noise makes the choice close to a coin toss): " + "; ".join(parts) + ".")


def diagnostics(groups: list[Group], metric: str, split: str, found: list = (), s=None) -> list[str]:
    """The report's computed caveats (markdown bullet texts); ``s`` the ReportSettings (the lines on the
    answers' tests need it)."""
    runs = [r for g in groups for r in g.runs]
    lines = [stopping_line(runs), seed_luck_line(groups, metric, split)]
    if s is not None:
        lines += [zero_noise_line(found, s.alpha), runner_up_line(groups, found, s)]
    return [x for x in lines if x]
