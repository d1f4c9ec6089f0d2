"""The report's "against the papers" section: each published finding tcf's questions touch, the direction the
paper reports, and the direction this experiment measured, with its (Holm-adjusted) test.

A claim is matched to the report's own tests (``Finding``s and zero-shot tests); only the fine-tuned-vs-ID claim,
which no answer tests (the text-vs-ID answer may pick a frozen tower), gets its own paired test here.
The verdict is read from the sign and the significance of that test:

- the paper says ``a > b`` (or ``<``): *same direction* when the test is significant that way, *opposite* when
  it is significant the other way, otherwise *not shown here* (the sign is reported, not counted, and so is an
  unadjusted CI that excludes 0: significant alone, not after the family's correction);
- the paper says ``a >= b`` ("comparable or better"; ``<=`` likewise): *same direction* when significant that
  way, *opposite* when significant the other way, otherwise *not contradicted* — which says nothing about
  power: the row shows the difference's 95% CI, the range of differences the data leave open.

The papers' settings differ from any tcf experiment (datasets, encoder sizes up to 175B, their budgets), so a
verdict says whether the *direction* holds here, never that a number was reproduced.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tcf.experiments.answers import (
    HEAD_NAMES,
    SELECT_SPLIT,
    TUNED,
    Finding,
    ReportSettings,
    chosen_seeds,
    labelled,
    planned_groups,
    seeds_planned,
    select,
    signed,
)
from tcf.experiments.diagnostics import plateau_note, plateau_stops
from tcf.experiments.rescore import (
    CHECKPOINTS_FIXED,
    ONE_CHECKPOINT,
    ZERO_NOISE_FIXED,
    zs_evidence,
    zs_provisional,
)
from tcf.experiments.results import Group
from tcf.experiments.stats import compare, holm_family

TCF = "TCF (Li et al., 2023, arXiv:2305.11700; MIND, H&M, Bili)"
LLMRANK = "LLMRank (Hou et al., 2024, ECIR)"


@dataclass(frozen=True)
class Claim:
    source: str
    said: str  # the finding, in a few words
    question: str  # the report question (Finding.question) or "zero-shot vs trained" / "zero-shot vs popularity"
    expect: str  # ">" | ">=" | "<" | "<=": a against b, in the report test's own order
    head: str | None = None  # only this head's test; None: every head
    one_family: bool = False  # the finding is about one model family's sizes: other families do not test it


CLAIMS = (
    Claim(TCF, "fine-tuned text comparable to or better than ID with SASRec (their encoders up to 175B)",
          "fine-tuned vs ID", ">=", "sasrec"),
    Claim(TCF, "text below ID with DSSM", "text vs ID", "<", "dssm"),
    Claim(TCF, "fine-tuning the encoder beats keeping it frozen", "fine-tuned vs frozen", ">"),
    Claim(TCF, "a bigger item encoder helps (within one family, OPT 125M → 175B)", "largest vs smallest encoder",
          ">", one_family=True),
    Claim(f"{TCF}; {LLMRANK}", "zero-shot LLM prompting below trained recommenders", "zero-shot vs trained", "<"),
    # LLMRank reports popularity and position biases of ChatGPT-scale rankers, not a small model's score against
    # popularity: that expectation is this study's, drawn from those biases, and the row says so
    Claim(f"this study's expectation for a small model, after {LLMRANK}'s popularity and position biases",
          "a small zero-shot LLM near or below popularity", "zero-shot vs popularity", "<="),
)


@dataclass(frozen=True)
class Measured:
    """One test of this experiment, as a claim sees it."""

    what: str  # which comparison, for the table
    diff: float
    significant: bool
    evidence: str  # test and p-values
    ci: list | None = None  # 95% CI of the difference, when the test gave one
    untested: str = ""  # why this comparison does not test the claim (the verdict then says so)
    one_checkpoint: bool = False  # a trained side of one checkpoint, treated as fixed: the verdict says so
    fixed: bool = False  # a trained side of several checkpoints treated as fixed (no seed noise measured)


def verdict(expect: str, m: Measured) -> str:
    if m.untested:
        return m.untested
    text = _verdict(expect, m)
    # a direction seen on one trained checkpoint is that checkpoint's, not yet its configuration's
    if not text.startswith("**"):
        return text
    return text + " (one checkpoint)" if m.one_checkpoint else text + " (checkpoints fixed)" if m.fixed else text


def _verdict(expect: str, m: Measured) -> str:
    up = m.diff > 0
    if expect in (">=", "<="):
        if not m.significant:
            return "not contradicted (see the CI)"
        return "**same direction**" if up == (expect == ">=") else "**opposite**"
    agrees = up == (expect == ">")
    if not m.significant:
        alone = m.ci and all(isinstance(x, (int, float)) and math.isfinite(x) for x in m.ci) and \
            (m.ci[0] > 0 or m.ci[1] < 0)
        return (f"not shown here ({'same' if agrees else 'opposite'} sign"
                + ("; its unadjusted 95% CI excludes 0" if alone else "") + ")")
    return "**same direction**" if agrees else "**opposite**"


def _from_findings(found: list[Finding], claim: Claim, s: ReportSettings) -> list[Measured]:
    out = []
    for f in found:
        if f.question != claim.question or (claim.head and f.head != claim.head):
            continue
        c = f.c
        what = f"{HEAD_NAMES.get(f.head, f.head)}: {_label(f.a)} vs {_label(f.b)}"
        fa, fb = model_family(f.a.first.encoder), model_family(f.b.first.encoder)
        untested = (f"not tested here: different model families ({fa}, {fb})"
                    if claim.one_family and fa != fb else "")
        out.append(Measured(what, c.diff, c.significant(s.alpha), c.evidence() + (f"; {f.tags()}" if f.tags() else ""),
                            c.diff_ci, untested))
    return out


def model_family(encoder: str | None) -> str:
    """An encoder's family from its name, its size suffix dropped: opt-125m and opt-175b -> opt; minilm-l6 ->
    minilm; mpnet-base -> mpnet; a path keeps its folder (facebook/opt-1.3b -> facebook/opt)."""
    name = str(encoder or "")
    return re.sub(r"-(\d+(\.\d+)?[kmbt]|l\d+|base|large|small|tiny|mini|xl|xxl)$", "", name.lower(), flags=re.I)


def _label(g) -> str:
    return labelled(g)


def _tuned_vs_id(groups: list[Group], claim: Claim, s: ReportSettings, planned: int | None = None) -> list[Measured]:
    """The fine-tuned (or LoRA) tower best on validation against the ID setting best on validation, per head (one
    Holm family): the report's text-vs-ID answer may pick a frozen tower, which is not what the claim is about."""
    m, found, every = s.metrics[0], [], groups
    groups = planned_groups(groups, s)  # the candidates: report.post_hoc's runs are not (their sisters still count)
    planned = seeds_planned(planned, groups)
    for head in sorted({g.first.head for g in groups}):
        if claim.head and head != claim.head:
            continue
        kinds = ([g for g in groups if g.first.head == head and g.first.tower in TUNED],
                 [g for g in groups if g.first.head == head and g.first.tower == "id"])
        tuned, ids = (select(x, m) for x in kinds)
        c = (compare(tuned, ids, m, s.split, alpha=s.alpha, pool=groups)
             if tuned is not None and ids is not None else None)
        if c is not None:
            what = (f"{HEAD_NAMES.get(head, head)}: {_label(tuned)} vs {_label(ids)} (each the best on "
                    f"{SELECT_SPLIT} of its kind)")
            found.append((what, Finding("tuned vs ID", head, tuned, ids, c, "", ("", ""), planned_seeds=planned,
                                        chosen_seeds=chosen_seeds(m, *kinds))))
    holm_family([f.c for _, f in found])
    if len(found) == 1:  # its own family of one: say so, as a corrected p would
        found = [(what[:-1] + "; the table's own test, one in its family: no correction)", f) for what, f in found]
    stops = plateau_stops([r for g in every for r in g.runs])
    for _, f in found:
        if note := plateau_note((f.a, f.b), stops):
            f.notes.append(note)
    return [Measured(what, f.c.diff, f.c.significant(s.alpha),
                     f.c.evidence() + (f"; {f.tags()}" if f.tags() else ""), f.c.diff_ci)
            for what, f in found]


def _from_zeroshot(zs: list[dict], claim: Claim, s: ReportSettings) -> list[Measured]:
    want = "trained" if claim.question == "zero-shot vs trained" else "pop"
    out = []
    for row in zs:
        for t in row.get("tests", []):
            untestable = t["p_value"] is None and str(t.get("no_test", "")).startswith("not testable")
            if not t["baseline"].startswith(want) or (t["p_value"] is None and not untestable):
                continue
            tested_on = f", on {row['metric']}" if row.get("metric") and row["metric"] != s.metrics[0] else ""
            what = f"{row['model']} ({row['protocol']}{tested_on}) vs {t['label']}"
            if untestable:
                out.append(Measured(what, t.get("diff") or 0.0, False, t["no_test"], None, untested="not testable"))
                continue
            provisional = zs_provisional(t)
            out.append(Measured(what, t["diff"], bool(t["significant"]),
                                zs_evidence(t) + (f"; {provisional}" if provisional else ""), t.get("ci95"),
                                one_checkpoint=ONE_CHECKPOINT in (t.get("test") or ""),
                                fixed=CHECKPOINTS_FIXED in (t.get("test") or "")
                                or "in effect " + ZERO_NOISE_FIXED in (t.get("test") or "")))
    return out


def _diff(m: Measured) -> str:
    ci = m.ci if m.ci and all(isinstance(x, (int, float)) and math.isfinite(x) for x in m.ci) else None
    return signed(m.diff) + (f" [{signed(ci[0])}, {signed(ci[1])}]" if ci else "")


def against_papers(found: list[Finding], zs: list[dict], s: ReportSettings, groups: list[Group] = ()) -> list[str]:
    """Markdown lines: one table row per claim and matching test of this experiment (a claim without one says
    so)."""
    rows = ["| paper | finding | paper's direction | here | difference in " + s.metrics[0] + " (or the metric the "
            "row names) [95% CI] | test | verdict |",
            "|---|---|---|---|---:|---|---|"]
    for claim in CLAIMS:
        got = (_from_zeroshot(zs, claim, s) if claim.question.startswith("zero-shot")
               else _tuned_vs_id(list(groups), claim, s, found[0].planned_seeds if found else None)
               if claim.question == "fine-tuned vs ID"
               else _from_findings(found, claim, s))
        if not got:
            rows.append(f"| {claim.source} | {claim.said} | a {claim.expect} b | not measured here | — | — | — |")
        for m in got:
            rows.append(f"| {claim.source} | {claim.said} | a {claim.expect} b | {m.what} | {_diff(m)} | "
                        f"{m.evidence} | {verdict(claim.expect, m)} |")
    return ["These papers ran other datasets, encoder sizes and budgets: a row says whether the *direction* of "
            "their finding holds in this experiment, with this report's own test (a = the first-named side). "
            "*Not shown here* (not at this scale: these data, encoders and seeds) means the difference is not "
            "significant after correction (the Holm "
            "family its evidence names: the report answer's its test comes from, or the table's own); it neither "
            "confirms nor contradicts the paper. *Not contradicted* (for a claim of "
            "\"comparable or better\") is no "
            "evidence of equivalence either: the CI shows which differences the data leave open. Verdicts from "
            "groups with fewer seeds than planned are provisional (the test names the seeds averaged); *(one "
            "checkpoint)*: the trained side is one seed's checkpoint, treated as fixed, so the direction is that "
            "checkpoint's, not yet its configuration's.", "", *rows]
