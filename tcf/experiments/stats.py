"""The report's statistics: which test compares two groups of runs, Holm families, the cold-item test.

A claim about two *configurations* must survive both sources of noise: which users were sampled, and
which seed trained the checkpoint (model: y_us = mu_c + a_u + b_cs + e_ucs).  Two groups evaluated on the
same users are compared by a t-test over users and seeds: the paired difference d_u of each user's value
(averaged over the group's seeds) gives the users' part of the variance, var(d)/U, which already holds
the user-by-seed interaction; the seeds' part is sigma_b^2/n per side, sigma_b^2 estimated from the spread
of seed means about their configuration's mean less the interaction's share (seed x user residual mean
square / U), pooled over the configurations of the same head *and tower kind* with two or more seeds
(seed noise differs by kind), else borrowed from the head's other towers and said so on the line; a
report's post-hoc runs (report.post_hoc) are a population of their own, pooled apart (``part_of``).
Student's t with Welch–Satterthwaite degrees of freedom (no test where the seed noise rests on under 3
seed deviations), and the 95% CI of the difference D +- t * se (unadjusted for multiplicity).  Seed
effects of two configurations are taken as independent although both use the same seed values (2020,
2021, ...): where a seed helps every configuration alike the test is conservative, where it helps one and
hurts another, liberal.  A paired test over users alone treats each checkpoint as fixed: on ml-100k it
called two seeds of one configuration different in 8 of 19 pairs.  Where one side's head has no 2-seed
configuration, or its seed noise rests on fewer than MIN_SEED_DF deviations while the other side's does
not, the other side's seed noise is assumed for it, pooled with its own deviations where it has any (one
estimate: one variance component, its df counted once), and the lacking side's share counts 4x (its sd
doubled: a new head may be the noisier, which 1-2 deviations cannot show); where neither has any, the
paired permutation test over users is the fallback and says that it treats checkpoints as fixed.  Only where
per-user records are missing does a comparison fall back further, saying so: a Welch t-test over seed
means when both have several seeds, or an unpaired z-test from two bootstrap CIs over users.  Intervals of
different kinds are not combined.  A statistic that is not finite is no test, never a significant one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from tcf.eval.metrics import holm, normal_pvalue, paired_test, t_pvalue
from tcf.experiments.results import HEAD_NAMES, TOWER_NAMES, Group, RunResult, Stat

PAIRED_RESAMPLES = 2000  # sign flips of the paired permutation test (seed 0)
USERS_AND_SEEDS = "t-test over users and seeds"
PAIRED = "paired permutation test over users"
MIN_SEED_DF = 3  # seed deviations a seed-noise estimate must rest on (see users_and_seeds)
FIXED = " (checkpoints treated as fixed: no configuration of this head has 2 seeds to measure seed noise)"
WELCH = "Welch t-test over seeds (fallback: no per-user records; ignores which users were sampled)"
Z_FROM_CI = "unpaired z-test from the bootstrap 95% CIs over users (fallback: no per-user records on the same users)"
NO_TEST = "no test: neither per-user records, seeds nor confidence intervals"
NOT_FINITE = "no test: a mean or per-user value is not a finite number"
MIXED = ("no test: the two intervals are of different kinds (a t interval over seeds and a bootstrap interval over "
         "users) and a group lacks per-user records")


@dataclass
class Comparison:
    a: Stat
    b: Stat
    p_value: float | None  # None: no test possible (see reason)
    test: str = ""  # which test gave p_value
    p_holm: float | None = None  # adjusted over the answer's family (set by holm_family)
    family: int = 1  # tests in that family
    reason: str = NO_TEST  # why there is no test (p_value None)
    n_users: int | None = None  # users of a paired test
    seeds: tuple[int, int] = (1, 1)  # runs averaged per user on each side
    diff_ci: list | None = None  # bootstrap 95% CI of the paired difference
    shared: tuple | None = None  # the seeds compared, when the groups' seed sets differed (of_seeds: theirs)
    of_seeds: tuple[int, int] | None = None
    df: float | None = None  # degrees of freedom of the t-test over users and seeds
    noise: tuple | None = None  # the SeedNoise it read: one (both sides from one pool) or one per side
    # the t-test's ingredients, to ask what another seed-noise estimate would have given (diagnostics):
    # (mean paired difference, users' variance of it, users, ((SeedNoise, m, k): its part var * m / k, ...))
    basis: tuple | None = field(default=None, repr=False, compare=False)
    peers: list | None = field(default=None, repr=False, compare=False)  # its Holm family (holm_family)

    @property
    def diff(self) -> float:
        return self.a.mean - self.b.mean

    def significant(self, alpha: float) -> bool:
        p = self.p_value if self.p_holm is None else self.p_holm
        return p is not None and p < alpha

    def evidence(self) -> str:
        return self._test_text() + self.seed_note()

    def _test_text(self) -> str:
        if self.p_value is None:
            return self.reason
        text = p_words(self.test, self.p_value, self.p_holm if self.family > 1 else None, self.family,
                       PAIRED_RESAMPLES if self.test.startswith(PAIRED) else None)
        if self.n_users is not None and max(self.seeds) > 1:
            text += f"; {self.n_users} users, each user's value averaged over {self.seeds[0]} vs {self.seeds[1]} seeds"
        if self.noise:
            sds = " and ".join(f"{math.sqrt(n.var):.4f} ({n.where}, {n.configs} configuration"
                               f"{'s' if n.configs > 1 else ''}, {n.df:.3g} df)" for n in self.noise)
            text += f"; seed sd {sds}"
        return text

    def seed_note(self) -> str:
        """Which seeds the means and the test are on, when not every seed of each group (see on_shared_seeds)."""
        if self.shared is None:
            return ""
        if not self.shared:
            return (f"; the groups share no seed ({self.of_seeds[0]} vs {self.of_seeds[1]} seeds, each averaged over "
                    "its own)")
        seeds = ", ".join(str(x) for x in self.shared)
        return (f"; on the seed{'s' if len(self.shared) > 1 else ''} both groups have ({seeds}; they have "
                f"{self.of_seeds[0]} and {self.of_seeds[1]})")

    def verdict(self, alpha: float, better: str, worse: str) -> str:
        if self.p_value is None and self.reason.startswith("not testable"):
            return "not testable"
        if not self.significant(alpha):
            return "no clear difference"
        return better if self.diff > 0 else worse

    def record(self) -> dict:
        return {"test": self.test or None, "p_value": self.p_value, "p_holm": self.p_holm, "family": self.family,
                "n_users": self.n_users, "seeds": list(self.seeds), "diff_ci95": self.diff_ci,
                **({"shared_seeds": list(self.shared), "of_seeds": list(self.of_seeds)} if self.shared is not None
                   else {}),
                **({"df": self.df, "seed_noise": [{"sd": math.sqrt(n.var), "df": n.df, "configs": n.configs,
                                                   "from": n.where, "factors": list(n.factors)}
                                                  for n in self.noise]}
                   if self.noise is not None else {}),
                **({"no_test": self.reason} if self.p_value is None else {})}


def _seed_means(g: Group, metric: str, split: str) -> np.ndarray:
    return np.array([m[0] for m in (r.metric(metric, split) for r in g.runs) if m is not None])


def welch(x: np.ndarray, y: np.ndarray) -> float | None:
    """Two-sided Welch t-test p-value of mean(x) - mean(y) (each at least two seeds); None when not finite."""
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = float(x.mean() - y.mean())
    if va + vb == 0:
        return 1.0 if diff == 0 else 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    return t_pvalue(diff / math.sqrt(va + vb), df)


def z_from_ci(a: Stat, b: Stat) -> float | None:
    """Unpaired, from two bootstrap (normal) intervals over users; None when not finite."""
    se = math.hypot((a.hi - a.lo) / 2 / 1.96, (b.hi - b.lo) / 2 / 1.96)
    if se == 0:
        return 1.0 if a.mean == b.mean else 0.0
    return normal_pvalue((a.mean - b.mean) / se)


def min_differing(alpha: float) -> int:
    """Users whose values must differ for a sign-flip test to be able to reach p < alpha: with m of them its
    two-sided p is at least 2^(1-m) (6 at alpha 0.05)."""
    m = 1
    while 2.0 ** (1 - m) >= alpha:
        m += 1
    return m


@dataclass(frozen=True)
class SeedNoise:
    """The variance of a seed's effect on a configuration's mean, pooled over configurations: what retraining
    with another seed moves a configuration's score by, beyond the users' own noise."""

    var: float  # sigma_b^2 >= 0
    df: float  # its degrees of freedom (Satterthwaite, for a difference of mean squares)
    configs: int  # configurations pooled
    seed_df: int  # sum over them of (seeds - 1): how many seed deviations were seen
    where: str  # which configurations, for the line: "SASRec frozen text" or "SASRec, all towers (...)"
    factors: tuple[float, float] = (1.0, 1.0)  # one estimate serving both sides: each side's multiple of var


def noise_from_tables(tables: list[np.ndarray], where: str = "") -> SeedNoise | None:
    """Seed noise from per-configuration tables of per-user values, one [seeds, users] array each (2+ seeds, the
    same users down a table).  A seed mean's spread about its configuration's mean estimates sigma_b^2 plus the
    user-by-seed interaction's sigma_e^2 / U, which the users' paired differences already carry: the seed x user
    residual mean square (two-way ANOVA without replication) estimates sigma_e^2 and is taken out, so it is not
    counted twice.  sigma_b^2 = max(0, MS_means - MS_resid / U), df by Satterthwaite."""
    ss_m = df_m = ss_r = df_r = 0.0
    inv_u, k = [], 0
    for y in tables:
        y = np.asarray(y, np.float64)
        n, u = y.shape
        if n < 2 or u < 2 or not np.isfinite(y).all():
            continue
        m = y.mean(1)
        resid = y - m[:, None] - y.mean(0)[None, :] + y.mean()
        ss_m, df_m = ss_m + float(((m - m.mean()) ** 2).sum()), df_m + n - 1
        ss_r, df_r = ss_r + float((resid ** 2).sum()), df_r + (n - 1) * (u - 1)
        inv_u.append(1.0 / u)
        k += 1
    if not df_m:
        return None
    ms_m, ms_r = ss_m / df_m, ss_r / df_r
    user_part = ms_r * float(np.mean(inv_u))
    var = max(0.0, ms_m - user_part)
    den = ms_m ** 2 / df_m + user_part ** 2 / df_r
    df = var ** 2 / den if den > 0 and var > 0 else df_m
    return SeedNoise(var, min(df, df_m), k, int(df_m), where)


def p_words(test: str, p: float, p_holm: float | None, family: int, resamples: int | None) -> str:
    """"TEST p = 0.012, Holm-adjusted over 4 tests p = 0.048"; a permutation test's smallest possible p, 1 / (its
    resamples + 1), reads "p <= 0.0001", a bound and not an estimate (and so does what Holm makes of it)."""
    at_floor = resamples is not None and p <= (1 + 1e-9) / (resamples + 1)
    text = f"{test} p {'<=' if at_floor else '='} {p:.3g}"
    if p_holm is not None:
        text += f", Holm-adjusted over {family} tests p {'<=' if at_floor else '='} {p_holm:.3g}"
    return text


def _tables(groups: list[Group], metric: str, split: str, users: np.ndarray | None,
            per_user=None) -> list[np.ndarray]:
    """One [seeds, users] table per group of 2+ seeds whose runs all have per-user values on the same users:
    ``run.per_user(metric, split)``, or ``per_user(run, metric)`` (the same (ids, values) or None) for values
    scored elsewhere (a zero-shot run's candidate lists)."""
    out = []
    for g in groups:
        if len(g.runs) < 2:
            continue
        per = [r.per_user(metric, split) if per_user is None else per_user(r, metric) for r in g.runs]
        if any(x is None for x in per) or any(not np.array_equal(per[0][0], x[0]) for x in per):
            continue
        sel = np.ones(len(per[0][0]), bool) if users is None else np.isin(per[0][0], users)
        if sel.sum() < 2:
            continue
        out.append(np.stack([np.asarray(x[1], np.float64)[sel] for x in per]))
    return out


PartOf = Callable[[Group], str]  # a group -> the population its seed noise is pooled within ("": the main one)


def seed_noise(pool: list[Group] | None, head: str, tower: str, metric: str, split: str,
               users: np.ndarray | None = None, part: str = "", part_of: PartOf | None = None) -> SeedNoise | None:
    """:func:`noise_from_tables` over the groups of ``pool`` with this head and tower kind and 2+ seeds (seed
    noise differs between kinds: a frozen tower's is not a fine-tuned one's); where that kind has seen fewer
    than MIN_SEED_DF seed deviations (one configuration of 3 seeds has 2), over all the head's towers, and
    ``where`` says it is borrowed.  On ``users`` alone (a slice) when given.  None when no group of the head
    has 2 seeds with per-user records."""
    return _seed_tables(pool, head, tower, metric, split, users, part=part, part_of=part_of)[1]


def _seed_tables(pool, head, tower, metric, split, users, per_user=None, part: str = "",
                 part_of: PartOf | None = None) -> tuple[list[np.ndarray], SeedNoise | None]:
    """:func:`seed_noise` and the tables it rests on (``per_user``: see :func:`_tables`).  With ``part_of``,
    only the groups of population ``part`` pool (own and borrowed), and the label names it."""
    same = [g for g in pool or () if g.first.head == head and (part_of(g) if part_of else "") == part]
    name, kind = HEAD_NAMES.get(head, head), TOWER_NAMES.get(tower, tower)
    own_t = _tables([g for g in same if g.first.tower == tower], metric, split, users, per_user)
    own = noise_from_tables(own_t, f"{name} {kind}{part}")
    if own is not None and own.seed_df >= MIN_SEED_DF:
        return own_t, own
    wide_t = _tables(same, metric, split, users, per_user)
    wide = noise_from_tables(wide_t, f"{name}, all towers{part} (borrowed)")
    return (wide_t, wide) if wide is not None and (own is None or wide.seed_df > own.seed_df) else (own_t, own)


def t_quantile(df: float, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (bisection on t_pvalue);
    the normal quantile for an infinite df."""
    if not df > 0:
        raise ValueError(f"t_quantile needs df > 0, got {df}")
    if math.isinf(df):
        return 1.959963984540054
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        p = t_pvalue(mid, df)
        lo, hi = (mid, hi) if p is not None and p > 1 - level else (lo, mid)
    return (lo + hi) / 2


def paired(sa: Stat, sb: Stat, ua: np.ndarray, ub: np.ndarray, seeds: tuple[int, int],
           alpha: float = 0.05, noise: tuple[SeedNoise | None, SeedNoise | None] | None = None) -> Comparison:
    """Two aligned per-user arrays (each user's value averaged over its group's seeds) compared by the t-test
    over users and seeds when both sides' seed noise is known (``noise``; the same object twice when both
    sides read one pool), else by the paired permutation test over users, which says that it treats
    checkpoints as fixed.  No test (and so out of its Holm family) when too few users differ at all for any
    outcome to reach p < alpha."""
    differing, need = int(np.sum(np.asarray(ua, np.float64) != np.asarray(ub, np.float64))), min_differing(alpha)
    if differing < need and np.isfinite(ua).all() and np.isfinite(ub).all():
        return Comparison(sa, sb, None, n_users=len(ua), seeds=seeds,
                          reason=f"not testable: {differing} of {len(ua)} users differ (a sign-flip test needs at "
                                 f"least {need} to reach p < {alpha:g})")
    na, nb = noise if noise is not None else (None, None)
    if na is not None and nb is not None:
        return users_and_seeds(sa, sb, ua, ub, seeds, na, nb)
    r = paired_test(ua, ub, n=PAIRED_RESAMPLES)
    c = Comparison(sa, sb, r["p_value"], PAIRED + FIXED, n_users=len(ua), seeds=seeds, diff_ci=r["ci95"])
    if c.p_value is None:
        c.test, c.reason = "", NOT_FINITE
    return c


def users_and_seeds(sa: Stat, sb: Stat, ua: np.ndarray, ub: np.ndarray, seeds: tuple[int, int],
                    na: SeedNoise | None, nb: SeedNoise | None) -> Comparison:
    """var(D) = var(d_u) / U + sigma_b^2 (f_a/n_a + f_b/n_b) (one pool; f the factors, 1 but where assumed for a
    side) or sigma_a^2/n_a + sigma_b^2/n_b (two; a side given None has no training seed, a zero-shot run, and
    adds no seed term);
    Student's t with the Welch-Satterthwaite df.  Not testable where a side's seed noise rests on fewer than
    MIN_SEED_DF seed deviations: simulated under the model, 2 gave 7-8% false positives at 5%, 3 and more
    4-5.5%."""
    d = np.asarray(ua, np.float64) - np.asarray(ub, np.float64)
    if not np.isfinite(d).all():
        return Comparison(sa, sb, None, reason=NOT_FINITE, n_users=len(d), seeds=seeds)
    noises = (na,) if na is nb else tuple(n for n in (na, nb) if n is not None)
    few = [n for n in noises if n.seed_df < MIN_SEED_DF]
    if few:
        return Comparison(sa, sb, None, n_users=len(d), seeds=seeds,
                          reason=f"not testable: the seed noise of {few[0].where} rests on {few[0].seed_df} seed "
                                 f"deviation{'s' if few[0].seed_df != 1 else ''} (a test needs {MIN_SEED_DF}: "
                                 "with fewer it called 7-8% of equal configurations different at 5%)")
    multipliers = ([(na, na.factors[0] / seeds[0] + na.factors[1] / seeds[1], 1)] if na is nb
                   else [(n, 1, k) for n, k in zip((na, nb), seeds) if n is not None])
    basis = (float(d.mean()), float(d.var(ddof=1)) / len(d), len(d), tuple(multipliers))
    p, df, half = t_from_basis(basis)
    diff = basis[0]
    c = Comparison(sa, sb, p, USERS_AND_SEEDS, n_users=len(d), seeds=seeds, diff_ci=[diff - half, diff + half],
                   df=df, noise=noises, basis=basis)
    if c.p_value is None:
        c.test, c.reason = "", NOT_FINITE
    return c


def t_from_basis(basis: tuple, noise_of=None) -> tuple[float | None, float | None, float]:
    """The t-test over users and seeds from its ingredients (Comparison.basis) -> (p, df, CI half-width).
    ``noise_of(SeedNoise) -> (var, df, key)`` may put another estimate in a pool's place (diagnostics): parts
    that resolve to one key are one estimate, one variance component with its df counted once (as in
    :func:`_noise`: two copies of one estimate would count its df twice)."""
    diff, v_users, n_users, multipliers = basis
    merged: dict = {}  # key -> [variance part, df]
    for n, m, k in multipliers:
        var, df, key = (n.var, n.df, id(n)) if noise_of is None else noise_of(n)
        if key in merged:
            merged[key][0] += var * m / k
        else:
            merged[key] = [var * m / k, df]
    parts = [(v, k) for v, k in merged.values() if v > 0]
    total = v_users + sum(v for v, _ in parts)
    if total == 0:  # every user's difference the same and no seed noise: nothing varies
        return (1.0 if diff == 0 else 0.0), None, 0.0
    den = v_users ** 2 / (n_users - 1) + sum(v ** 2 / k for v, k in parts)
    df = total ** 2 / den
    return t_pvalue(diff / math.sqrt(total), df), df, t_quantile(df) * math.sqrt(total)


def on_shared_seeds(a: Group, b: Group) -> tuple[Group, Group, tuple | None]:
    """Both groups cut to the seeds they share, when their seed sets differ and overlap: a 1-seed group against
    a 3-seed average would count the seed-to-seed spread as an effect, and a lucky seed as a finding.
    -> (a, b, the shared seeds; () when they share none, None when their seeds are the same)."""
    sa, sb = set(map(str, a.seeds)), set(map(str, b.seeds))
    common = sa & sb
    if sa == sb:
        return a, b, None
    if not common:  # nothing to cut to: each group keeps its own seeds, and the line says they share none
        return a, b, ()

    def cut(g: Group) -> Group:
        return Group([r for r in g.runs if str(r.config.get("seed")) in common], g.settings)

    return cut(a), cut(b), tuple(sorted(common))


def compare(a: Group, b: Group, metric: str, split: str, alpha: float = 0.05,
            pool: list[Group] | None = None, part_of: PartOf | None = None) -> Comparison | None:
    """``a`` against ``b`` on ``split``, on the seeds both have (:func:`on_shared_seeds`): the t-test over users
    and seeds when both have per-user records on the same users, its seed noise pooled over ``pool`` (the
    report's groups); else a labelled fallback (the paired test over users alone, Welch over seeds, or a
    z-test from two CIs over users)."""
    of = (len(a.runs), len(b.runs))
    a, b, shared = on_shared_seeds(a, b)
    c = _compare(a, b, metric, split, alpha, pool, part_of)
    if c is not None and shared is not None:
        c.shared, c.of_seeds = shared, of
    return c


def _noise(pool, a: Group, b: Group, metric: str, split: str, users=None, part_of: PartOf | None = None):
    ka, kb = (a.first.head, a.first.tower), (b.first.head, b.first.tower)
    pa, pb = (part_of(a), part_of(b)) if part_of else ("", "")
    ta, na = _seed_tables(pool, *ka, metric, split, users, part=pa, part_of=part_of)
    tb, nb = _seed_tables(pool, *kb, metric, split, users, part=pb, part_of=part_of)
    if na is not None and nb is not None and na.where == nb.where:  # one pool read twice: one component
        nb = na

    def rank(n: SeedNoise | None) -> int:  # 0: no estimate; 1: too few deviations to test with; 2: testable
        return 0 if n is None else 1 if n.seed_df < MIN_SEED_DF else 2

    # one side's seed noise unknown, or resting on too few deviations to test with, where the other's is better
    # measured: equal seed noise is assumed, so the other side's estimate serves both, pooled with the lacking
    # side's own 1-2 deviations where it has any (the pooled variance of a two-sample t-test), not none, which
    # would treat its checkpoints as fixed; so one more seed of a new head never turns "testable" into "not
    # testable".  One estimate for both sides: one component of the variance and of the df (two copies of it
    # would count its df twice: a review simulated 7-9.5% false positives at 5% that way).  The assumption cannot
    # be checked on 1-2 deviations, and a new head (a random initialisation above all) may be the noisier: with
    # twice the sd a review simulated 11-13% false positives at 5%, so the lacking side's share counts 4x (its
    # sd doubled), which holds the test near 5% up to that and makes it conservative under equal noise.
    # Not across populations (part_of): a post-hoc run's seed noise is not assumed to be the planned runs'.
    if rank(na) != rank(nb) and not (part_of and part_of(a) != part_of(b)):
        (known, tk), (own, to), lacking = ((na, ta), (nb, tb), b) if rank(na) > rank(nb) else ((nb, tb), (na, ta), a)
        who = HEAD_NAMES.get(lacking.first.head, lacking.first.head)
        assume = (f"equal seed noise assumed, and {who}'s share of it counted 4x (sd doubled) in case a new head is "
                  "noisier")
        if own is None:
            est = replace(known, where=f"{known.where}, assumed for {who} too (it has no 2-seed configuration; "
                                       f"{assume})")
        else:
            dev = f"{own.seed_df} seed deviation{'s' if own.seed_df != 1 else ''}"
            est = noise_from_tables(tk + to, f"{known.where}, pooled with {own.where}: {dev} ({assume})")
        na = nb = replace(est, factors=(4.0, 1.0) if lacking is a else (1.0, 4.0))
    return na, nb


def _compare(a: Group, b: Group, metric: str, split: str, alpha: float, pool=None,
             part_of: PartOf | None = None) -> Comparison | None:
    sa, sb = a.stat(metric, split), b.stat(metric, split)
    if sa is None or sb is None:
        return None
    seeds = (len(a.runs), len(b.runs))
    ua, ub = a.user_values(metric, split), b.user_values(metric, split)
    if ua is not None and ub is not None and np.array_equal(ua[0], ub[0]):
        return paired(sa, sb, ua[1], ub[1], seeds, alpha, _noise(pool, a, b, metric, split, part_of=part_of))
    if not (math.isfinite(sa.mean) and math.isfinite(sb.mean)):
        return Comparison(sa, sb, None, reason=NOT_FINITE, seeds=seeds)
    xa, xb = _seed_means(a, metric, split), _seed_means(b, metric, split)
    if sa.over == sb.over == "seeds" and len(xa) > 1 and len(xb) > 1:
        p = welch(xa, xb)
        return Comparison(sa, sb, p, WELCH if p is not None else "", reason=NOT_FINITE, seeds=seeds)
    if None in (sa.lo, sa.hi, sb.lo, sb.hi):
        return Comparison(sa, sb, None, seeds=seeds)
    if sa.over != sb.over:
        return Comparison(sa, sb, None, reason=MIXED, seeds=seeds)
    p = z_from_ci(sa, sb)
    return Comparison(sa, sb, p, Z_FROM_CI if p is not None else "", reason=NOT_FINITE, seeds=seeds)


def holm_family(comparisons: list[Comparison]) -> list[Comparison]:
    """Holm–Bonferroni over one answer's tests: each gets its adjusted p-value and the family size."""
    adjusted = holm([c.p_value for c in comparisons])
    tested = sum(p is not None for p in adjusted)
    for c, p in zip(comparisons, adjusted):
        c.p_holm, c.family, c.peers = p, tested, comparisons
    return comparisons


# ---------------------------------------------------------------- cold items

@lru_cache(maxsize=16)
def _cold_users(path: str, fingerprint: str, split: str, cold_max_count: int) -> tuple[np.ndarray | None, str]:
    from tcf.data import load_dataset
    from tcf.run.seqdata import SeqData

    try:
        dataset = load_dataset(path, verify=False)
    except Exception as e:  # noqa: BLE001 - a dataset that is gone makes the test impossible, not the report
        return None, f"the dataset {path} is not readable here ({type(e).__name__})"
    if dataset.fingerprint != fingerprint:
        return None, f"the dataset at {path} is not the one the runs used (fingerprint differs)"
    data = SeqData(dataset)
    cut = 2 if split == "valid" else 1
    targets = np.array([data.seqs[u][-cut] for u in data.users])
    return data.users[data.train_counts[targets] <= cold_max_count], ""


def cold_users(run: RunResult, split: str) -> tuple[np.ndarray | None, str]:
    """Users whose ``split`` target is a cold item (the trainer's slice: at most eval.cold_max_count training
    interactions), read from the run's dataset; (None, why) when that cannot be known here."""
    ds = run.record.dataset or {}
    k = run.config.get("eval.cold_max_count")
    if not ds.get("path") or not ds.get("fingerprint") or k is None:
        return None, "the runs do not record their dataset and cold threshold"
    return _cold_users(str(ds["path"]), str(ds["fingerprint"]), split, int(k))


def cold_compare(a: Group, b: Group, metric: str, split: str, alpha: float = 0.05,
                 pool: list[Group] | None = None) -> tuple[Comparison | None, int | None]:
    """``a`` against ``b`` on the users whose target is cold: paired over those users (seed-averaged), else the
    runs' cold-slice means with the reason there is no test.  -> (comparison, cold users)."""
    of = (len(a.runs), len(b.runs))
    a, b, shared = on_shared_seeds(a, b)
    c, n = _cold_compare(a, b, metric, split, alpha, pool)
    if c is not None and shared is not None:
        c.shared, c.of_seeds = shared, of
    return c, n


def _cold_compare(a: Group, b: Group, metric: str, split: str, alpha: float,
                  pool=None) -> tuple[Comparison | None, int | None]:
    ma, mb = a.slice_mean("cold", metric, split), b.slice_mean("cold", metric, split)
    if ma is None or mb is None:
        return None, None
    n = a.first.slice_users("cold", split)
    means = Stat(ma, None, None, len(a.runs), "users"), Stat(mb, None, None, len(b.runs), "users")
    seeds = (len(a.runs), len(b.runs))
    ua, ub = a.user_values(metric, split), b.user_values(metric, split)
    if ua is None or ub is None or not np.array_equal(ua[0], ub[0]):
        return Comparison(*means, None, reason="no test: no per-user records on the same users", seeds=seeds), n
    (cold, why), (other, why_b) = cold_users(a.first, split), cold_users(b.first, split)
    if cold is None or other is None or not np.array_equal(cold, other):
        why = why or why_b or "the two groups define cold items differently (dataset or eval.cold_max_count)"
        return Comparison(*means, None, reason=f"no test: {why}", seeds=seeds), n
    sel = np.isin(ua[0], cold)
    if not sel.any():
        return Comparison(*means, None, reason="no test: no cold-target users among the evaluated", seeds=seeds), 0
    va, vb = ua[1][sel], ub[1][sel]
    sa, sb = (Stat(float(v.mean()), None, None, k, "users") for v, k in ((va, seeds[0]), (vb, seeds[1])))
    noise = _noise(pool, a, b, metric, split, users=cold)  # the seed noise of the cold slice itself
    return paired(sa, sb, va, vb, seeds, alpha, noise), int(sel.sum())
