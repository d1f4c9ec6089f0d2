"""What the report compares to answer the TCF questions, and the sentences that say it.

Every answer selects what it compares on validation (``SELECT_SPLIT``), never on the split it
reports, and treats its tests as one family (the cold-item lines another): Holm–Bonferroni
adjusted p-values decide.  Which test compares two groups is :mod:`tcf.experiments.stats`'s call.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from tcf.experiments.results import HEAD_NAMES, TOWER_NAMES, Group, Stat
from tcf.experiments.stats import (
    MIN_SEED_DF,
    PAIRED,
    PAIRED_RESAMPLES,
    USERS_AND_SEEDS,
    WELCH,
    Z_FROM_CI,
    Comparison,
    cold_compare,
    compare,
    holm_family,
)
from tcf.run.config import LM_TOWERS, TOWERS

TOWER_ORDER = TOWERS
TUNED = LM_TOWERS


@dataclass(frozen=True)
class ReportSettings:
    title: str | None = None
    split: str = "test"  # the split tables and plots show (the checkpoint is always chosen on valid)
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "hr@10"])  # the first one is the headline
    alpha: float = 0.05  # a difference counts as significant below this (Holm-adjusted) p-value
    neighbors: list[str] = field(default_factory=lambda: ["Toy Story", "Star Wars"])  # item texts to show kNN of
    neighbors_k: int = 5
    papers: bool = False  # an "against the papers" section (tcf.experiments.papers)
    controls: list[str] = field(default_factory=list)  # run folders of positive controls: their answers shown here
    caveats: list[str] = field(default_factory=list)  # what a reader must know to read the answers (design limits)
    # settings that mark runs added after the planned ones were seen (an amendment): kept out of the planned
    # answers (their selections, seed-noise pools and Holm families) and answered on their own (post_hoc_findings)
    post_hoc: dict = field(default_factory=dict)


# ---------------------------------------------------------------- helpers

def params_text(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def group_label(g: Group, with_head: bool = True) -> str:
    r = g.first
    parts = [HEAD_NAMES.get(r.head, r.head)] if with_head else []
    parts.append(TOWER_NAMES.get(r.tower, r.tower))
    if r.encoder:
        parts.append(f"({r.encoder})")
    return " ".join(parts)


def order_key(g: Group) -> tuple:
    r = g.first
    tower = TOWER_ORDER.index(r.tower) if r.tower in TOWER_ORDER else len(TOWER_ORDER)
    # ID first, then per encoder (by size) its towers side by side: frozen next to fine-tuned
    return (r.head, r.tower != "id", r.encoder_parameters or 0, r.encoder or "", tower,
            json.dumps(g.settings, default=str))


def _extra(g: Group) -> str:
    return f" [{extra_settings(g)}]" if extra_settings(g) else ""


def labelled(g: Group) -> str:
    """``frozen text (minilm-l6)``, with the settings that tell it from its siblings: ``[model.finetune_layers=2]``."""
    extra = extra_settings(g)
    return group_label(g, False) + (f" [{extra}]" if extra else "")


LM_ONLY = ("model.finetune_layers", "model.lora_")  # settings only a fine-tuned / LoRA tower reads


def extra_settings(g: Group) -> str:
    """Distinguishing settings beyond head, tower and encoder model (those have their own columns); settings
    the group's tower does not read (the fine-tuning depth of an ID or frozen tower) are left out."""
    skip = ("model.head", "model.tower", "encoder.model", "task")
    return ", ".join(f"{k}={v}" for k, v in g.settings.items() if k not in skip and _reads(g.first.tower, k))


SELECT_SPLIT = "valid"


def signed(x: float) -> str:
    """``+0.0123``; a value that rounds to zero is ``+0.0000``, never ``-0.0000``."""
    return f"{x if abs(x) >= 5e-5 else 0.0:+.4f}"


def _diff(c: Comparison) -> str:
    """The difference, with its bootstrap 95% CI over users when a paired test gave one."""
    ci = c.diff_ci
    ci = f" [{signed(ci[0])}, {signed(ci[1])}]" if ci and all(map(math.isfinite, ci)) else ""
    return f"{signed(c.diff)}{ci}"


def _rel(c: Comparison) -> str:
    rel = f", {c.diff / c.b.mean:+.0%}" if c.b.mean else ""
    return f"{c.a.mean:.4f} vs {c.b.mean:.4f} ({_diff(c)}{rel}; {c.evidence()})"


def select(groups: list[Group], metric: str) -> Group | None:
    """The group with the best validation ``metric``: what the report compares is chosen before the test
    split is looked at.  A lone candidate needs no choice; several without validation numbers get none.
    Candidates are scored on the seeds they all have (when they share any): a 1-seed group's validation mean
    is noisier than a 3-seed one's, so the maximum over mixed seed counts would favour a lucky single seed."""
    if len(groups) <= 1:
        return groups[0] if groups else None
    ranked = selection_ranking(groups, metric)
    return ranked[0][1] if ranked else None


def selection_ranking(groups: list[Group], metric: str) -> list[tuple[float, Group]]:
    """The candidates :func:`select` chooses among with the scores it chooses by, best first (a stable sort:
    of equal scores the first listed leads, as max() takes it)."""
    common = _selection_seeds(groups, metric)[0]

    def score(g: Group) -> float | None:
        if not common:
            st = g.stat(metric, SELECT_SPLIT)
            return None if st is None else st.mean
        values = [m[0] for r in g.runs if str(r.config.get("seed")) in common
                  for m in [r.metric(metric, SELECT_SPLIT)] if m is not None]
        return float(np.mean(values)) if values else None

    scored = [(v, g) for v, g in ((score(g), g) for g in groups) if v is not None]
    return sorted(scored, key=lambda t: -t[0])


def _selection_seeds(groups: list[Group], metric: str) -> tuple[set[str], list[set[str]]]:
    """The seeds :func:`select` scores candidates on (those they all have with the validation metric; a run
    without it does not count as a seed), and each candidate's."""
    scored = [{str(r.config.get("seed")) for r in g.runs if r.metric(metric, SELECT_SPLIT) is not None}
              for g in groups]
    return (set.intersection(*[x for x in scored if x]) if any(scored) else set()), scored


def chosen_seeds(metric: str, *candidates: list[Group]) -> int | None:
    """The fewest seeds any of these selections (:func:`select` over each list) was made on, None where each
    used every seed of its candidates."""
    counts = []
    for groups in candidates:
        common, scored = _selection_seeds(groups, metric) if len(groups) > 1 else (set(), [])
        if common and not all(x == common for x in scored if x):
            counts.append(len(common))
    return min(counts) if counts else None


def chosen_on(groups: list[Group], metric: str) -> str:
    """"; chosen on seed 2020, which all have" where :func:`select` chose on fewer seeds than a candidate has
    (the line's test may then be on other seeds than the choice); "" where it used every seed."""
    if len(groups) <= 1:
        return ""
    common, scored = _selection_seeds(groups, metric)
    if not common or all(x == common for x in scored if x):
        return ""
    return f"; chosen on seed{'s' if len(common) > 1 else ''} {', '.join(sorted(common))}, which all have"


@dataclass
class Finding:
    """One test an answer makes: its sentence (rendered once the family's adjusted p-values are known)
    and its record in report.json."""

    question: str
    head: str
    a: Group
    b: Group
    c: Comparison
    before: str  # the sentence up to the numbers
    words: tuple[str, str]  # the verdict when a is significantly better / worse
    diff_only: bool = False  # numbers as the difference alone (the walk before it gives the means)
    planned_seeds: int = 1  # the most seeds any group of the report has: fewer here make the verdict provisional
    chosen_seeds: int | None = None  # the seeds its sides were selected on, where fewer than every candidate had
    notes: list = field(default_factory=list)  # what the report measured that qualifies it (tcf.experiments.diagnostics.annotate)

    def provisional(self) -> str:
        """"provisional: on 2 of 3 seeds" where the test, or the choice of a side on validation, rests on fewer
        seeds than planned (a choice made on 2 seeds can go to another candidate once the third is in); ""."""
        seeds, why = min(self.c.seeds), []
        if seeds < self.planned_seeds:
            why.append(f"on {seeds} of {self.planned_seeds} seeds")
        if self.chosen_seeds is not None and self.chosen_seeds < min(seeds, self.planned_seeds):
            why.append(f"its towers chosen on {self.chosen_seeds} of {self.planned_seeds} seeds")
        return "provisional: " + ", ".join(why) if why else ""

    def tags(self) -> str:
        """Its provisional note and the report's qualifying notes, "; "-joined ("" for none)."""
        return "; ".join(x for x in (self.provisional(), *self.notes) if x)

    def line(self, s: ReportSettings) -> str:
        c = self.c
        numbers = f"{_diff(c)} ({c.evidence()})" if self.diff_only else _rel(c)
        note = f" ({self.tags()})" if self.tags() else ""
        return f"{self.before}{numbers} — **{c.verdict(s.alpha, *self.words)}**{note}."

    def record(self, s: ReportSettings) -> dict:
        c = self.c
        return {"question": self.question, "head": self.head, "a": group_label(self.a) + _extra(self.a),
                "b": group_label(self.b) + _extra(self.b),
                "metric": s.metrics[0], "split": s.split, "selected_on": SELECT_SPLIT, "a_mean": c.a.mean,
                "b_mean": c.b.mean, "diff": c.diff, **c.record(), "alpha": s.alpha,
                "significant": c.significant(s.alpha), "planned_seeds": self.planned_seeds,
                "provisional": bool(self.provisional()), **({"notes": list(self.notes)} if self.notes else {})}


def _family(found: list[Finding]) -> list[Finding]:
    holm_family([f.c for f in found])
    return found


COLD = "text vs ID (cold items)"


def _of(n: int, what: str, on: str = "") -> str:
    return f" (of {n} {what}{on})" if n > 1 else ""


ID_TOWERS = ("id", "id+text")  # towers with learned item-ID embeddings
TEXT_TOWERS = ("frozen", *LM_TOWERS)  # towers whose items are their text alone (no ID embeddings)


def text_vs_id(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """Per head: the text tower best on validation against the ID setting best on validation, on every user
    (one family) and on the users whose target is a cold item (a family of its own). Text towers are those
    without item IDs (frozen, fine-tuned, LoRA): the question is whether text can replace IDs, so ID + text,
    which has both, is answered on its own (:func:`id_text_vs_id`)."""
    m, out, cold = s.metrics[0], [], []
    for head in sorted({g.first.head for g in groups}):
        ids = [g for g in groups if g.first.head == head and g.first.tower == "id"]
        texts = [g for g in groups if g.first.head == head and g.first.tower in TEXT_TOWERS]
        base, best = select(ids, m), select(texts, m)
        c = (compare(best, base, m, s.split, alpha=s.alpha, pool=groups)
             if base is not None and best is not None else None)
        if c is None:
            continue
        name = HEAD_NAMES.get(head, head)
        before = (f"{name}: the text tower best on {SELECT_SPLIT} {m}"
                  f"{_of(len(texts), 'towers', chosen_on(texts, m))}, {labelled(best)}, against the ID setting best on "
                  f"{SELECT_SPLIT}{_of(len(ids), 'settings', chosen_on(ids, m))}: {s.split} {m} ")
        out.append(Finding("text vs ID", head, best, base, c, before, ("text beats ID", "ID beats text"),
                           chosen_seeds=chosen_seeds(m, texts, ids)))
        cold += _cold_finding(COLD, head, best, base, s, "towers",
                              ("text beats ID on cold items", "ID beats text on cold items"), groups,
                              chosen_seeds(m, texts, ids))
    return _interleave(_family(out), _family(cold))


def id_text_vs_id(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """Per head: the ID + text setting best on validation against the ID setting best on validation (does text
    added to the ID embeddings help?), on every user and on cold-target users, as :func:`text_vs_id`."""
    m, out, cold = s.metrics[0], [], []
    for head in sorted({g.first.head for g in groups}):
        ids = [g for g in groups if g.first.head == head and g.first.tower == "id"]
        both = [g for g in groups if g.first.head == head and g.first.tower == "id+text"]
        base, best = select(ids, m), select(both, m)
        c = (compare(best, base, m, s.split, alpha=s.alpha, pool=groups)
             if base is not None and best is not None else None)
        if c is None:
            continue
        name = HEAD_NAMES.get(head, head)
        best_of = 'settings; the best on ' + SELECT_SPLIT
        before = (f"{name}: {labelled(best)}{_of(len(both), best_of, chosen_on(both, m))} "
                  f"against ID{_of(len(ids), best_of, chosen_on(ids, m))}: {s.split} {m} ")
        out.append(Finding("ID + text vs ID", head, best, base, c, before,
                           ("adding text helps", "adding text hurts"), chosen_seeds=chosen_seeds(m, both, ids)))
        cold += _cold_finding("ID + text vs ID (cold items)", head, best, base, s, "settings",
                              ("adding text helps on cold items", "adding text hurts on cold items"), groups,
                              chosen_seeds(m, both, ids))
    return _interleave(_family(out), _family(cold))


def _cold_finding(question: str, head: str, best: Group, base: Group, s: ReportSettings, same: str,
                  words: tuple[str, str], groups: list[Group], chosen: int | None = None) -> list[Finding]:
    """The same two groups compared on the users whose target is a cold item: [its finding], or [] when the
    runs have no cold slice."""
    m = s.metrics[0]
    cc, n = cold_compare(best, base, m, s.split, alpha=s.alpha, pool=groups)
    if cc is None:
        return []
    k = best.first.config.get("eval.cold_max_count")
    who = f"{n} users" if n is not None else "users"
    rule = f": at most {k} training interactions" if k is not None else ""
    return [Finding(question, head, best, base, cc, f"{HEAD_NAMES.get(head, head)} on cold items ({who} whose "
                    f"{s.split} target is a cold item{rule}), the same {same}: {m} ", words, chosen_seeds=chosen)]


def _interleave(main: list[Finding], cold: list[Finding]) -> list[Finding]:
    """Each head's cold-item line right after its overall line."""
    by_head = {f.head: f for f in cold}
    return [x for f in main for x in (f, by_head.get(f.head)) if x is not None]


def fine_tuned_vs_frozen(groups: list[Group], s: ReportSettings, pool: list[Group] | None = None,
                         part_of=None) -> list[Finding]:
    """Every fine-tuned / LoRA group against the frozen setting of its head and encoder best on validation (seed
    noise pooled over ``pool``, default ``groups``, by population ``part_of``: tcf.experiments.stats)."""
    m, out = s.metrics[0], []
    frozen = [g for g in groups if g.first.tower == "frozen"]
    for tuned in (g for g in groups if g.first.tower in TUNED):
        r = tuned.first
        peers = [g for g in frozen if g.first.head == r.head and g.first.encoder == r.encoder]
        base = select(peers, m)
        c = (compare(tuned, base, m, s.split, alpha=s.alpha, pool=pool or groups, part_of=part_of)
             if base is not None else None)
        if c is None:
            continue
        extra = f" [{extra_settings(tuned)}]" if extra_settings(tuned) else ""
        before = (f"{HEAD_NAMES.get(r.head, r.head)} with {r.encoder}: {TOWER_NAMES[r.tower]}{extra} against frozen"
                  f"{_of(len(peers), 'frozen settings; the best on ' + SELECT_SPLIT, chosen_on(peers, m))}: {m} ")
        out.append(Finding("fine-tuned vs frozen", r.head, tuned, base, c, before,
                           ("fine-tuning helps", "fine-tuning hurts"), chosen_seeds=chosen_seeds(m, peers)))
    return _family(out)


def scaling_series(groups: list[Group], metric: str, split: str) -> dict[str, list[tuple[float, Stat, Group]]]:
    """label -> [(encoder parameters, stat, group)] sorted by size, for text towers with a measured size."""
    series: dict[str, list] = {}
    for g in groups:
        r, st = g.first, g.stat(metric, split)
        if r.tower not in TEXT_TOWERS or r.encoder_parameters is None or st is None:
            continue
        label = group_label(g, True).split(" (")[0] + (f" [{extra_settings(g)}]" if extra_settings(g) else "")
        series.setdefault(label, []).append((float(r.encoder_parameters), st, g))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in series.items()}


def _ranks(x: list[float]) -> np.ndarray:
    """Ranks 0..n-1, ties given their average rank (Spearman's textbook definition)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tied = x == v
        r[tied] = r[tied].mean()
    return r


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_exact_p(x: list[float], y: list[float]) -> float | None:
    """Two-sided exact permutation p-value of Spearman's rho (all n! orders of y; n <= 8), None beyond that or
    when rho is undefined. With 5 sizes only |rho| = 1 reaches p < 0.05."""
    import itertools

    rho = _spearman(x, y)
    if not math.isfinite(rho) or len(x) > 8:
        return None
    rx, ry = _ranks(x), _ranks(y)
    hits = total = 0
    for perm in itertools.permutations(ry):
        r = np.corrcoef(rx, perm)[0, 1]
        hits += abs(r) >= abs(rho) - 1e-12
        total += 1
    return hits / total


def _walk(pts: list, metric: str, split: str) -> tuple[list[float], str]:
    """Each size's mean on the seeds every size has (a 1-seed point against 3-seed ones would put seed noise in
    the trend), with a note naming them; each its own mean when they share none or all have the same seeds."""
    cut, note = on_common_seeds(pts)
    if not note:
        return [st.mean for _, st, _ in pts], ""
    means = []
    for (_, st, _), g in zip(pts, cut):
        vals = [m[0] for r in g.runs for m in [r.metric(metric, split)] if m is not None]
        means.append(float(np.mean(vals)) if vals else st.mean)
    return means, note


def on_common_seeds(pts: list) -> tuple[list[Group], str]:
    """A series' groups cut to the seeds every size has (what :func:`_walk` averages; for the scaling plot), with
    the same note; the groups as they are when they share none or all have the same seeds."""
    sets = [set(map(str, g.seeds)) for _, _, g in pts]
    common = set.intersection(*sets)
    if not common or all(x == common for x in sets):
        return [g for _, _, g in pts], ""
    cut = [Group([r for r in g.runs if str(r.config.get("seed")) in common], g.settings) for _, _, g in pts]
    return cut, f" (on the seed{'s' if len(common) > 1 else ''} all sizes have: {', '.join(sorted(common))})"


def largest_vs_smallest(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """Per series (head x tower x settings): the largest encoder against the smallest (no selection)."""
    m, out = s.metrics[0], []
    for label, pts in scaling_series(groups, m, s.split).items():
        if len({p for p, _, _ in pts}) < 2:
            continue
        means, on = _walk(pts, m, s.split)
        walk = " → ".join(f"{v:.4f} ({params_text(p)})" for (p, _, _), v in zip(pts, means))
        sizes = [p for p, _, _ in pts]
        rho_text = ""
        if len(set(sizes)) >= 3:  # two sizes give rho = +-1 and p = 1 whatever they hold: no trend statistic
            rho, p_rho = _spearman(sizes, means), spearman_exact_p(sizes, means)
            rho_p = f", exact permutation p = {p_rho:.2g} over {len(pts)} sizes" if p_rho is not None else ""
            rho_text = f"; Spearman ρ(size, {m}) = {rho:.2f}{rho_p}"
        before = f"{label}: {m} {walk}{on}{rho_text}; largest vs smallest "
        out.append(Finding("largest vs smallest encoder", pts[0][2].first.head, pts[-1][2], pts[0][2],
                           compare(pts[-1][2], pts[0][2], m, s.split, alpha=s.alpha, pool=groups), before,
                           ("yes, the largest beats the smallest", "no, the largest is worse than the smallest"),
                           diff_only=True))
    return _family(out)


TOWER_KEYS = ("encoder.model", "encoder.backend", "encoder.revision", "encoder.layer", "encoder.pooling",
              "encoder.normalize", "encoder.max_tokens", "encoder.dtype", "encoder.quantization", "model.adapter",
              "model.adapter_layers", "model.normalize_text", "model.fusion", "model.finetune_layers", "model.lora_r",
              "model.lora_alpha", "model.lora_dropout", "model.dim")  # what shapes an item tower's vectors


def _reads(tower: str, key: str) -> bool:
    """Whether a tower of this kind reads the setting (an ID tower reads no encoder setting)."""
    if key.startswith(LM_ONLY):
        return tower in LM_TOWERS
    if key == "model.fusion":
        return tower == "id+text"
    if key.startswith(("encoder.", "model.adapter", "model.normalize_text")):
        return tower != "id"
    return True


def _tower_key(g: Group) -> tuple:
    """The item tower a group trains: tower, encoder and the values of the settings that shape it (from the run's
    resolved config, so two heads' groups match whatever settings happen to vary among each head's groups)."""
    r = g.first
    shaped = {k: r.config.get(k) for k in TOWER_KEYS if _reads(r.tower, k)}
    return r.tower, r.encoder or "", json.dumps(shaped, sort_keys=True, default=str)


REFERENCE_HEADS = ("sasrec", "dssm")  # each head is compared with every reference head before it in this order


def head_vs_head(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """On each item tower that more than one head trained: every other head's setting best on validation against
    SASRec's best on validation (the sequential baseline), and a head beyond the two classic ones (the LLM head)
    against DSSM's too; one family."""
    m, out = s.metrics[0], []
    towers: dict[tuple, dict[str, list[Group]]] = {}
    for g in groups:
        towers.setdefault(_tower_key(g), {}).setdefault(g.first.head, []).append(g)
    rank = {h: k for k, h in enumerate(REFERENCE_HEADS)}
    for key in sorted(towers):
        heads = towers[key]
        for ref in (r for r in REFERENCE_HEADS if r in heads):
            base = select(heads[ref], m)
            ref_name = HEAD_NAMES.get(ref, ref)
            for head in sorted(h for h in heads if rank.get(h, len(REFERENCE_HEADS)) > rank[ref]):
                best = select(heads[head], m)
                c = (compare(best, base, m, s.split, alpha=s.alpha, pool=groups)
                     if best is not None and base is not None else None)
                if c is None:
                    continue
                extra = f" [{extra_settings(best)}]" if extra_settings(best) else ""
                before = (f"{group_label(best, False)}: {HEAD_NAMES.get(head, head)}{extra}"
                          f"{_of(len(heads[head]), 'settings; the best on ' + SELECT_SPLIT, chosen_on(heads[head], m))}"
                          f" against {ref_name}"
                          f"{_of(len(heads[ref]), 'settings; the best on ' + SELECT_SPLIT, chosen_on(heads[ref], m))}: "
                          f"{s.split} {m} ")
                name = HEAD_NAMES.get(head, head)
                out.append(Finding("head vs head", head, best, base, c, before,
                                   (f"{name} beats {ref_name}", f"{ref_name} beats {name}"),
                                   chosen_seeds=chosen_seeds(m, heads[head], heads[ref])))
    return _family(out)


def pretrained_vs_random(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """LLM-head groups that differ only in model.llm_init: pretrained against random initialisation."""
    m, out = s.metrics[0], []
    llm = [g for g in groups if g.first.head == "llm"]
    for g in llm:
        if g.first.config.get("model.llm_init") != "pretrained":
            continue
        rest = {k: v for k, v in g.first.config.items() if k not in ("model.llm_init", "seed", "name")}
        for other in llm:
            o = {k: v for k, v in other.first.config.items() if k not in ("model.llm_init", "seed", "name")}
            if other.first.config.get("model.llm_init") != "random" or o != rest:
                continue
            c = compare(g, other, m, s.split, alpha=s.alpha, pool=groups)
            if c is None:
                continue
            before = f"LLM head on {group_label(g, False)}: pretrained against random initialisation: {s.split} {m} "
            out.append(Finding("pretrained vs random user LM", "llm", g, other, c, before,
                               ("pretraining helps", "pretraining hurts")))
    return _family(out)


QUESTIONS = {  # finding.question -> (the question answered, what is said without runs for it)
    "text vs ID": ("Does text beat ID?", "not measured (no ID run and text run with the same head)."),
    "ID + text vs ID": ("Does adding text to the ID embeddings help?",
                        "not measured (no ID + text run beside an ID run of the same head)."),
    "fine-tuned vs frozen": ("Does fine-tuning beat a frozen encoder?",
                             "not measured (no fine-tuned or LoRA run beside a frozen run of the same head and "
                             "encoder)."),
    "largest vs smallest encoder": ("Does a bigger encoder help?",
                                    "not measured (fewer than two encoder sizes for any head and tower)."),
    "head vs head": ("Which user model: does another head beat SASRec (and the LLM head DSSM) on the same item "
                     "tower?", "not measured (no item tower trained with SASRec or DSSM and another head)."),
    "pretrained vs random user LM": ("Does a pretrained user LM (the LLM head) beat the same model at random "
                                     "initialisation?", "not measured (no LLM-head runs with both model.llm_init)."),
}


OPTIONAL_QUESTIONS = {"pretrained vs random user LM", "ID + text vs ID"}  # asked only where an experiment has runs for them


def seeds_planned(planned: int | None, groups: list[Group]) -> int:
    """The seeds a verdict needs to be final: ``planned`` (experiment.json's), else the most any of ``groups`` has."""
    return planned or max((len(g.runs) for g in groups), default=1)


def findings(groups: list[Group], s: ReportSettings, planned_seeds: int | None = None) -> list[Finding]:
    """Every test the answers make (each answer its own Holm family)."""
    found = [*text_vs_id(groups, s), *id_text_vs_id(groups, s), *fine_tuned_vs_frozen(groups, s),
             *largest_vs_smallest(groups, s), *head_vs_head(groups, s), *pretrained_vs_random(groups, s)]
    planned = seeds_planned(planned_seeds, groups)
    for f in found:
        f.planned_seeds = planned
    return found


_MARKS: dict[str, dict] = {}


def post_hoc_marks(s: ReportSettings) -> dict:
    """report.post_hoc as the settings it names, each value read as RunConfig reads it (``"60"`` -> 60): ``{}``
    without it.  A key that is no run setting, a setting a group's runs differ in (name, seed, tracking) or
    that names no leaf, or a value the setting cannot take, is an error: a mistake here would leave every
    post-hoc run in the planned answers, or none of the planned ones."""
    from tcf.config import flatten, from_dict
    from tcf.experiments.results import NOT_A_SETTING
    from tcf.run.config import RunConfig, identity_free, resolved

    key = json.dumps(s.post_hoc, sort_keys=True, default=str)
    if key not in _MARKS:
        flat = {k: v for k, v in flatten(s.post_hoc).items() if v != {}}  # an empty section names nothing
        if s.post_hoc and not flat:
            raise ValueError(f"report.post_hoc: {s.post_hoc!r} names no setting")
        sections = {d.rsplit(".", 1)[0] for d in flatten(resolved(RunConfig())) if "." in d}
        for k in flat:
            if k in sections:
                raise ValueError(f"report.post_hoc: {k!r} is a section of the run config, not a setting")
            if k in NOT_A_SETTING or identity_free(k):
                raise ValueError(f"report.post_hoc: {k!r} is not a setting a configuration's runs share (the "
                                 "runs of one configuration differ in it), so it cannot mark post-hoc ones")
        nested: dict = {}
        for k, v in flat.items():
            *path, leaf = k.split(".")
            node = nested
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = v
        try:
            read = flatten(resolved(from_dict(RunConfig, nested)))
        except Exception as e:  # noqa: BLE001 - from_dict names the key and what it expected
            raise ValueError(f"report.post_hoc: {e}") from e
        missing = [k for k in flat if k not in read]
        if missing:
            raise ValueError(f"report.post_hoc: {missing[0]!r} is not a single run setting")
        _MARKS[key] = {k: read[k] for k in flat}
    return _MARKS[key]


def check_post_hoc(s: ReportSettings, configs: list[dict]) -> None:
    """report.post_hoc must mark some of the planned runs' ``configs`` (experiment.json), and not all."""
    marks = post_hoc_marks(s)
    if not marks or not configs:
        return
    from tcf.experiments.results import settings_of

    hits = sum(all(settings_of(c).get(k) == v for k, v in marks.items()) for c in configs)
    if hits == 0 or hits == len(configs):
        raise ValueError(f"report.post_hoc {marks} marks {'none' if hits == 0 else 'every one'} of the "
                         f"{len(configs)} planned runs: check its settings and values")


def is_post_hoc(g: Group, s: ReportSettings) -> bool:
    """Whether the group's runs are report.post_hoc's (every setting it names has its value, as RunConfig reads
    it, defaults filled in); a group mixing post-hoc and planned runs is an error."""
    marks = post_hoc_marks(s)
    if not marks:
        return False
    from tcf.experiments.results import run_settings

    hits = {all(run_settings(r).get(k) == v for k, v in marks.items()) for r in g.runs}
    if len(hits) > 1:
        raise ValueError(f"report.post_hoc {marks}: the runs of {', '.join(r.folder.name for r in g.runs)} are "
                         "one configuration, some post hoc and some not")
    return hits.pop()


def planned_groups(groups: list[Group], s: ReportSettings) -> list[Group]:
    """The groups the planned answers read: all but report.post_hoc's."""
    return [g for g in groups if not is_post_hoc(g, s)]


POST_HOC_QUESTIONS = {  # finding.question -> the question answered in the post-hoc section
    "post hoc vs frozen": "Does fine-tuning beat a frozen encoder, on the post-hoc runs?",
    "post hoc vs planned": "Do the post-hoc runs differ from their planned twins (the same settings otherwise)?",
}
POST_HOC = " (post hoc)"  # the seed-noise population label of report.post_hoc's runs


def _twin(g: Group, groups: list[Group], s: ReportSettings) -> Group | None:
    """The planned group with g's settings but report.post_hoc's (None where there is none)."""
    marks = post_hoc_marks(s)
    want = {k: v for k, v in g.settings.items() if k not in marks}
    twins = [o for o in planned_groups(groups, s)
             if o.first.head == g.first.head and {k: v for k, v in o.settings.items() if k not in marks} == want]
    if len(twins) > 1:  # which one it is compared with would be an accident of order
        raise ValueError(f"report.post_hoc {marks}: {group_label(g)} has {len(twins)} planned twins "
                         f"({'; '.join(group_label(o) for o in twins)}), which differ from it only in the marked "
                         "settings; make the plan's runs differ in something else, or leave them out of the plan")
    return twins[0] if twins else None


def post_hoc_findings(groups: list[Group], s: ReportSettings, planned_seeds: int | None = None) -> list[Finding]:
    """The post-hoc runs' own answers, each question one Holm family: every post-hoc fine-tuned or LoRA group
    against the planned frozen setting of its head and encoder best on validation (as the planned answer
    chooses it), and every post-hoc group against its planned twin (a group without one: a "no twin" finding
    with no test).  The post-hoc runs' seed noise is pooled among themselves only (own kind, else borrowed from
    their other towers), the planned side's among the planned runs."""
    if not s.post_hoc:
        return []

    def part_of(g: Group) -> str:
        return POST_HOC if is_post_hoc(g, s) else ""

    post = [g for g in groups if is_post_hoc(g, s)]
    frozen = [g for g in planned_groups(groups, s) if g.first.tower == "frozen"]
    vs_frozen = fine_tuned_vs_frozen(frozen + [g for g in post if g.first.tower in TUNED], s, pool=groups,
                                     part_of=part_of)
    m, twins = s.metrics[0], []
    for g in post:
        twin = _twin(g, groups, s)
        c = compare(g, twin, m, s.split, alpha=s.alpha, pool=groups, part_of=part_of) if twin is not None else None
        if c is not None:
            r = twin.first
            twins.append(Finding("post hoc vs planned", r.head, g, twin, c,
                                 f"{HEAD_NAMES.get(r.head, r.head)} with {r.encoder}: {TOWER_NAMES[r.tower]} "
                                 f"[{extra_settings(g)}] against its planned twin: {m} ",
                                 ("the post-hoc run scores higher", "the post-hoc run scores lower")))
    found = [*[replace(f, question="post hoc vs frozen") for f in vs_frozen], *_family(twins)]
    planned = seeds_planned(planned_seeds, groups)
    for f in found:
        f.planned_seeds = planned
    return found


def untwinned(groups: list[Group], s: ReportSettings) -> list[Group]:
    """Post-hoc groups without a planned twin (the post-hoc section names them)."""
    return [g for g in groups if is_post_hoc(g, s) and _twin(g, groups, s) is None]


def method_note(s: ReportSettings) -> str:
    """How the answers were reached, said once above them."""
    note = (f"Towers and baselines are selected on {SELECT_SPLIT} {s.metrics[0]} (the text tower, ID setting or "
            f"frozen peer with the best {SELECT_SPLIT} score), then compared on {s.split}. Each answer's tests are "
            f"one family (the cold-item lines another; zero-shot: one family per protocol), Holm–Bonferroni "
            f"corrected: a difference counts when its adjusted p < {s.alpha:g}. Test, whenever both groups have "
            f"per-user records on the same users: a {USERS_AND_SEEDS}, so that a difference must exceed what "
            "retraining with another seed gives as well as what another sample of users would — the users' part "
            "of its variance from the paired differences of each user's value averaged over the group's seeds, "
            "the seeds' part from the spread of a seed's mean about its configuration's mean less the user-by-seed "
            "share already in the users' part, pooled over the configurations of the same head and tower kind with "
            "two or more seeds, or borrowed from the head's other towers where that kind has seen fewer than "
            f"{MIN_SEED_DF} seed deviations (the line names the pool, its seed sd and df; fewer than {MIN_SEED_DF} "
            "on both sides, or on the only side that has any: not testable). Student's t, Welch–Satterthwaite "
            "degrees of freedom; two configurations' seed effects are taken as independent. The bracket after a difference is its 95% CI from the same test, "
            "not adjusted for multiplicity (the verdict is). Where one side's head has no 2-seed configuration, "
            f"or its seed noise rests on fewer than {MIN_SEED_DF} deviations while the other side's does not, "
            "the other side's seed noise is assumed for it, pooled with its own deviations where it has any and "
            "counted once, its share counted 4x (its sd doubled, in case a new head is the noisier, which 1-2 "
            "deviations cannot show; conservative where the noise is equal; the line says so); where "
            f"neither has any, a {PAIRED} "
            f"({PAIRED_RESAMPLES} sign flips; bootstrap CI over users), which treats each checkpoint as fixed "
            f"and says so. Fallbacks, named where used: {WELCH}; {Z_FROM_CI}. Zero-shot runs: against random and "
            "popularity by the paired permutation test over users; against the trained configuration of each head "
            "best on validation, every seed's checkpoint scored on the run's own candidate lists, by the same "
            "t-test over users and seeds with the seed noise measured on those lists (the same pools, each "
            "configuration with every seed scored there too, a configuration missing one left out; the zero-shot run "
            "has no training seed). Each line names its test.")
    if s.split == SELECT_SPLIT:
        note += f" The report's split is the selection split: the selected towers' {s.split} numbers are optimistic."
    return note
