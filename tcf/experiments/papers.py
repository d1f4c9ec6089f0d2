"""The report's "against the papers" section: each published finding tcf's questions touch, the direction the
paper reports, and the direction this experiment measured, with its (Holm-adjusted) test.

A claim is matched to the report's own tests (``Finding``s and zero-shot tests); nothing is re-tested here.
The verdict is read from the sign and the significance of that test:

- the paper says ``a > b`` (or ``<``): *same direction* when the test is significant that way, *opposite* when
  it is significant the other way, otherwise *not shown at this scale* (the sign is reported, not counted);
- the paper says ``a >= b`` ("comparable or better"; ``<=`` likewise): *consistent* unless the test is
  significant the other way.

The papers' settings differ from any tcf experiment (datasets, encoder sizes up to 175B, their budgets), so a
verdict says whether the *direction* holds here, never that a number was reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcf.experiments.answers import HEAD_NAMES, Finding, ReportSettings, signed

TCF = "TCF (Li et al., 2023, arXiv:2305.11700; MIND, H&M, Bili)"
LLMRANK = "LLMRank (Hou et al., 2024, ECIR; ML-1M, Games)"


@dataclass(frozen=True)
class Claim:
    source: str
    said: str  # the finding, in a few words
    question: str  # the report question (Finding.question) or "zero-shot vs trained" / "zero-shot vs popularity"
    expect: str  # ">" | ">=" | "<" | "<=": a against b, in the report test's own order
    head: str | None = None  # only this head's test; None: every head


CLAIMS = (
    Claim(TCF, "text comparable to or better than ID with SASRec (fine-tuned encoders, warm items)", "text vs ID",
          ">=", "sasrec"),
    Claim(TCF, "text below ID with DSSM", "text vs ID", "<", "dssm"),
    Claim(TCF, "fine-tuning the encoder beats keeping it frozen", "fine-tuned vs frozen", ">"),
    Claim(TCF, "a bigger item encoder helps (125M → 175B)", "largest vs smallest encoder", ">"),
    Claim(TCF, "zero-shot prompting (ChatGPT) far below trained TCF / ID models", "zero-shot vs trained", "<"),
    Claim(LLMRANK, "zero-shot LLM rankers below trained sequential models", "zero-shot vs trained", "<"),
    Claim(LLMRANK, "small zero-shot LLMs near or below popularity", "zero-shot vs popularity", "<="),
)


@dataclass(frozen=True)
class Measured:
    """One test of this experiment, as a claim sees it."""

    what: str  # which comparison, for the table
    diff: float
    significant: bool
    evidence: str  # test and p-values


def verdict(expect: str, m: Measured) -> str:
    up = m.diff > 0
    if expect in (">=", "<="):
        against = m.significant and (up if expect == "<=" else not up)
        return "**opposite**" if against else "consistent"
    agrees = up == (expect == ">")
    if not m.significant:
        return "not shown at this scale" + (" (same sign)" if agrees else " (opposite sign)")
    return "**same direction**" if agrees else "**opposite**"


def _from_findings(found: list[Finding], claim: Claim, s: ReportSettings) -> list[Measured]:
    out = []
    for f in found:
        if f.question != claim.question or (claim.head and f.head != claim.head):
            continue
        c = f.c
        what = f"{HEAD_NAMES.get(f.head, f.head)}: {_label(f.a)} vs {_label(f.b)}"
        out.append(Measured(what, c.diff, c.significant(s.alpha), c.evidence()))
    return out


def _label(g) -> str:
    from tcf.experiments.answers import group_label

    return group_label(g, with_head=False)


def _from_zeroshot(zs: list[dict], claim: Claim) -> list[Measured]:
    want = "trained" if claim.question == "zero-shot vs trained" else "pop"
    out = []
    for row in zs:
        for t in row.get("tests", []):
            if not t["baseline"].startswith(want) or t["p_value"] is None:
                continue
            evidence = f"{t['test']} p = {t['p_value']:.3g}"
            if t["family"] > 1:
                evidence += f", Holm-adjusted over {t['family']} tests p = {t['p_holm']:.3g}"
            what = f"{row['model']} ({row['protocol']}) vs {t['label']}"
            out.append(Measured(what, t["diff"], bool(t["significant"]), evidence))
    return out


def against_papers(found: list[Finding], zs: list[dict], s: ReportSettings) -> list[str]:
    """Markdown lines: one table row per claim and matching test of this experiment (a claim without one says
    so)."""
    rows = ["| paper | finding | paper's direction | here | difference in " + s.metrics[0] + " | test | verdict |",
            "|---|---|---|---|---:|---|---|"]
    for claim in CLAIMS:
        got = (_from_zeroshot(zs, claim) if claim.question.startswith("zero-shot")
               else _from_findings(found, claim, s))
        if not got:
            rows.append(f"| {claim.source} | {claim.said} | a {claim.expect} b | not measured here | — | — | — |")
        for m in got:
            rows.append(f"| {claim.source} | {claim.said} | a {claim.expect} b | {m.what} | {signed(m.diff)} | "
                        f"{m.evidence} | {verdict(claim.expect, m)} |")
    return ["These papers ran other datasets, encoder sizes and budgets: a row says whether the *direction* of "
            "their finding holds in this experiment, with this report's own test (a = the first-named side). "
            "*Not shown at this scale* means the difference here is not significant after correction; it neither "
            "confirms nor contradicts the paper.", "", *rows]
