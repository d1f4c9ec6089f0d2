"""The report's markdown (answers, tables, run accounting) and its PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tcf.experiments.answers import (
    HEAD_NAMES,
    OPTIONAL_QUESTIONS,
    QUESTIONS,
    SELECT_SPLIT,
    TOWER_NAMES,
    TOWER_ORDER,
    Finding,
    ReportSettings,
    extra_settings,
    group_label,
    is_post_hoc,
    method_note,
    on_common_seeds,
    order_key,
    params_text,
    planned_groups,
    scaling_series,
    select,
    signed,
)
from tcf.experiments.derived import derived
from tcf.experiments.diagnostics import diagnostics
from tcf.experiments.rescore import metric_mean, zs_evidence, zs_provisional
from tcf.experiments.results import Group, RunResult, Stat, planned_ids

# ---------------------------------------------------------------- zero-shot answers

def _zs_clause(t: dict) -> str:
    """``against B b: diff [lo, hi] (test p, Holm p) — **verdict**``."""
    label, b = t["label"], t["b_mean"]
    provisional = f" ({p})" if (p := zs_provisional(t)) else ""
    where = " on the same candidates" if t["baseline"].startswith("trained") else ""
    head = f"against {label}{where} {b:.4f}: " if b is not None else f"against {label}{where}: "
    if t["p_value"] is None:
        if t["no_test"].startswith("not testable"):
            diff = f"{signed(t['diff'])} (" if t.get("diff") is not None else ""
            return head + f"{diff}{t['no_test']}{')' if diff else ''} — **not testable**{provisional}"
        return head + f"{t['no_test']} — **no clear difference from {label}**{provisional}"
    ci = t["ci95"]
    ci = f" [{signed(ci[0])}, {signed(ci[1])}]" if ci and None not in ci and all(map(math.isfinite, ci)) else ""
    evidence = zs_evidence(t)
    verdict = (f"no clear difference from {label}" if not t["significant"]
               else f"{'above' if t['diff'] > 0 else 'below'} {label}")
    return head + f"{signed(t['diff'])}{ci} ({evidence}) — **{verdict}**{provisional}"


def answer_zeroshot(rows: list[dict], s: ReportSettings) -> list[str]:
    out = []
    for row in rows:
        m = row.get("metric") or s.metrics[0]  # choice: hr@1 (tcf.experiments.rescore.zs_metric)
        own = metric_mean(row["metrics"], m)
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


def _save_figure(plt, fig, path: Path, title: str, *, legend_from=None, ncol: int = 4) -> bool:
    """Title, an optional shared legend under the axes, save, close.  The legend takes as many columns (at most
    ``ncol``) as its longest label leaves room for across the figure, and the figure grows by its rows, so no
    label is cut at the edge and the axes keep their height."""
    rect = (0, 0, 1, 1)
    if legend_from is not None:
        handles, labels = legend_from.get_legend_handles_labels()
        width, height = fig.get_size_inches()
        fits = int(width * 72 / (4.8 * (max(map(len, labels)) + 8)))  # 8-pt text: about 4.8 pt a character
        cols = max(1, min(ncol, len(labels), fits))
        extra = 0.25 + 0.19 * -(-len(labels) // cols)  # inches: one 8-pt row and its spacing each
        fig.set_size_inches(width, height + extra)
        fig.legend(handles, labels, loc="lower center", ncol=cols, fontsize=8, frameon=False)
        rect = (0, extra / (height + extra), 1, 1)
    fig.suptitle(title)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def seeds_note(seeds: int, planned: int | None) -> str:
    """" (1 of 3 seeds)" for a plotted group on fewer seeds than the plan has: its interval then leaves out the
    seed noise of the missing seeds, as its verdicts are provisional ("" otherwise, or without a plan)."""
    return f" ({seeds} of {planned} seeds)" if planned and seeds < planned else ""


def plot_scaling(groups: list[Group], s: ReportSettings, path: Path, title: str,
                 planned_seeds: int | None = None) -> bool:
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
            cut, on = on_common_seeds(pts)  # the seeds every size has, as the size answer's text uses
            stats = [g.stat(metric, s.split) for g in cut]
            keep = [(p, st) for (p, _, _), st in zip(pts, stats) if st is not None]
            err = np.array([_err(st) for _, st in keep]).T
            post = is_post_hoc(pts[0][2], s)  # hollow markers: not among the planned answers' towers
            ax.errorbar([p for p, _ in keep], [st.mean for _, st in keep], yerr=err, ls=ls, marker=marker,
                        capsize=3, color=color[r.head],
                        label=label + on + seeds_note(min(len(g.seeds) for g in cut), planned_seeds)
                        + (" (post hoc)" if post else ""),
                        **({"markerfacecolor": "white", "markersize": 7} if post else {}))
        for head, c in color.items():
            base = select([g for g in planned_groups(groups, s)  # as the answers select: never a post-hoc run
                           if g.first.head == head and g.first.tower == "id"], s.metrics[0])
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
    return _save_figure(plt, fig, path, title, legend_from=axes[0][0], ncol=4)


def plot_towers(groups: list[Group], s: ReportSettings, path: Path, title: str,
                planned_seeds: int | None = None) -> bool:
    heads = [h for h in sorted({g.first.head for g in groups})
             if len({g.first.tower for g in groups if g.first.head == h}) >= 2]
    if not heads:
        return False
    plt = _plt()
    colors = dict(zip(TOWER_ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    rows = {h: sorted([g for g in groups if g.first.head == h], key=order_key) for h in heads}

    def name(g: Group) -> str:
        return (group_label(g, False) + (f" [{extra_settings(g)}]" if extra_settings(g) else "")
                + seeds_note(len(g.seeds), planned_seeds) + (" (post hoc)" if is_post_hoc(g, s) else ""))

    height = max(2.2, 0.42 * max(len(v) for v in rows.values()) + 1.3)
    labels = 0.3 + 4.8 / 72 * max(len(name(g)) for g in groups)  # inches of 8-pt tick labels, left column only
    fig, axes = plt.subplots(len(heads), len(s.metrics), figsize=(4.6 * len(s.metrics) + labels, height * len(heads)),
                             squeeze=False)
    for i, head in enumerate(heads):
        first = None
        for ax, metric in zip(axes[i], s.metrics):
            gs = [g for g in rows[head] if g.stat(metric, s.split) is not None]
            first, same = first or gs, gs == first  # a column with the first one's rows leaves its labels to it
            stats = [g.stat(metric, s.split) for g in gs]
            err = np.array([_err(st) for st in stats]).T
            bars = ax.barh(range(len(gs)), [st.mean for st in stats], xerr=err, capsize=3,
                           color=[colors.get(g.first.tower, "0.5") for g in gs])
            for bar, g in zip(bars, gs):
                if is_post_hoc(g, s):  # hatched: not among the planned answers' towers
                    bar.set(hatch="//", edgecolor="white", alpha=0.75)
            ax.set_yticks(range(len(gs)), [""] * len(gs) if same else [name(g) for g in gs], fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(f"{s.split} {metric.upper()} (mean, 95% CI)")
            ax.set_title(f"{HEAD_NAMES.get(head, head)}: {metric.upper()} by item tower")
            ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(plt, fig, path, title)


def plot_zeroshot(rows: list[dict], s: ReportSettings, path: Path, title: str) -> bool:
    rows = [r for r in rows if metric_mean(r["metrics"], s.metrics[0]) is not None]
    if not rows:
        return False
    plt = _plt()
    names = ["zero-shot LLM"] + sorted({n for r in rows for n in r["baselines"]}, key=lambda n: (n.startswith("t"), n))
    height = 1.0 + 0.28 * len(names) * len(rows)
    # a row tested on another metric (choice: hr@1, tcf.experiments.rescore.zs_metric) gets that panel too
    metrics = [*s.metrics, *sorted({r["metric"] for r in rows if r.get("metric") and r["metric"] not in s.metrics})]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), height + 1.0), squeeze=False)
    width = 0.8 / len(names)
    for ax, metric in zip(axes[0], metrics):
        for j, name in enumerate(names):
            vals = [metric_mean(r["metrics"] if j == 0 else r["baselines"].get(name, {}), metric) for r in rows]
            bars = ax.barh(np.arange(len(rows)) + j * width, [v or 0.0 for v in vals], height=width * 0.92,
                           label=name)
            ax.bar_label(bars, [("—" if v is None else f"{v:.3f}") for v in vals], padding=2, fontsize=7)
        labels = [f"{r['model']} · {r['protocol']}" + (f"\n{r['n_users']} users" if r.get("n_users") else "")
                  + (f"\nformat followed: {r['compliance']:.0%}" if r["compliance"] is not None else "")
                  for r in rows]
        ax.set_yticks(np.arange(len(rows)) + width * (len(names) - 1) / 2, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.12 * max(1e-9, *[metric_mean(r["metrics"], metric) or 0 for r in rows],
                                  *[metric_mean(b, metric) or 0 for r in rows for b in r["baselines"].values()]))
        ax.set_xlabel(f"{metric.upper()} on {s.split}, ranking each user's candidate list")
        ax.set_title(f"Zero-shot {metric.upper()} vs baselines on the same candidates")
        ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(plt, fig, path, title, legend_from=axes[0][0], ncol=5)


# ---------------------------------------------------------------- markdown

def _find_item(texts: list[str], query: str) -> int | None:
    """The item whose text is ``query`` (case-folded), else the first whose text contains it."""
    q = query.casefold()
    exact = [i for i, t in enumerate(texts) if i and t.casefold() == q]
    return exact[0] if exact else next((i for i, t in enumerate(texts) if i and q in t.casefold()), None)


def neighbor_table(groups: list[Group], s: ReportSettings) -> list[str]:
    """Nearest items (cosine, exact FAISS index over each pooled cache the runs used) of a few named items:
    a look at what each encoder considers similar, next to what the recommenders learned from it.  Rows are
    stored under the first run of each cache (derived/neighbors.json) for when the cache is gone."""
    caches: dict[str, list[RunResult]] = {}
    for g in groups:
        info = g.first.record.section("text_cache", {})
        if info.get("cache"):
            caches.setdefault(info["cache"], []).append(g.first)
    rows = []
    for path, runs in caches.items():
        key = {"cache": Path(path).name, "queries": list(s.neighbors), "k": s.neighbors_k}
        if Path(path).is_dir():
            rows += derived(runs[0].folder, "neighbors", key, lambda p=path, r=runs[0]: _neighbors(Path(p), r, s))
        else:  # stored under whichever run of this cache was first when the cache was here
            rows += next((v for v in (derived(r.folder, "neighbors", key, None) for r in runs) if v is not None), [])
    if not rows:
        return []
    return ["| item | encoder | nearest items (cosine, exact FAISS index) |", "|---|---|---|", *rows]


def _neighbors(path: Path, run: RunResult, s: ReportSettings) -> list[str]:
    from tcf.data import load_dataset
    from tcf.encoders.cache import read_entry
    from tcf.encoders.index import cached_index

    entry = read_entry(path)
    if entry.key.get("kind") != "pooled":
        return []
    texts = load_dataset(run.record.dataset["path"]).item_texts(entry.key["template"])
    index = cached_index(entry)
    rows = []
    for query in s.neighbors:
        item = _find_item(texts, query)
        if item is None:
            continue
        _, ids = index.search(np.asarray(entry.vectors[item], dtype=np.float32), s.neighbors_k, exclude=[item])
        names = "; ".join(texts[i] for i in ids[0] if i > 0)
        rows.append(f"| {texts[item]} | {run.encoder} | {names} |")
    return rows


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
    for g in sorted(groups, key=order_key):
        r = g.first
        stats = [g.stat(m, s.split) for m in s.metrics]
        cold = g.slice_mean("cold", s.metrics[0], s.split)
        cells = [HEAD_NAMES.get(r.head, r.head), TOWER_NAMES.get(r.tower, r.tower), r.encoder or "—",
                 params_text(r.encoder_parameters), str(len(g.runs)),
                 *[st.text() if st else "—" for st in stats],
                 "—" if cold is None else f"{cold:.4f} (n={r.slice_users('cold', s.split)})",
                 *([_non_repeat(g, s)] if repeats else []),
                 extra_settings(g) or "",
                 ", ".join(f"`{x.folder.name}`" for x in g.runs[:3]) + (" …" if len(g.runs) > 3 else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def zeroshot_table(rows: list[dict], s: ReportSettings) -> list[str]:
    """One row per zero-shot run; hr@1 beside the headline metric for the model and every baseline, since with
    a short candidate list (``choice``: 1 of 4) hr@10 is 1 by construction and hr@1 is what was asked."""
    names = sorted({n for r in rows for n in r["baselines"]})
    notes = any(r.get("notes") for r in rows)
    firsts = [] if "hr@1" in s.metrics else ["hr@1"]
    cols = ["model", "protocol", *[f"{s.split} {m}" for m in [*s.metrics, *firsts]],
            *[f"{n} {m}" for n in names for m in [s.metrics[0], *firsts]],
            "format compliance", *(["notes"] if notes else [])]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [metric_mean(r["metrics"], m) for m in [*s.metrics, *firsts]] + \
            [metric_mean(r["baselines"].get(n, {}), m) for n in names for m in [s.metrics[0], *firsts]]
        cells = [r["model"], str(r["protocol"]), *["—" if v is None else f"{v:.4f}" for v in vals],
                 "—" if r["compliance"] is None else f"{r['compliance']:.1%}"]
        cells += ["; ".join(r.get("notes", []))] if notes else []  # e.g. a trained baseline left out, and why
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(title, runs_dir, plan, trained, zs, failed, figures, found, s, controls=()) -> list[str]:
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
    computed = diagnostics(trained, s.metrics[0], s.split, found, s,  # measured on these runs: never stale
                           zeroshot=[row["run"] for row in zs if row.get("run") is not None])
    if s.caveats or computed:
        md += ["Read the answers with these limits of the design:", "",
               *[f"- {c.strip()}" for c in [*s.caveats, *computed]], ""]
    answers = finding_answers(found, s)
    answers.append(("How far is zero-shot prompting from trained models?", answer_zeroshot(zs, s)))
    md += answer_lines(answers)
    md += list(controls)
    if s.papers:
        from tcf.experiments.papers import against_papers

        md += ["## Against the papers", "", *against_papers(found, zs, s, trained), ""]
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


def answer_lines(answers: list[tuple[str, list[str]]]) -> list[str]:
    return [x for question, lines in answers for x in (f"**{question}**", "", *[f"- {line}" for line in lines], "")]


def finding_answers(found: list[Finding], s: ReportSettings) -> list[tuple[str, list[str]]]:
    """(question, its lines) for the trained-model questions: every finding of it, or what is said without."""
    out = []
    for key, (question, empty) in QUESTIONS.items():
        lines = [f.line(s) for f in found if f.question == key or f.question.startswith(f"{key} (")]
        if lines or key not in OPTIONAL_QUESTIONS:
            out.append((question, lines or [empty]))
    return out


FOREIGN_SHOWN = 10  # runs named in the "not in this experiment" line


def run_accounting(plan: dict, trained, zs, failed, foreign: list[str]) -> list[str]:
    """Failed runs with their error.txt, planned runs not yet run, and runs found here that the experiment
    does not list (left out of every table and comparison)."""
    md = []
    if failed:
        ids = planned_ids(plan)
        head = f"{len(failed)} planned run(s) failed:" if ids is not None else "These runs failed:"
        md += ["## Failed runs", "", head, "",
               *[f"- `{p.name}`: {reason}" + (f" (see `{p / 'error.txt'}`)" if (p / "error.txt").is_file() else "")
                 for p, reason in failed], ""]
    done = {r.folder.name for g in trained for r in g.runs} | {r["run"].folder.name for r in zs}
    done |= {p.name for p, _ in failed}
    ids = planned_ids(plan)
    if ids is not None:
        missing = [i for i in ids if i not in done]
        if missing:
            md += [f"{len(missing)} planned run(s) have no results yet: " + ", ".join(f"`{i}`" for i in missing) + ".",
                   ""]
    elif plan.get("runs") and len(plan["runs"]) > len(done):
        md += [f"{len(plan['runs']) - len(done)} planned run(s) have no results yet.", ""]
    if foreign:
        shown = ", ".join(f"`{name}`" for name in foreign[:FOREIGN_SHOWN])
        extra = len(foreign) - FOREIGN_SHOWN
        more = f" and {extra} more (report.json lists them)" if extra > 0 else ""
        md += ["Not in this experiment (found under this folder, not listed in experiment.json; left out of every "
               f"table and comparison): {shown}{more}.", ""]
    return md
