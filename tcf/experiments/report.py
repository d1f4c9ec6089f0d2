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

This module reads the runs (only those ``experiment.json`` lists, when there is one) and writes
``report.md`` and ``report.json``; the work is done by :mod:`~tcf.experiments.stats` (which test
compares two groups), :mod:`~tcf.experiments.answers` (what each answer compares),
:mod:`~tcf.experiments.rescore` (zero-shot runs against baselines re-scored on their candidate lists)
and :mod:`~tcf.experiments.render` (markdown and plots).  Their public names stay importable from here.
"""

from __future__ import annotations

import json
from pathlib import Path

from tcf.config import from_dict
from tcf.experiments.answers import (  # noqa: F401 - names code and tests import from tcf.experiments.report
    HEAD_NAMES,
    POST_HOC,
    POST_HOC_QUESTIONS,
    QUESTIONS,
    SELECT_SPLIT,
    TOWER_NAMES,
    TUNED,
    Finding,
    ReportSettings,
    check_post_hoc,
    findings,
    group_label,
    is_post_hoc,
    labelled,
    method_note,
    order_key,
    params_text,
    planned_groups,
    post_hoc_findings,
    post_hoc_marks,
    scaling_series,
    seeds_planned,
    untwinned,
)
from tcf.experiments.diagnostics import (
    annotate,
    one_family_line,
    own_noise_line,
    own_noise_record,
    zero_noise_line,
    zero_noise_record,
)
from tcf.experiments.render import (  # noqa: F401
    answer_lines,
    answer_zeroshot,
    finding_answers,
    markdown,
    neighbor_table,
    plot_scaling,
    plot_towers,
    plot_zeroshot,
    run_accounting,
    table,
    zeroshot_table,
)
from tcf.experiments.rescore import (  # noqa: F401
    hard_run_of,
    is_hard_run,
    metric_mean,
    score_on_candidates,
    trained_on_candidates,
    zeroshot_rows,
    zeroshot_tests,
)
from tcf.experiments.results import Group, RunResult, Stat, group_runs, load_runs, planned_ids
from tcf.experiments.stats import PAIRED, WELCH, Z_FROM_CI, Comparison, compare, holm_family  # noqa: F401
from tcf.experiments.sweep import LEDGER, ledger_notes, ledger_since, ledger_time
from tcf.fsutil import atomic_write_text


def write_report(runs_dir: str | Path, out: str | Path | None = None, settings: ReportSettings | dict | None = None
                 ) -> Path:
    """Aggregate every run under ``runs_dir`` into ``out`` (default RUNS_DIR/report); -> the markdown file."""
    runs_dir = Path(runs_dir)
    out = Path(out) if out else runs_dir / "report"
    plan = _plan(runs_dir)
    if settings is None or isinstance(settings, dict):
        settings = from_dict(ReportSettings, {**(plan.get("report") or {}), **(settings or {})}, "report")
    s = settings
    check_post_hoc(s, [r.get("config") or {} for r in plan.get("runs") or [] if isinstance(r, dict)])
    runs, failed = load_runs(runs_dir)
    runs = [r for r in runs if out not in r.folder.parents and r.folder != out]
    runs, failed, foreign = _in_plan(plan, runs, failed)
    trained = group_runs([r for r in runs if r.task == "train"])
    planned = planned_seeds(plan)
    zs = zeroshot_rows(runs, planned_groups(trained, s), s, planned)
    title = s.title or f"{plan.get('name') or runs_dir.name}: {len(runs)} run(s)"
    out.mkdir(parents=True, exist_ok=True)
    seeds = {"planned_seeds": seeds_planned(planned, planned_groups(trained, s))}  # as the verdicts: fewer marked
    figures = {name: fn(data, s, out / f"{name}.png", title, **kw) if data else False
               for name, fn, data, kw in (("scaling", plot_scaling, trained, seeds),
                                          ("towers", plot_towers, trained, seeds), ("zeroshot", plot_zeroshot, zs, {}))}
    found = findings(planned_groups(trained, s), s, planned)  # every test once (answers, report.json)
    post = post_hoc_findings(trained, s, planned)
    for x in (found, post):
        annotate(x, trained, s)  # stopping notes read every run, report.post_hoc's too
    controls, control_records = _controls(s)
    spent = {**cost(runs), **({"ledger": ledger} if (ledger := ledger_time(runs_dir, to_last_done=True)) else {})}
    md = markdown(title, runs_dir, plan, trained, zs, failed, figures, found, s,
                  [*post_hoc_lines(post, trained, s, found), *controls])
    md[md.index("## Answers"):md.index("## Answers")] = [cost_line(spent), ""]
    md += run_accounting(plan, trained, zs, failed, foreign)
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    summary = {**_summary(trained, zs, found, s), **({"not_in_experiment": foreign} if foreign else {}),
               **({"controls": control_records} if control_records else {}),
               **_zero_noise_json(found, s),
               **({"post_hoc": {"settings": s.post_hoc, "comparisons": [f.record(s) for f in post],
                                **_zero_noise_json(post, s, found)}} if s.post_hoc else {}),
               "cost": spent}
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, default=float) + "\n")
    return out / "report.md"


def cost(runs: list[RunResult]) -> dict:
    """What the finished runs cost, from their records: training seconds (epochs, accumulated over resumed
    sittings), generation seconds (zero-shot), and the largest peak memory of one run (records with
    ``peak_rss_scope: run``, counted from the start of the run's last sitting) apart from the older records' peak
    of their process so far (a sweep process runs many runs: a run's or an earlier one's).  A run whose last
    sitting's wall clock is shorter than its accumulated training time was resumed: its peak and wall clock cover
    the last sitting only, so wall clock is summed over the runs never resumed alone."""
    t = [r.record.timings for r in runs]

    def resumed(x: dict) -> bool:
        return (x.get("wall_seconds") is not None and (x.get("train_seconds") or 0.0) > 0
                and x["wall_seconds"] < x["train_seconds"])

    own = [x for x in t if x.get("peak_rss_mb") is not None and x.get("peak_rss_scope") == "run"]
    old = [x["peak_rss_mb"] for x in t if x.get("peak_rss_mb") is not None and x.get("peak_rss_scope") != "run"]
    start = [x["start_rss_mb"] for x in own if x.get("start_rss_mb") is not None]
    whole = [x for x in t if not resumed(x)]
    return {"runs": len(runs), "train_seconds": sum(x.get("train_seconds") or 0.0 for x in t),
            "generate_seconds": sum(x.get("generate_seconds") or 0.0 for x in t),
            "resumed": sum(map(resumed, t)),
            "wall_seconds_not_resumed": sum(x.get("wall_seconds") or 0.0 for x in whole),
            "runs_not_resumed": len(whole),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in own) if own else None, "runs_with_peak": len(own),
            "runs_with_peak_resumed": sum(map(resumed, own)),
            "start_rss_mb": max(start, default=None), "runs_with_start_rss": len(start),
            "process_peak_rss_mb": max(old) if old else None, "runs_with_process_peak": len(old),
            "runs_without_peak": len(runs) - len(own) - len(old)}


def cost_line(c: dict) -> str:
    if not c["runs"]:
        return "Cost: no finished runs yet."
    parts = []
    if c.get("peak_rss_mb") is not None:
        held = (f"; a run's peak includes what its process still held when it began, at most "
                f"{c['start_rss_mb'] / 1024:.2f} GiB on the {c['runs_with_start_rss']} records that give it"
                if c.get("start_rss_mb") is not None else "")
        again = (f", which for the {c['runs_with_peak_resumed']} of them that were resumed leaves their earlier "
                 "sittings out" if c.get("runs_with_peak_resumed") else "")
        parts.append(f"the largest peak memory of one run {c['peak_rss_mb'] / 1024:.2f} GiB (measured by "
                     f"{c['runs_with_peak']} of {c['runs']} runs from the start of their last sitting{again}{held})")
    if c.get("process_peak_rss_mb") is not None:
        parts.append(f"{c['runs_with_process_peak']} older records give their process's peak so far instead (a "
                     "sweep process runs many runs, so it may be an earlier run's), at most "
                     f"{c['process_peak_rss_mb'] / 1024:.2f} GiB")
    if parts and c.get("runs_without_peak"):
        parts.append(f"{c['runs_without_peak']} records give no peak")
    peak = ("; " + "; ".join(parts) + "; runs that ran side by side add up" if parts
            else "; peak memory not recorded by these runs")
    again = (f"; {c['resumed']} runs were resumed after a stop, their training time accumulated over sittings"
             if c.get("resumed") else "")
    return (f"Cost of the {c['runs']} finished runs, from their records: {c['train_seconds'] / 3600:.1f} h of "
            f"training epochs and {c['generate_seconds'] / 3600:.1f} h of zero-shot generation (summed over runs, "
            f"some of which ran side by side{again}); {c['wall_seconds_not_resumed'] / 3600:.1f} h of wall clock "
            f"summed over the {c['runs_not_resumed']} runs never resumed{peak}." + _ledger_sentence(c.get("ledger")))


def _ledger_sentence(spent: dict | None) -> str:
    """The study's wall time from the sweep's ledger (``sweep-log.jsonl``), where the sweep kept one."""
    if not spent or spent.get("since") is None:
        return ""
    return (f" Wall time from the sweep's ledger ({LEDGER}, on whichever machines its sittings ran; begun "
            f"{ledger_since(spent)}: the sittings "
            f"before then are not in it, though {spent['runs_done']} runs finished under it), up to the last run "
            f"that finished: {spent['hours']:.1f} h, "
            f"the union of {spent['sittings']} sittings over all processes"
            + "".join(f"; {n}" for n in ledger_notes(spent)) + ".")


def _controls(s: ReportSettings) -> tuple[list[str], list[dict]]:
    """``report.controls``: each positive control's trained-model answers (its own settings, runs and tests),
    as markdown under "Positive controls" and as records for report.json."""
    md, records = [], []
    for folder in map(Path, s.controls):
        if not folder.is_dir():
            md += [f"### `{folder}`", "", f"Not found: control folders are read from the directory `tcf report` runs "
                   f"in ({Path.cwd()}).", ""]
            records.append({"path": str(folder), "missing": True})
            continue
        plan = _plan(folder)
        cs = from_dict(ReportSettings, {**(plan.get("report") or {}), "controls": [], "papers": False}, "report")
        runs, failed = load_runs(folder)
        runs, failed, _ = _in_plan(plan, runs, failed)
        check_post_hoc(cs, [r.get("config") or {} for r in plan.get("runs") or [] if isinstance(r, dict)])
        trained = group_runs([r for r in runs if r.task == "train"])
        found = findings(planned_groups(trained, cs), cs, planned_seeds(plan))  # its own report answers its post hoc
        annotate(found, trained, cs)
        planned = len(planned_ids(plan) or [])
        done = f"{len(runs)} of {planned} planned runs finished" if planned else f"{len(runs)} runs"
        caveats = [*cs.caveats, *([z] if (z := zero_noise_line(found, cs.alpha)) else [])]
        md += [f"### {cs.title or plan.get('name') or folder.name}", "",
               f"`{folder}` ({done}; its own report: `{folder}/report/report.md`).", "",
               *([f"Its post-hoc runs ({', '.join(f'{k}={v}' for k, v in post_hoc_marks(cs).items())}) are left "
                  "out of the answers below, as in its own report, which answers them apart.", ""]
                 if post_hoc_marks(cs) else []),
               *(["Its caveats:", "", *[f"- {c.strip()}" for c in caveats], ""] if caveats else []),
               *answer_lines(finding_answers(found, cs))]
        records.append({"path": str(folder), "runs": len(runs), "planned": planned,
                        "comparisons": [f.record(cs) for f in found], **_zero_noise_json(found, cs)})
    return (["## Positive controls", "", *md] if md else []), records


def post_hoc_lines(post: list[Finding], trained: list[Group], s: ReportSettings,
                   found: list[Finding] = ()) -> list[str]:
    """The "Post-hoc runs" section: report.post_hoc's runs answered on their own ([] without the setting);
    ``found`` the planned answers' tests, whose seed-noise estimates its seed-noise-0 caveat chooses among too."""
    if not s.post_hoc:
        return []
    marks = ", ".join(f"{k}={v}" for k, v in post_hoc_marks(s).items())
    n = sum(len(g.runs) for g in trained if is_post_hoc(g, s))
    md = ["## Post-hoc runs", "",
          f"Runs with [{marks}] ({n} finished) were added to the plan after its runs had been seen (the caveats above "
          "say why). They are left out of the answers above (as candidates of their selections, from their seed-noise "
          "pools and Holm families) and answered here, each question its own Holm family, their seed noise pooled "
          f"among post-hoc runs only (pools named '…{POST_HOC}'), the planned side's among planned runs. Their tables' rows "
          "carry the same mark. A post-hoc run and its planned twin share their seed, data and code, but the test "
          "treats the two sides' seed effects as independent: where they go together this overstates the noise of "
          "the difference, so a twin line's 'no clear difference' is no evidence that the two train alike.", ""]
    groups = [g for g in trained if is_post_hoc(g, s)]
    lonely = untwinned(trained, s)
    left = {"post hoc vs frozen": [f"{labelled(g)}: not compared (no planned frozen run of its head and encoder "
                                   "with results to compare)" for g in groups if g.first.tower in TUNED
                                   and not any(f.a is g for f in post if f.question == "post hoc vs frozen")],
            "post hoc vs planned": [f"{labelled(g)}: " + ("no planned twin (no planned group has its settings but "
                                                          f"[{marks}])" if g in lonely else
                                                          "not compared (no results to compare with its twin's)")
                                    for g in groups
                                    if not any(f.a is g for f in post if f.question == "post hoc vs planned")]}
    for key, question in POST_HOC_QUESTIONS.items():
        lines = [f.line(s) for f in post if f.question == key] + left[key]
        md += [f"**{question}**", "", *[f"- {x}" for x in lines or ["none finished yet."]], ""]
    computed = [x for x in (zero_noise_line(post, s.alpha, found),  # the planned tests' caveats, on these tests
                            own_noise_line(post, s.metrics[0], s.split, s.alpha, "the post-hoc tests"),
                            one_family_line(post, s.alpha)) if x]
    return md + ([f"Computed caveat{'s' if len(computed) > 1 else ''} on these tests:", "",
                  *[f"- {x}" for x in computed], ""] if computed else [])


def _zero_noise_json(found: list[Finding], s: ReportSettings, also: list[Finding] = ()) -> dict:
    """report.json's ``seed_noise_zero`` and ``own_seed_noise``: the computed seed-noise caveats' redone tests (as
    report.md's caveat lines), each where it has any."""
    return {**({"seed_noise_zero": z} if (z := zero_noise_record(found, s.alpha, also)) else {}),
            **({"own_seed_noise": o} if (o := own_noise_record(found, s.metrics[0], s.split, s.alpha)) else {})}


def planned_seeds(plan: dict) -> int | None:
    """How many seeds experiment.json plans for its trained runs (a verdict on fewer is provisional); None
    without a plan."""
    configs = [r.get("config") or {} for r in plan.get("runs") or [] if isinstance(r, dict)]
    seeds = {str(c.get("seed")) for c in configs if c.get("task", "train") == "train" and "seed" in c}
    return len(seeds) or None


def _plan(runs_dir: Path) -> dict:
    path = runs_dir / "experiment.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _in_plan(plan: dict, runs: list[RunResult], failed: list) -> tuple[list, list, list[str]]:
    """Only the runs experiment.json lists (when there is one): -> (runs, failed runs, names of the others)."""
    ids = planned_ids(plan)
    if ids is None:
        return runs, failed, []
    keep = set(ids)
    foreign = sorted({r.folder.name for r in runs if r.folder.name not in keep}
                     | {p.name for p, _ in failed if p.name not in keep})
    return ([r for r in runs if r.folder.name in keep], [(p, why) for p, why in failed if p.name in keep], foreign)


def _summary(trained: list[Group], zs: list[dict], found: list[Finding], s: ReportSettings) -> dict:
    def stat(st: Stat | None):
        return None if st is None else {"mean": st.mean, "ci95": [st.lo, st.hi], "n_seeds": st.n, "over": st.over,
                                        "sd_seeds": st.sd_seeds}

    return {"split": s.split, "groups": [
        {"head": g.first.head, "tower": g.first.tower, "encoder": g.first.encoder,
         "encoder_parameters": g.first.encoder_parameters, "settings": g.settings, "seeds": g.seeds,
         "runs": [r.folder.name for r in g.runs], **{m: stat(g.stat(m, s.split)) for m in s.metrics},
         **({"post_hoc": True} if is_post_hoc(g, s) else {})}
        for g in sorted(trained, key=order_key)],
        "zeroshot": [{"model": r["model"], "protocol": r["protocol"], "compliance": r["compliance"],
                      **{m: metric_mean(r["metrics"], m) for m in s.metrics}, "tested_on": r.get("metric"),
                      "ci95": r.get("ci95"), "tests": r.get("tests", []),
                      "baselines": {n: metric_mean(b, r.get("metric") or s.metrics[0])
                                    for n, b in r["baselines"].items()},
                      "notes": r.get("notes", [])} for r in zs],
        "comparisons": [f.record(s) for f in found]}
