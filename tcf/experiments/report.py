"""A folder of runs -> ``report/report.md`` (tables, answers to the TCF questions) and PNG plots.

Plots (matplotlib, Agg backend, written only when the runs they need exist):

- ``scaling.png``: test NDCG@10 and HR@10 against the measured encoder parameter count
  (log axis), one line per head x tower, the ID baseline of each head as a band (95% CI);
- ``towers.png``: ID vs frozen vs fine-tuned / LoRA towers side by side, per head;
- ``zeroshot.png``: zero-shot LLM recommenders against popularity / random (and a trained
  model scored on the same candidates, when the zero-shot run provides it), with the share of
  replies that followed the format.

The four questions (text vs ID, fine-tuned vs frozen, bigger encoder, zero-shot vs trained)
are answered in sentences computed from the numbers; a comparison without runs says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tcf.config import from_dict
from tcf.eval.metrics import holm, paired_test
from tcf.experiments.results import Group, RunResult, Stat, group_runs, load_runs
from tcf.experiments.stats import (  # noqa: F401 - compare, holm_family and the test names: imported from here
    MIXED,
    NO_TEST,
    PAIRED,
    PAIRED_RESAMPLES,
    WELCH,
    Z_FROM_CI,
    Comparison,
    cold_compare,
    compare,
    holm_family,
)
from tcf.fsutil import atomic_write_text
from tcf.run.config import LM_TOWERS, TOWERS

TOWER_ORDER = TOWERS
TOWER_NAMES = {"id": "ID", "frozen": "frozen text", "id+text": "ID + text", "finetune": "fine-tuned text",
               "lora": "LoRA text"}
HEAD_NAMES = {"sasrec": "SASRec", "dssm": "DSSM"}
TUNED = LM_TOWERS


@dataclass(frozen=True)
class ReportSettings:
    title: str | None = None
    split: str = "test"  # the split tables and plots show (the checkpoint is always chosen on valid)
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "hr@10"])  # the first one is the headline
    alpha: float = 0.05  # a difference counts as significant below this p-value (or without CI overlap)
    neighbors: list[str] = field(default_factory=lambda: ["Toy Story", "Star Wars"])  # item texts to show kNN of
    neighbors_k: int = 5


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


def _order(g: Group) -> tuple:
    r = g.first
    tower = TOWER_ORDER.index(r.tower) if r.tower in TOWER_ORDER else len(TOWER_ORDER)
    # ID first, then per encoder (by size) its towers side by side: frozen next to fine-tuned
    return (r.head, r.tower != "id", r.encoder_parameters or 0, r.encoder or "", tower,
            json.dumps(g.settings, default=str))


def _extra(g: Group) -> str:
    """Distinguishing settings beyond head, tower and encoder model (those have their own columns)."""
    skip = ("model.head", "model.tower", "encoder.model", "task")
    return ", ".join(f"{k}={v}" for k, v in g.settings.items() if k not in skip)


# ---------------------------------------------------------------- comparisons
#
# Every answer selects what it compares on validation (SELECT_SPLIT), never on the split it
# reports, and treats its tests as one family: Holm–Bonferroni adjusted p-values decide.

SELECT_SPLIT = "valid"


def _rel(c: Comparison) -> str:
    rel = f", {c.diff / c.b.mean:+.0%}" if c.b.mean else ""
    return f"{c.a.mean:.4f} vs {c.b.mean:.4f} ({c.diff:+.4f}{rel}; {c.evidence()})"


def _select(groups: list[Group], metric: str) -> Group | None:
    """The group with the best validation ``metric``: what the report compares is chosen before the test
    split is looked at.  A lone candidate needs no choice; several without validation numbers get none."""
    if len(groups) == 1:
        return groups[0]
    scored = [(st.mean, g) for st, g in ((g.stat(metric, SELECT_SPLIT), g) for g in groups) if st is not None]
    return max(scored, key=lambda t: t[0])[1] if scored else None


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
    after: str = ""  # a sentence after the verdict

    def line(self, s: ReportSettings) -> str:
        c = self.c
        numbers = f"{c.diff:+.4f} ({c.evidence()})" if self.diff_only else _rel(c)
        return f"{self.before}{numbers} — **{c.verdict(s.alpha, *self.words)}**.{self.after}"

    def record(self, s: ReportSettings) -> dict:
        c = self.c
        return {"question": self.question, "head": self.head, "a": group_label(self.a), "b": group_label(self.b),
                "metric": s.metrics[0], "split": s.split, "selected_on": SELECT_SPLIT, "a_mean": c.a.mean,
                "b_mean": c.b.mean, "diff": c.diff, **c.record(), "alpha": s.alpha,
                "significant": c.significant(s.alpha)}


def _family(found: list[Finding]) -> list[Finding]:
    holm_family([f.c for f in found])
    return found


COLD = "text vs ID (cold items)"


def _of(n: int, what: str) -> str:
    return f" (of {n} {what})" if n > 1 else ""


def text_vs_id(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """Per head: the text tower best on validation against the ID setting best on validation, on every user
    (one family) and on the users whose target is a cold item (a family of its own)."""
    m, out, cold = s.metrics[0], [], []
    for head in sorted({g.first.head for g in groups}):
        ids = [g for g in groups if g.first.head == head and g.first.tower == "id"]
        texts = [g for g in groups if g.first.head == head and g.first.tower != "id"]
        base, best = _select(ids, m), _select(texts, m)
        c = compare(best, base, m, s.split) if base is not None and best is not None else None
        if c is None:
            continue
        name = HEAD_NAMES.get(head, head)
        before = (f"{name}: the text tower best on {SELECT_SPLIT} {m}"
                  f"{_of(len(texts), 'towers')}, {group_label(best, False)}, against the ID setting best on "
                  f"{SELECT_SPLIT}{_of(len(ids), 'settings')}: {s.split} {m} ")
        out.append(Finding("text vs ID", head, best, base, c, before, ("text beats ID", "ID beats text")))
        cc, n = cold_compare(best, base, m, s.split)
        if cc is not None:
            k = best.first.config.get("eval.cold_max_count")
            who = f"{n} users" if n is not None else "users"
            rule = f": at most {k} training interactions" if k is not None else ""
            cold.append(Finding(COLD, head, best, base, cc,
                                f"{name} on cold items ({who} whose {s.split} target is a cold item{rule}), the same "
                                f"towers: {m} ",
                                ("text beats ID on cold items", "ID beats text on cold items")))
    return _interleave(_family(out), _family(cold))


def _interleave(main: list[Finding], cold: list[Finding]) -> list[Finding]:
    """Each head's cold-item line right after its overall line."""
    by_head = {f.head: f for f in cold}
    return [x for f in main for x in (f, by_head.get(f.head)) if x is not None]


def fine_tuned_vs_frozen(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """Every fine-tuned / LoRA group against the frozen setting of its head and encoder best on validation."""
    m, out = s.metrics[0], []
    frozen = [g for g in groups if g.first.tower == "frozen"]
    for tuned in (g for g in groups if g.first.tower in TUNED):
        r = tuned.first
        peers = [g for g in frozen if g.first.head == r.head and g.first.encoder == r.encoder]
        base = _select(peers, m)
        c = compare(tuned, base, m, s.split) if base is not None else None
        if c is None:
            continue
        extra = f" [{_extra(tuned)}]" if _extra(tuned) else ""
        before = (f"{HEAD_NAMES.get(r.head, r.head)} with {r.encoder}: {TOWER_NAMES[r.tower]}{extra} against frozen"
                  f"{_of(len(peers), 'frozen settings; the best on ' + SELECT_SPLIT)}: {m} ")
        out.append(Finding("fine-tuned vs frozen", r.head, tuned, base, c, before,
                           ("fine-tuning helps", "fine-tuning hurts")))
    return _family(out)


def scaling_series(groups: list[Group], metric: str, split: str) -> dict[str, list[tuple[float, Stat, Group]]]:
    """label -> [(encoder parameters, stat, group)] sorted by size, for text towers with a measured size."""
    series: dict[str, list] = {}
    for g in groups:
        r, st = g.first, g.stat(metric, split)
        if r.tower == "id" or r.encoder_parameters is None or st is None:
            continue
        label = group_label(g, True).split(" (")[0] + (f" [{_extra(g)}]" if _extra(g) else "")
        series.setdefault(label, []).append((float(r.encoder_parameters), st, g))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in series.items()}


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def largest_vs_smallest(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """Per series (head x tower x settings): the largest encoder against the smallest (no selection)."""
    m, out = s.metrics[0], []
    for label, pts in scaling_series(groups, m, s.split).items():
        if len({p for p, _, _ in pts}) < 2:
            continue
        walk = " → ".join(f"{st.mean:.4f} ({params_text(p)})" for p, st, _ in pts)
        rho = _spearman([p for p, _, _ in pts], [st.mean for _, st, _ in pts])
        before = f"{label}: {m} {walk}; Spearman ρ(size, {m}) = {rho:.2f}; largest vs smallest "
        out.append(Finding("largest vs smallest encoder", pts[0][2].first.head, pts[-1][2], pts[0][2],
                           compare(pts[-1][2], pts[0][2], m, s.split), before,
                           ("yes, the largest beats the smallest", "no, the largest is worse than the smallest"),
                           diff_only=True))
    return _family(out)


QUESTIONS = {  # finding.question -> (the question answered, what is said without runs for it)
    "text vs ID": ("Does text beat ID?", "not measured (no ID run and text run with the same head)."),
    "fine-tuned vs frozen": ("Does fine-tuning beat a frozen encoder?",
                             "not measured (no fine-tuned or LoRA run beside a frozen run of the same head and "
                             "encoder)."),
    "largest vs smallest encoder": ("Does a bigger encoder help?",
                                    "not measured (fewer than two encoder sizes for any head and tower)."),
}


def findings(groups: list[Group], s: ReportSettings) -> list[Finding]:
    """Every test the answers make (each answer its own Holm family)."""
    return [*text_vs_id(groups, s), *fine_tuned_vs_frozen(groups, s), *largest_vs_smallest(groups, s)]


def method_note(s: ReportSettings) -> str:
    """How the answers were reached, said once above them."""
    note = (f"Towers and baselines are selected on {SELECT_SPLIT} {s.metrics[0]} (the text tower, ID setting or "
            f"frozen peer with the best {SELECT_SPLIT} score), then compared on {s.split}. Each answer's tests are "
            f"one family (the cold-item lines another), Holm–Bonferroni corrected: a difference counts when its "
            f"adjusted p < {s.alpha:g}. Test: a {PAIRED} ({PAIRED_RESAMPLES} sign flips) on each user's value "
            f"averaged over the group's seeds, whenever both groups have per-user records on the same users; the "
            f"seed spread is shown beside, not tested. Fallbacks, named where used: {WELCH}; {Z_FROM_CI}. "
            "Each line names its test.")
    if s.split == SELECT_SPLIT:
        note += f" The report's split is the selection split: the selected towers' {s.split} numbers are optimistic."
    return note


# ---------------------------------------------------------------- zero-shot

def zeroshot_rows(runs: list[RunResult], trained: list[Group], s: ReportSettings) -> list[dict]:
    """One row per zero-shot run: its metrics, compliance, and the baselines on its own candidate lists
    (popularity and random from the run; the best trained model of each head, scored here)."""
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
        row["ci95"] = (split.get("metrics", {}).get(s.metrics[0]) or {}).get("ci95")
        scored = trained_on_candidates(r, trained, s, notes=row["notes"])
        row["baselines"].update({name: v["metrics"] for name, v in scored.items()})
        row["tests"] = zeroshot_tests(r, row, scored, s)
        rows.append(row)
    return rows


def trained_on_candidates(zs: RunResult, trained: list[Group], s: ReportSettings,
                          notes: list[str] | None = None) -> dict[str, dict]:
    """The trained run of each head (same dataset) best on validation, scored on the zero-shot run's
    candidate lists: name -> ``score_on_candidates``'s {metrics, users, per_user}.  The run whose top items are the lists' hard negatives (``zeroshot.hard_run``) is left
    out, said in ``notes``: its rank of the target among them equals its full-catalogue rank, and the lists
    were made hard for it alone, so it is no baseline there."""
    path = zs.record.section("candidates", {}).get("path")
    fingerprint = zs.record.dataset.get("fingerprint")
    if not path or not Path(path).is_file():
        return {}
    hard = hard_run_of(zs)
    out = {}
    for head in sorted({g.first.head for g in trained}):
        same = [g for g in trained if g.first.head == head
                and g.first.record.dataset.get("fingerprint") == fingerprint]
        best = _select(same, s.metrics[0])
        if best is None:
            continue
        name = (f"trained {HEAD_NAMES.get(head, head)} ({TOWER_NAMES.get(best.first.tower, best.first.tower)}"
                + (f", {best.first.encoder})" if best.first.encoder else ")"))
        if hard is not None and is_hard_run(best.first, hard):
            if notes is not None:
                notes.append(f"{name} not scored: it is the hard_run (`{best.first.folder.name}`) whose top items "
                             "are the negatives, so its rank among them is its full-catalogue rank")
            continue
        try:
            out[name] = score_on_candidates(best.first, Path(path), zs.config.get("zeroshot.split"))
        except Exception as e:  # noqa: BLE001 - a run that cannot be rebuilt is reported, not fatal
            print(f"tcf report: could not score {best.first.folder} on {path}: {e}")
    return out


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
    -> {"metrics": {name: {"mean"}}, "users": [U], "per_user": {name: [U]}} in the file's user order."""
    import torch

    from tcf.eval.metrics import metrics_from_scores
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
    per_user = metrics_from_scores(scores.gather(1, lists), torch.as_tensor(cands.target_pos[:, 0]), ks=(1, 5, 10, 20))
    return {"metrics": {k: {"mean": float(np.mean(v))} for k, v in per_user.items()},
            "users": np.asarray(cands.users, dtype=np.int64), "per_user": per_user}


def _mean(m: dict, name: str) -> float | None:
    v = m.get(name)
    v = v.get("mean") if isinstance(v, dict) else v
    return None if v is None else float(v)


ZS_POP_TEST = f"{PAIRED} (stored by the zero-shot run)"


def _zs_test(name: str, label: str, b_mean: float | None, diff: float | None, ci, p: float | None, test: str,
             reason: str = "") -> dict:
    return {"baseline": name, "label": label, "b_mean": b_mean, "diff": diff, "ci95": ci, "test": test if p is not
            None else None, "p_value": p, "p_holm": None, "family": 1, **({"no_test": reason} if p is None else {})}


def _paired_zs(name: str, label: str, own, users: np.ndarray, values: np.ndarray, b_mean: float | None) -> dict:
    """The zero-shot run's per-user values against a baseline's on the same users (matched by id)."""
    if own is None:
        return _zs_test(name, label, b_mean, None, None, None, "", "no test: the zero-shot run has no per-user records")
    common, ia, ib = np.intersect1d(own[0], users, return_indices=True)
    if len(common) != len(own[0]):
        return _zs_test(name, label, b_mean, None, None, None, "", "no test: the baseline was not scored on every user")
    r = paired_test(own[1][ia], np.asarray(values, np.float64)[ib], n=PAIRED_RESAMPLES)
    why = "no test: a per-user value is not a finite number"
    return _zs_test(name, label, b_mean, r["mean_diff"], r["ci95"], r["p_value"], PAIRED, why)


def zeroshot_tests(run: RunResult, row: dict, scored: dict, s: ReportSettings) -> list[dict]:
    """One Holm family per zero-shot run: paired tests over its users against random (each user's exact
    expectation), popularity (the run's own stored test) and each trained model on the same candidate lists."""
    m, tests = s.metrics[0], []
    own = run.per_user(m, s.split)
    rand = _mean(row["baselines"].get("random", {}), m)
    if rand is not None:  # every list has the same length: one exact expectation for every user
        users = own[0] if own is not None else np.zeros(0, np.int64)
        tests.append(_paired_zs("random", "random", own, users, np.full(len(users), rand), rand))
    pop = _mean(row["baselines"].get("pop", {}), m)
    if pop is not None:
        stored = (run.record.split(s.split).get("vs_pop") or {}).get(m)
        if stored and stored.get("p_value") is not None:
            tests.append(_zs_test("pop", "popularity", pop, stored.get("mean_diff"), stored.get("ci95"),
                                  float(stored["p_value"]), ZS_POP_TEST))
        else:
            tests.append(_zs_test("pop", "popularity", pop, None, None, None, "",
                                  f"no test: the run stored no per-user comparison with popularity on {m}"))
    for name, v in scored.items():
        if m in v["per_user"]:
            tests.append(_paired_zs(name, f"the {name}", own, v["users"], v["per_user"][m], _mean(v["metrics"], m)))
    adjusted = holm([t["p_value"] for t in tests])
    family = sum(p is not None for p in adjusted)
    for t, p in zip(tests, adjusted):
        t.update(p_holm=p, family=family, alpha=s.alpha, significant=p is not None and p < s.alpha)
    return tests


def _zs_clause(t: dict) -> str:
    """``against B b: diff [lo, hi] (test p, Holm p) — **verdict**``."""
    label, b = t["label"], t["b_mean"]
    where = " on the same candidates" if t["baseline"].startswith("trained") else ""
    head = f"against {label}{where} {b:.4f}: " if b is not None else f"against {label}{where}: "
    if t["p_value"] is None:
        return head + f"{t['no_test']} — **no clear difference from {label}**"
    ci = t["ci95"]
    ci = f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci and None not in ci and all(map(math.isfinite, ci)) else ""
    evidence = f"{t['test']} p = {t['p_value']:.3g}"
    if t["family"] > 1:
        evidence += f", Holm-adjusted over {t['family']} tests p = {t['p_holm']:.3g}"
    verdict = (f"no clear difference from {label}" if not t["significant"]
               else f"{'above' if t['diff'] > 0 else 'below'} {label}")
    return head + f"{t['diff']:+.4f}{ci} ({evidence}) — **{verdict}**"


def answer_zeroshot(rows: list[dict], s: ReportSettings) -> list[str]:
    m, out = s.metrics[0], []
    for row in rows:
        own = _mean(row["metrics"], m)
        if own is None:
            continue
        n = f" of {row['n_users']} users" if row.get("n_users") else ""
        ci = row.get("ci95")
        ci = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""
        line = f"{row['model']} ({row['protocol']}): {m} {own:.4f}{ci} on the candidate lists{n}"
        if row["compliance"] is not None:
            partly = f" ({row['partial']:.0%} partly)" if row.get("partial") else ""
            line += f"; {row['compliance']:.0%} of replies followed the format{partly}"
        clauses = [_zs_clause(t) for t in row.get("tests", [])]
        out.append(line + "".join(f"; {c}" for c in clauses) + "."
                   + "".join(f" ({note}.)" for note in row.get("notes", [])))
    return out or ["not measured (no zero-shot run)."]


# ---------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(st: Stat) -> tuple[float, float]:
    if st.lo is None or st.hi is None:
        return 0.0, 0.0
    return max(st.mean - st.lo, 0.0), max(st.hi - st.mean, 0.0)


TOWER_STYLE = {"frozen": ("-", "o"), "id+text": ("-.", "D"), "finetune": ("--", "s"), "lora": (":", "^")}


def _head_colors(plt, heads) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {h: cycle[i % len(cycle)] for i, h in enumerate(heads)}


def _size_ticks(ax, series: dict) -> None:
    """Major ticks at the measured sizes, labelled with the model and its size; no minor labels."""
    from matplotlib.ticker import NullFormatter

    names: dict[float, set] = {}
    for pts in series.values():
        for p, _, g in pts:
            names.setdefault(p, set()).add(g.first.encoder)
    xs = sorted(names)
    ax.set_xticks(xs, [f"{'/'.join(sorted(names[x]))} ({params_text(x)})" for x in xs], fontsize=8, rotation=40,
                  ha="right", rotation_mode="anchor")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(xs[0] / 1.8, xs[-1] * 1.8)


def _save_figure(plt, fig, path: Path, title: str, *, legend_from=None, ncol: int = 4, bottom=None) -> bool:
    """Title, an optional shared legend under the axes (``bottom(legend rows)`` is the space it keeps), save, close."""
    rect = (0, 0, 1, 1)
    if legend_from is not None:
        handles, labels = legend_from.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), fontsize=8, frameon=False)
        rect = (0, bottom(-(-len(labels) // ncol)), 1, 1)
    fig.suptitle(title)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_scaling(groups: list[Group], s: ReportSettings, path: Path, title: str) -> bool:
    if not any(len(v) for v in scaling_series(groups, s.metrics[0], s.split).values()):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(s.metrics), figsize=(6.4 * len(s.metrics), 4.8), squeeze=False)
    color = _head_colors(plt, sorted({g.first.head for g in groups}))
    for ax, metric in zip(axes[0], s.metrics):
        series = scaling_series(groups, metric, s.split)
        for label, pts in series.items():
            r = pts[0][2].first
            ls, marker = TOWER_STYLE.get(r.tower, ("-", "o"))
            err = np.array([_err(st) for _, st, _ in pts]).T
            ax.errorbar([p for p, _, _ in pts], [st.mean for _, st, _ in pts], yerr=err, ls=ls, marker=marker,
                        capsize=3, color=color[r.head], label=label)
        for head, c in color.items():
            base = _select([g for g in groups if g.first.head == head and g.first.tower == "id"], s.metrics[0])
            st = base.stat(metric, s.split) if base else None
            if st is None:
                continue
            if st.lo is not None:
                ax.axhspan(st.lo, st.hi, color=c, alpha=0.12, lw=0)
            ax.axhline(st.mean, color=c, ls=(0, (6, 3)), lw=1, alpha=0.8,
                       label=f"{HEAD_NAMES.get(head, head)} ID baseline, best on {SELECT_SPLIT} (band: 95% CI)")
        ax.set_xscale("log")
        if series:
            _size_ticks(ax, series)
        ax.set_xlabel("item encoder: measured parameters (log scale)")
        ax.set_ylabel(f"{metric.upper()} on {s.split} (mean, 95% CI)")
        ax.set_title(f"{metric.upper()} vs encoder size")
        ax.grid(True, which="major", alpha=0.3)
    return _save_figure(plt, fig, path, title, legend_from=axes[0][0], ncol=4,
                        bottom=lambda rows: 0.06 + 0.04 * (rows - 1))


def plot_towers(groups: list[Group], s: ReportSettings, path: Path, title: str) -> bool:
    heads = [h for h in sorted({g.first.head for g in groups})
             if len({g.first.tower for g in groups if g.first.head == h}) >= 2]
    if not heads:
        return False
    plt = _plt()
    colors = dict(zip(TOWER_ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    rows = {h: sorted([g for g in groups if g.first.head == h], key=_order) for h in heads}
    height = max(2.2, 0.42 * max(len(v) for v in rows.values()) + 1.3)
    fig, axes = plt.subplots(len(heads), len(s.metrics), figsize=(6.2 * len(s.metrics), height * len(heads)),
                             squeeze=False)
    for i, head in enumerate(heads):
        for ax, metric in zip(axes[i], s.metrics):
            gs = [g for g in rows[head] if g.stat(metric, s.split) is not None]
            stats = [g.stat(metric, s.split) for g in gs]
            err = np.array([_err(st) for st in stats]).T
            ax.barh(range(len(gs)), [st.mean for st in stats], xerr=err, capsize=3,
                    color=[colors.get(g.first.tower, "0.5") for g in gs])
            ax.set_yticks(range(len(gs)), [group_label(g, False) + (f" [{_extra(g)}]" if _extra(g) else "")
                                           for g in gs], fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(f"{s.split} {metric.upper()} (mean, 95% CI)")
            ax.set_title(f"{HEAD_NAMES.get(head, head)}: {metric.upper()} by item tower")
            ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(plt, fig, path, title)


def plot_zeroshot(rows: list[dict], s: ReportSettings, path: Path, title: str) -> bool:
    rows = [r for r in rows if _mean(r["metrics"], s.metrics[0]) is not None]
    if not rows:
        return False
    plt = _plt()
    names = ["zero-shot LLM"] + sorted({n for r in rows for n in r["baselines"]}, key=lambda n: (n.startswith("t"), n))
    height = 1.0 + 0.28 * len(names) * len(rows)
    fig, axes = plt.subplots(1, len(s.metrics), figsize=(6.4 * len(s.metrics), height + 1.0), squeeze=False)
    width = 0.8 / len(names)
    for ax, metric in zip(axes[0], s.metrics):
        for j, name in enumerate(names):
            vals = [_mean(r["metrics"] if j == 0 else r["baselines"].get(name, {}), metric) for r in rows]
            bars = ax.barh(np.arange(len(rows)) + j * width, [v or 0.0 for v in vals], height=width * 0.92,
                           label=name)
            ax.bar_label(bars, [("—" if v is None else f"{v:.3f}") for v in vals], padding=2, fontsize=7)
        labels = [f"{r['model']} · {r['protocol']}" + (f"\n{r['n_users']} users" if r.get("n_users") else "")
                  + (f"\nformat followed: {r['compliance']:.0%}" if r["compliance"] is not None else "")
                  for r in rows]
        ax.set_yticks(np.arange(len(rows)) + width * (len(names) - 1) / 2, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.12 * max(1e-9, *[_mean(r["metrics"], metric) or 0 for r in rows],
                                  *[_mean(b, metric) or 0 for r in rows for b in r["baselines"].values()]))
        ax.set_xlabel(f"{metric.upper()} on {s.split}, ranking each user's candidate list")
        ax.set_title(f"Zero-shot {metric.upper()} vs baselines on the same candidates")
        ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(plt, fig, path, title, legend_from=axes[0][0], ncol=5,
                        bottom=lambda rows: (0.15 + 0.22 * rows) / (height + 1.0))


# ---------------------------------------------------------------- markdown

def _find_item(texts: list[str], query: str) -> int | None:
    """The item whose text is ``query`` (case-folded), else the first whose text contains it."""
    q = query.casefold()
    exact = [i for i, t in enumerate(texts) if i and t.casefold() == q]
    return exact[0] if exact else next((i for i, t in enumerate(texts) if i and q in t.casefold()), None)


def neighbor_table(groups: list[Group], s: ReportSettings) -> list[str]:
    """Nearest items (cosine, exact FAISS index over each pooled cache the runs used) of a few named items:
    a look at what each encoder considers similar, next to what the recommenders learned from it."""
    from tcf.data import load_dataset
    from tcf.encoders.cache import read_entry
    from tcf.encoders.index import cached_index

    caches: dict[str, RunResult] = {}
    for g in groups:
        info = g.first.record.section("text_cache", {})
        if info.get("cache") and Path(info["cache"]).is_dir():
            caches.setdefault(info["cache"], g.first)
    rows = []
    for path, run in caches.items():
        entry = read_entry(Path(path))
        if entry.key.get("kind") != "pooled":
            continue
        texts = load_dataset(run.record.dataset["path"]).item_texts(entry.key["template"])
        index = cached_index(entry)
        for query in s.neighbors:
            item = _find_item(texts, query)
            if item is None:
                continue
            _, ids = index.search(np.asarray(entry.vectors[item], dtype=np.float32), s.neighbors_k, exclude=[item])
            names = "; ".join(texts[i] for i in ids[0] if i > 0)
            rows.append(f"| {texts[item]} | {run.encoder} | {names} |")
    if not rows:
        return []
    return ["| item | encoder | nearest items (cosine, exact FAISS index) |", "|---|---|---|", *rows]


def _non_repeat(g: Group, s: ReportSettings) -> str:
    """The headline metric on targets the user had not seen before, and how many targets were repeats."""
    value = g.slice_mean("non-repeat", s.metrics[0], s.split)
    n = g.first.slice_users("repeat", s.split)
    return "—" if value is None else f"{value:.4f} ({n} repeat targets)"


def table(groups: list[Group], s: ReportSettings) -> list[str]:
    """One row per group; a non-repeat column when any run's targets repeat an earlier item (there the
    masking rule, eval.mask_history, moves the headline number)."""
    repeats = any((g.first.slice_users("repeat", s.split) or 0) > 0 for g in groups)
    cols = ["head", "tower", "encoder", "encoder params", "seeds", *[f"{s.split} {m}" for m in s.metrics],
            f"cold {s.metrics[0]}", *([f"non-repeat {s.metrics[0]}"] if repeats else []), "other settings", "runs"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for g in sorted(groups, key=_order):
        r = g.first
        stats = [g.stat(m, s.split) for m in s.metrics]
        cold = g.slice_mean("cold", s.metrics[0], s.split)
        cells = [HEAD_NAMES.get(r.head, r.head), TOWER_NAMES.get(r.tower, r.tower), r.encoder or "—",
                 params_text(r.encoder_parameters), str(len(g.runs)),
                 *[st.text() if st else "—" for st in stats],
                 "—" if cold is None else f"{cold:.4f} (n={r.slice_users('cold', s.split)})",
                 *([_non_repeat(g, s)] if repeats else []),
                 _extra(g) or "", ", ".join(f"`{x.folder.name}`" for x in g.runs[:3]) + (" …" if len(g.runs) > 3 else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def zeroshot_table(rows: list[dict], s: ReportSettings) -> list[str]:
    names = sorted({n for r in rows for n in r["baselines"]})
    notes = any(r.get("notes") for r in rows)
    cols = ["model", "protocol", *[f"{s.split} {m}" for m in s.metrics], *[f"{n} {s.metrics[0]}" for n in names],
            "format compliance", *(["notes"] if notes else [])]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [_mean(r["metrics"], m) for m in s.metrics] + [_mean(r["baselines"].get(n, {}), s.metrics[0])
                                                              for n in names]
        cells = [r["model"], str(r["protocol"]), *["—" if v is None else f"{v:.4f}" for v in vals],
                 "—" if r["compliance"] is None else f"{r['compliance']:.1%}"]
        cells += ["; ".join(r.get("notes", []))] if notes else []  # e.g. a trained baseline left out, and why
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(runs_dir: str | Path, out: str | Path | None = None, settings: ReportSettings | dict | None = None
                 ) -> Path:
    """Aggregate every run under ``runs_dir`` into ``out`` (default RUNS_DIR/report); -> the markdown file."""
    runs_dir = Path(runs_dir)
    out = Path(out) if out else runs_dir / "report"
    plan = _plan(runs_dir)
    if settings is None or isinstance(settings, dict):
        settings = from_dict(ReportSettings, {**(plan.get("report") or {}), **(settings or {})}, "report")
    s = settings
    runs, failed = load_runs(runs_dir)
    runs = [r for r in runs if out not in r.folder.parents and r.folder != out]
    runs, failed, foreign = _in_plan(plan, runs, failed)
    trained = group_runs([r for r in runs if r.task == "train"])
    zs = zeroshot_rows(runs, trained, s)
    title = s.title or f"{plan.get('name') or runs_dir.name}: {len(runs)} run(s)"
    out.mkdir(parents=True, exist_ok=True)
    figures = {name: fn(data, s, out / f"{name}.png", title) if data else False
               for name, fn, data in (("scaling", plot_scaling, trained), ("towers", plot_towers, trained),
                                      ("zeroshot", plot_zeroshot, zs))}
    found = findings(trained, s)  # every test once, for the answers and report.json
    md = _markdown(title, runs_dir, plan, trained, zs, failed, figures, found, s)
    md += _run_accounting(plan, trained, zs, failed, foreign)
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    summary = {**_summary(trained, zs, found, s), **({"not_in_experiment": foreign} if foreign else {})}
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, default=float) + "\n")
    return out / "report.md"


def _plan(runs_dir: Path) -> dict:
    path = runs_dir / "experiment.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _planned_ids(plan: dict) -> list[str] | None:
    """The run ids experiment.json lists, or None without one (or with runs it does not name)."""
    ids = [r.get("id") for r in plan.get("runs") or [] if isinstance(r, dict)]
    return ids if ids and all(isinstance(i, str) for i in ids) else None


def _in_plan(plan: dict, runs: list[RunResult], failed: list) -> tuple[list, list, list[str]]:
    """Only the runs experiment.json lists (when there is one): -> (runs, failed runs, names of the others)."""
    ids = _planned_ids(plan)
    if ids is None:
        return runs, failed, []
    keep = set(ids)
    foreign = sorted({r.folder.name for r in runs if r.folder.name not in keep}
                     | {p.name for p, _ in failed if p.name not in keep})
    return ([r for r in runs if r.folder.name in keep], [(p, why) for p, why in failed if p.name in keep], foreign)


def _run_accounting(plan: dict, trained, zs, failed, foreign: list[str]) -> list[str]:
    """Failed runs with their error.txt, planned runs not yet run, and runs found here that the experiment
    does not list (left out of every table and comparison)."""
    md = []
    if failed:
        ids = _planned_ids(plan)
        head = f"{len(failed)} planned run(s) failed:" if ids is not None else "These runs failed:"
        md += ["## Failed runs", "", head, "",
               *[f"- `{p.name}`: {reason}" + (f" (see `{p / 'error.txt'}`)" if (p / "error.txt").is_file() else "")
                 for p, reason in failed], ""]
    done = {r.folder.name for g in trained for r in g.runs} | {r["run"].folder.name for r in zs}
    done |= {p.name for p, _ in failed}
    ids = _planned_ids(plan)
    if ids is not None:
        missing = [i for i in ids if i not in done]
        if missing:
            md += [f"{len(missing)} planned run(s) have no results yet: " + ", ".join(f"`{i}`" for i in missing) + ".",
                   ""]
    elif plan.get("runs") and len(plan["runs"]) > len(done):
        md += [f"{len(plan['runs']) - len(done)} planned run(s) have no results yet.", ""]
    if foreign:
        md += ["Not in this experiment (found under this folder, not listed in experiment.json; left out of every "
               "table and comparison): " + ", ".join(f"`{name}`" for name in foreign) + ".", ""]
    return md


def _markdown(title, runs_dir, plan, trained, zs, failed, figures, found, s) -> list[str]:
    md = [f"# {title}", ""]
    if plan.get("description"):
        md += [plan["description"].strip(), ""]
    n_plan = len(plan.get("runs") or [])
    md += [f"Runs read from `{runs_dir}`" + (f" ({n_plan} planned by `{plan.get('source')}`)" if n_plan else "")
           + f". Split: {s.split}. Checkpoints chosen on validation {s.metrics[0]}. A value `m [lo, hi]` is a "
           "bootstrap 95% CI over users (for a group of seeds, of each user's value averaged over its seeds, with "
           "the spread of the seed means beside it as `(sd … over n seeds)`); `m ± h (t over n seeds)` is the "
           "fallback where per-user records are missing: a t-based 95% CI over seed means, which reflects training "
           "randomness only, not which users were sampled.", ""]
    md += ["## Answers", "", method_note(s), ""]
    answers = [(question, [f.line(s) for f in found if f.question == key or f.question.startswith(f"{key} (")]
                or [empty])
               for key, (question, empty) in QUESTIONS.items()]
    for question, lines in [*answers, ("How far is zero-shot prompting from trained models?", answer_zeroshot(zs, s))]:
        md += [f"**{question}**", "", *[f"- {line}" for line in lines], ""]
    if trained:
        md += ["## Trained recommenders", "", *table(trained, s), ""]
    if zs:
        md += ["## Zero-shot", "", *zeroshot_table(zs, s), ""]
    neighbors = neighbor_table(trained, s)
    if neighbors:
        md += ["## Nearest items by encoder", "", *neighbors, ""]
    captions = {"scaling": "Accuracy against encoder size", "towers": "Item towers compared",
                "zeroshot": "Zero-shot against baselines"}
    for name, made in figures.items():
        if made:
            md += [f"## {captions[name]}", "", f"![{captions[name]}]({name}.png)", ""]
    return md


def _summary(trained: list[Group], zs: list[dict], found: list[Finding], s: ReportSettings) -> dict:
    def stat(st: Stat | None):
        return None if st is None else {"mean": st.mean, "ci95": [st.lo, st.hi], "n_seeds": st.n, "over": st.over,
                                        "sd_seeds": st.sd_seeds}

    return {"split": s.split, "groups": [
        {"head": g.first.head, "tower": g.first.tower, "encoder": g.first.encoder,
         "encoder_parameters": g.first.encoder_parameters, "settings": g.settings, "seeds": g.seeds,
         "runs": [r.folder.name for r in g.runs], **{m: stat(g.stat(m, s.split)) for m in s.metrics}}
        for g in sorted(trained, key=_order)],
        "zeroshot": [{"model": r["model"], "protocol": r["protocol"], "compliance": r["compliance"],
                      **{m: _mean(r["metrics"], m) for m in s.metrics}, "ci95": r.get("ci95"),
                      "tests": r.get("tests", []),
                      "baselines": {n: _mean(b, s.metrics[0]) for n, b in r["baselines"].items()},
                      "notes": r.get("notes", [])} for r in zs],
        "comparisons": [f.record(s) for f in found]}
