"""One zero-shot run: candidates -> prompts -> (cache | backend) -> parse -> metrics vs Pop and random.

Writes ``OUT/results.json`` (the trained runs' layout: ``metrics[split]`` with means and
95% CIs, plus baselines on the same candidates, compliance rates, resolved config,
provenance, token counts, timings), ``OUT/samples.jsonl`` (one record per prompt) and
``OUT/per_user_SPLIT.npy`` (for paired tests).  Replies are cached as they arrive, so
an interrupted run resumes where it stopped.

A run whose backend gave no reply (connection refused, retries spent, a model that raised)
for more than ``zeroshot.max_backend_error_rate`` of its prompts measures the outage,
not the model: its files are still written, ``results.json`` with ``"valid": false`` and
the reason (the results readers leave such runs out of every table), and
:class:`BackendFailed` is raised so the command exits non-zero.  Once the failures pass
that share no more prompts are sent; the replies received stay cached, so the rerun
asks only for the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from tcf.eval.metrics import metrics_from_scores, paired_test, summarize
from tcf.fsutil import atomic_write_text
from tcf.provenance import peak_memory, provenance, reset_peak_rss
from tcf.run.results import RunRecord, dataset_section, write_results
from tcf.zeroshot.backend import BackendFailed, GenParams, Reply, backend_where, build_backend, identity_for
from tcf.zeroshot.cache import ResponseCache, cache_key, cacheable
from tcf.zeroshot.candidates import load_or_build
from tcf.zeroshot.parsing import Parsed, parse
from tcf.zeroshot.prompts import PromptTemplate, messages

log = logging.getLogger(__name__)
CHUNK = 64  # prompts handed to the backend per call (the cache is written within each call too)


def build_prompts(cfg, dataset, data, cands) -> list[dict]:
    """One job per (user, bootstrap round): the rendered user message and its chat messages."""
    z = cfg.zeroshot
    texts = dataset.item_texts(cfg.data.template)
    template = PromptTemplate.named(z.prompt or z.protocol)
    jobs = []
    for row, u in enumerate(cands.users):
        history = data.history(u, z.split)[-z.history_len:]
        for b in range(cands.lists.shape[1]):
            items = cands.lists[row, b]
            user = template.render(history=[texts[i] for i in history], candidates=[texts[i] for i in items],
                                   k=z.top_k, source=dataset.meta.get("source"))
            jobs.append({"row": row, "round": b, "items": items, "texts": [texts[i] for i in items], "prompt": user,
                         "messages": messages(user, z.system_prompt)})
    return jobs


def answer(jobs, z, params: GenParams, backend, cache, progress: bool) -> tuple[list[Reply], dict]:
    """Replies for every job: cached ones read, the rest generated (and cached as they arrive)."""
    identity = backend.identity if backend is not None else identity_for(z)
    keys = [cache_key(z.backend, identity, j["messages"], params.as_dict()) for j in jobs]
    for j, k in zip(jobs, keys):
        j["key"] = k
    hits = cache.get_many(keys) if cache is not None else {}
    replies: list[Reply | None] = [Reply(h["text"], h["prompt_tokens"] or 0, h["completion_tokens"] or 0)
                                   if (h := hits.get(k)) else None for k in keys]
    misses = [i for i, r in enumerate(replies) if r is None]
    stats = {"identity": identity, "cache_hits": len(jobs) - len(misses), "calls": 0, "generate_seconds": 0.0}
    if not misses:
        return replies, stats
    if backend is not None:
        return _generate_misses(z, jobs, keys, replies, misses, params, cache, backend, stats, progress)
    backend = build_backend(z)
    try:  # a backend built here is closed here: vLLM's engine processes outlive a dropped LLM
        return _generate_misses(z, jobs, keys, replies, misses, params, cache, backend, stats, progress)
    finally:
        backend.close()


def _generate_misses(z, jobs, keys, replies, misses, params, cache, backend, stats, progress):
    """Generate the replies not in the cache, in chunks, caching each as it arrives; stop early when the
    backend has failed more prompts than zeroshot.max_backend_error_rate allows."""
    identity = stats["identity"]
    stats["identity"] = backend.identity
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(misses), unit="prompt", desc=f"zeroshot {z.protocol}", dynamic_ncols=True)
    calls_before = backend.calls
    t0 = time.perf_counter()
    allowed = z.max_backend_error_rate * len(jobs)
    for start in range(0, len(misses), CHUNK):
        failed = sum(1 for r in replies if r is not None and r.error)
        if failed > allowed:  # the run is invalid whatever the rest answers: stop asking a dead backend
            for i in misses[start:]:
                replies[i] = Reply(None, error=f"not sent: {failed} prompts had already failed, more than "
                                               "zeroshot.max_backend_error_rate allows")
            break
        chunk = misses[start:start + CHUNK]

        def on_reply(i: int, reply: Reply, chunk=chunk) -> None:
            job = chunk[i]
            replies[job] = reply
            if cache is not None and reply.text is not None:
                cache.put(keys[job], z.backend, identity, reply.text, reply.prompt_tokens, reply.completion_tokens)
            if bar is not None:
                bar.update(1)

        try:
            backend.generate([jobs[i]["messages"] for i in chunk], params, on_reply)
        except Exception as e:  # noqa: BLE001 - local backends fail by raising (CUDA errors, a dead worker)
            log.warning("zeroshot backend %s raised; the %d prompts of this chunk without a reply count as "
                        "backend errors", backend.name, sum(replies[i] is None for i in chunk), exc_info=True)
            for i in chunk:
                replies[i] = replies[i] or Reply(None, error=f"{type(e).__name__}: {e}")
    if bar is not None:
        bar.close()
    stats.update(calls=backend.calls - calls_before, generate_seconds=time.perf_counter() - t0,
                 retries=getattr(backend, "stats", {}).get("retries", 0), backend=backend.name)
    return replies, stats


def backend_failure(z, replies: list[Reply], backend: str) -> str | None:
    """Why the run is invalid, in one line (backend, where, how many, the first error), or None when the
    backend failed for no more than ``max_backend_error_rate`` of the prompts.  Unreadable replies are the
    model's answers and never count here."""
    errors = [r.error for r in replies if r.error]
    if len(errors) <= z.max_backend_error_rate * len(replies):
        return None
    first = " ".join(errors[0].split())[:300]
    return (f"zeroshot backend {backend} ({backend_where(z)}) failed for {len(errors)} of {len(replies)} prompts "
            f"({len(errors) / len(replies):.0%}, more than zeroshot.max_backend_error_rate "
            f"{z.max_backend_error_rate:.0%}); first error: {first}")


def order_scores(parsed: Parsed, n: int, unranked: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Borda points over the presented slots (higher = better): n for the reply's first, n - 1 for its second...

    The candidates the reply left unranked (all of them when it failed) share the points left, 1..n-m:
    ``tie`` gives each their mean, (n - m + 1) / 2, a tie below every ranked candidate, so the metrics
    are their exact expectation under a random order of the unranked ones (the tie-aware metrics compute
    it) and a failed reply scores the random baseline wherever the prompt put the target.  That holds for
    one round only: with bootstrap > 1 ``score_users`` sums these (expected) points over the rounds and the
    metrics are computed on the ranking of the sums, a Borda consensus.  That is neither the mean of the
    rounds' metrics nor the expected metric under random orders of the unranked candidates (a metric of
    summed expected points is not the expectation of the metric); only the candidates that no round ranked
    stay tied with one another, and only that tie is averaged exactly.
    ``shuffle`` draws one random order of them (``rng``), ``order`` keeps their presented order: that
    scores where the prompt put the target, not the model (a failed reply with the target pinned first
    gets HR@1 = 1), so it is an explicit opt-in for reproducing work that did it.
    """
    scores = np.zeros(n)
    ranked = set(parsed.ranking)
    rest = [i for i in range(n) if i not in ranked]
    for rank, pos in enumerate(parsed.ranking):
        scores[pos] = n - rank
    if unranked == "tie":
        scores[rest] = (n - len(parsed.ranking) + 1) / 2
        return scores
    tail = rest if unranked == "order" else rng.permutation(rest).tolist()
    for rank, pos in enumerate(tail, start=len(parsed.ranking)):
        scores[pos] = n - rank
    return scores


def score_users(jobs, parsed, cands, unranked: str, seed: int = 0) -> np.ndarray:
    """Borda aggregation over bootstrap rounds, aligned with round 0's order: [U, N], the sum of each round's
    ``order_scores``.  With bootstrap > 1 the metrics computed on these sums are those of the consensus
    ranking, not the mean of per-round metrics and not an expected metric: a candidate ranked in some rounds
    and left unranked (tied, at its expected points) in others is simply placed by its summed points.
    ``shuffle`` draws each prompt's tail order from (seed, user, round), so it does not depend on which
    users are run."""
    n_users, _, n = cands.lists.shape
    scores = np.zeros((n_users, n))
    for job, p in zip(jobs, parsed):
        rng = np.random.default_rng([seed, int(cands.users[job["row"]]), job["round"]])
        s = order_scores(p, n, unranked, rng)
        by_item = dict(zip(job["items"].tolist(), s))
        scores[job["row"]] += [by_item[i] for i in cands.lists[job["row"], 0].tolist()]
    return scores


def compliance(parsed: list[Parsed], replies: list[Reply]) -> dict:
    status = Counter(p.status for p in parsed)
    total = max(len(parsed), 1)
    return {"n_prompts": len(parsed), "valid": status["valid"] / total, "partial": status["partial"] / total,
            "failed": status["failed"] / total, "counts": dict(status),
            "methods": dict(Counter(p.method for p in parsed)),
            "backend_errors": sum(1 for r in replies if r.error),
            "invalid_entries": sum(p.n_invalid for p in parsed), "duplicates": sum(p.n_duplicates for p in parsed)}


def score_run(cfg, data, cands, jobs, parsed, replies) -> tuple[dict, dict]:
    """-> (the metrics section: the model's, Pop's and random's on the same candidate lists, with the parse
    compliance; the model's per-user metrics)."""
    z = cfg.zeroshot
    target_col = cands.target_pos[:, 0]
    ks = tuple(sorted(set(z.ks)))
    per_user = metrics_from_scores(score_users(jobs, parsed, cands, z.unranked, cfg.seed), target_col, ks=ks)
    pop = metrics_from_scores(data.train_counts[cands.lists[:, 0]].astype(np.float64), target_col, ks=ks)
    rand = metrics_from_scores(np.zeros(cands.lists[:, 0].shape), target_col, ks=ks)
    ci = cfg.eval.bootstrap > 0
    metrics = {z.split: {
        "n_users": len(cands.users), "metrics": summarize(per_user, ci=ci, n=cfg.eval.bootstrap, seed=cfg.seed),
        "baselines": {"pop": {"metrics": summarize(pop, ci=ci, n=cfg.eval.bootstrap, seed=cfg.seed)},
                      "random": {"metrics": summarize(rand, ci=False), "note": "exact expectation"}},
        "vs_pop": {m: paired_test(per_user[m], pop[m], seed=cfg.seed) for m in ("hr@1", "ndcg@10") if m in per_user},
        "compliance": compliance(parsed, replies)}}
    return metrics, per_user


def run_zeroshot(cfg, out, *, progress: bool = True, backend=None) -> dict:
    """Run ``cfg`` (``task: zeroshot``) into ``out``; returns the results dict written to ``out/results.json``.

    ``backend`` replaces the configured one (tests); it is built only when some prompt
    is not in the cache, so a warm rerun loads no model and makes no call.
    """
    from tcf.data import dataset_for
    from tcf.run.config import resolved
    from tcf.run.seqdata import SeqData

    reset_peak_rss()  # this run's peak, not an earlier run's in the same sweep process
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    z = cfg.zeroshot
    dataset = dataset_for(cfg.data)
    data = SeqData(dataset)
    cands, cand_path = load_or_build(cfg, dataset, data)
    jobs = build_prompts(cfg, dataset, data, cands)
    params = GenParams(z.temperature, z.top_p, z.new_tokens(), z.gen_seed)
    cache_path = Path(z.cache_path or Path(cfg.cache_root) / "zeroshot" / "responses.sqlite")
    cache = ResponseCache(cache_path) if z.use_cache and cacheable(params.as_dict()) else None
    try:
        replies, stats = answer(jobs, z, params, backend, cache, progress)
    finally:
        if cache is not None:
            cache.close()
    parsed = [parse(r.text, j["texts"], z.protocol, k=z.top_k, prompt=j["prompt"]) for j, r in zip(jobs, replies)]
    metrics, per_user = score_run(cfg, data, cands, jobs, parsed, replies)
    split = z.split
    n_tok_p = [r.prompt_tokens for r in replies]
    n_tok_c = [r.completion_tokens for r in replies]
    gen_s = stats["generate_seconds"]
    invalid = backend_failure(z, replies, stats.get("backend", z.backend))
    record = RunRecord(
        task="zeroshot", name=cfg.name, config=resolved(cfg), metrics=metrics, dataset=dataset_section(data),
        seeds={"run": cfg.seed, "candidates": cfg.seed, "generation": z.gen_seed},
        timings={"generate_seconds": gen_s, "prompts_per_s": stats["calls"] / gen_s if gen_s > 0 else None,
                 "wall_seconds": time.perf_counter() - t_start, **peak_memory()},
        per_user_columns=["user_id", *sorted(per_user)], provenance=provenance(),
        valid=not invalid, invalid_reason=invalid or None,  # first in the file, where a reader sees it
        sections={
            "candidates": {"path": str(cand_path), "key": cands.key, "n_users": len(cands.users),
                           "n_candidates": int(cands.lists.shape[2]), "bootstrap": int(cands.lists.shape[1])},
            "backend": {"name": z.backend, "identity": stats["identity"], "calls": stats["calls"],
                        "cache_hits": stats["cache_hits"], "retries": stats.get("retries", 0),
                        "cache_path": str(cache_path) if cache is not None else None,
                        "generation": params.as_dict()},
            "tokens": {"prompt_total": int(sum(n_tok_p)), "completion_total": int(sum(n_tok_c)),
                       "prompt_mean": float(np.mean(n_tok_p)) if n_tok_p else 0.0,
                       "completion_mean": float(np.mean(n_tok_c)) if n_tok_c else 0.0}})
    write_samples(out / "samples.jsonl", jobs, replies, parsed, cands, per_user)
    np.save(out / f"per_user_{split}.npy", np.stack([cands.users, *[per_user[k] for k in sorted(per_user)]]))
    write_results(out, record)
    if invalid:
        raise BackendFailed(f"{invalid}; {out / 'results.json'} is marked invalid, and the replies received are "
                            "cached: a rerun asks only for the rest")
    return record.to_dict()


def write_samples(path: Path, jobs, replies, parsed, cands, per_user) -> None:
    lines = []
    for j, r, p in zip(jobs, replies, parsed):
        row = j["row"]
        lines.append(json.dumps({
            "user": int(cands.users[row]), "round": j["round"], "candidates": j["items"].tolist(),
            "target": int(cands.targets[row]), "target_position": int(cands.target_pos[row, j["round"]]),
            "prompt_hash": j["key"], "prompt": j["prompt"], "reply": r.text, "error": r.error,
            "ranking": [int(j["items"][i]) for i in p.ranking], "parse_status": p.status, "parse_method": p.method,
            "invalid_entries": p.n_invalid, "duplicates": p.n_duplicates,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "metrics": {k: float(v[row]) for k, v in per_user.items()}}, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
