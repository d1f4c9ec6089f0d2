"""What the report measures about its own runs, beside the answers: how close early stopping came to cutting a
run short, and how much of a seed's luck on validation carries to test (which makes a tower chosen on
validation optimistic on test).  Computed from the records, so the sentences never go stale as runs finish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tcf.experiments.results import HEAD_NAMES, Group, RunResult

NEAR = 3  # a plateau that ended within this many epochs of the patience limit is reported as a near stop


@dataclass
class Stopping:
    run: RunResult
    patience: int
    longest: int  # the longest run of epochs without a better validation score that a better one then ended
    at: tuple[int, int] | None  # its first and last epoch
    capped: bool  # ended at train.epochs before patience stopped it
    gain: float = 0.0  # the run's best validation score less its best before that plateau: what a stop there cost

    @property
    def margin(self) -> int:
        """Epochs from stopping at the closest point (patience - longest survived plateau)."""
        return self.patience - self.longest


def stopping(run: RunResult) -> Stopping | None:
    """The run's early-stopping history (the validation score its trainer monitored, ``valid_*`` in each epoch's
    record): its longest survived plateau, and whether train.epochs ended it."""
    history = run.record.to_dict().get("history") or []
    patience, cap = run.config.get("train.patience"), run.config.get("train.epochs")
    key = next((k for k in (history[0] if history else {}) if k.startswith("valid_")), None)
    values = [h.get(key) for h in history] if key else []
    if not values or patience is None or any(not isinstance(v, (int, float)) for v in values):
        return None
    best, bad, longest, at, level = -math.inf, 0, 0, None, None
    for epoch, v in enumerate(values, 1):
        if v > best:  # the trainer's rule: strictly better
            if bad > longest:
                longest, at, level = bad, (epoch - bad, epoch - 1), best
            best, bad = v, 0
        else:
            bad += 1
    capped = cap is not None and len(values) >= int(cap) and bad < int(patience)
    return Stopping(run, int(patience), longest, at, capped, best - level if level is not None else 0.0)


def stopping_line(runs: list[RunResult]) -> str | None:
    found = [x for x in (stopping(r) for r in runs) if x is not None]
    if not found:
        return None
    patience = sorted({x.patience for x in found})
    monitored = sorted({k[len("valid_"):] for x in found for k in (x.run.record.to_dict()["history"][0])
                        if k.startswith("valid_")})
    near = sorted((x for x in found if x.margin <= NEAR and x.longest), key=lambda x: (-x.gain, x.run.folder.name))
    capped = [x for x in found if x.capped]
    text = (f"Early stopping (computed from each run's per-epoch validation {', '.join(monitored)}; patience "
            f"{', '.join(map(str, patience))}): of {len(found)} trained runs, {len(near)} came within {NEAR} epochs "
            "of stopping on a plateau they later left")
    if near:
        shown = "; ".join(f"`{x.run.folder.name}` {x.margin} epoch{'s' if x.margin != 1 else ''} from stopping "
                          f"(epochs {x.at[0]}-{x.at[1]} without a better one), then {x.gain:+.4f} to its best"
                          for x in near[:5])
        text += (f", so with a shorter patience they would have stopped below their best (largest gains after the "
                 f"plateau first: {shown}{f'; and {len(near) - 5} more' if len(near) > 5 else ''}); a longer "
                 "patience might have found more in the runs it did stop")
    text += (f"; {len(capped)} ended at train.epochs before patience stopped them, so are not converged by the "
             f"study's rule ({', '.join(f'`{x.run.folder.name}`' for x in capped[:5])}"
             f"{f' and {len(capped) - 5} more' if len(capped) > 5 else ''})" if capped
             else "; every run was stopped by patience, none by train.epochs")
    return text + "."


def seed_luck(groups: list[Group], metric: str, split: str) -> dict[str, tuple[float, int, int]]:
    """Per head: Pearson's r between a seed's deviation from its configuration's mean on validation and on
    ``split``, over the configurations with 2+ seeds -> {head: (r, seed deviations (seeds - 1 summed),
    configurations)}; a head with fewer than 3 deviations is left out."""
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
        if df < 3 or dv.std() == 0 or dt.std() == 0:
            continue
        result[head] = (float(np.corrcoef(dv, dt)[0, 1]), df, k)
    return result


def seed_luck_line(groups: list[Group], metric: str, split: str) -> str | None:
    luck = seed_luck(groups, metric, split)
    if not luck:
        return None
    parts = ", ".join(f"{HEAD_NAMES.get(h, h)} r = {r:.2f} ({df} seed deviations of {k} configurations)"
                      for h, (r, df, k) in sorted(luck.items()))
    return (f"Selection luck (computed): a seed's deviation from its configuration's mean valid {metric} and its "
            f"deviation on {split} correlate: {parts}. Where r is high, a tower chosen on validation carries its "
            f"seeds' luck into its {split} number, which is then optimistic by part of it.")


def diagnostics(groups: list[Group], metric: str, split: str) -> list[str]:
    """The report's computed caveats (markdown bullet texts)."""
    runs = [r for g in groups for r in g.runs]
    return [x for x in (stopping_line(runs), seed_luck_line(groups, metric, split)) if x]
