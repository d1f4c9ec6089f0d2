"""Candidate lists: each evaluated user's true next item plus N-1 negatives, seeded, saved, reused.

Negatives are items outside the user's whole sequence, drawn uniformly, by training
popularity, or from a trained recommender's top list ("hard").  Every draw is seeded by
(run seed, user), so the lists do not depend on which other users are sampled, and round
0 of a bootstrapped file equals the list of an unbootstrapped one.  The file records the
settings it was made with and is refused when they differ, so every model is scored on
the same lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tcf.errors import ConfigError
from tcf.fsutil import atomic_write_text
from tcf.hashing import json_digest

FORMAT = "tcf-zeroshot-candidates"


@dataclass
class Candidates:
    key: dict
    users: np.ndarray  # [U]
    targets: np.ndarray  # [U] item ids
    lists: np.ndarray  # [U, B, N] item ids in presented order, one row per bootstrap round
    target_pos: np.ndarray  # [U, B] where the target sits in each list

    def save(self, path: Path) -> None:
        data = {"format": FORMAT, "key": self.key, "users": self.users.tolist(), "targets": self.targets.tolist(),
                "lists": self.lists.tolist(), "target_positions": self.target_pos.tolist()}
        atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: Path) -> Candidates:
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT:
                raise ValueError("not a candidate file")
            c = cls(data["key"], np.asarray(data["users"]), np.asarray(data["targets"]), np.asarray(data["lists"]),
                    np.asarray(data["target_positions"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a readable tcf candidate file ({e})") from None
        rows = np.arange(len(c.users))[:, None]
        if c.lists.ndim != 3 or not (c.lists[rows, np.arange(c.lists.shape[1])[None, :], c.target_pos]
                                     == c.targets[:, None]).all():
            raise ConfigError(f"{path}: target positions do not point at the targets; the file is damaged")
        return c


def candidate_key(cfg, dataset) -> dict:
    """Everything that changes the lists."""
    z = cfg.zeroshot
    key = {"dataset": dataset.fingerprint, "split": z.split, "n_candidates": z.candidates(), "negatives": z.negatives,
           "position": z.position, "pinned_position": z.pinned_position if z.position == "pinned" else None,
           "bootstrap": z.bootstrap, "seed": cfg.seed, "limit": z.limit}
    if z.negatives == "hard":
        key["hard_run"] = hard_run_identity(Path(z.hard_run))
    return key


def key_hash(key: dict) -> str:
    return json_digest(key, 12)


def sample_users(all_users: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A seeded sample; samples are nested (limit 20 is the first 20 of limit 100), so a larger run
    reuses every cached reply of a smaller one."""
    if limit is None or limit >= len(all_users):
        return np.asarray(all_users)
    return np.sort(np.random.default_rng(seed).permutation(np.asarray(all_users))[:limit])


def draw_negatives(allowed: np.ndarray, n: int, how: str, rng, counts: np.ndarray, user: int) -> np.ndarray:
    if len(allowed) < n:
        raise ConfigError(f"user {user}: only {len(allowed)} items outside the user's history; "
                          f"zeroshot.n_candidates {n + 1} is too many for this dataset")
    if how == "uniform":
        return rng.choice(allowed, size=n, replace=False)
    w = counts[allowed].astype(np.float64)
    if (w > 0).sum() < n:  # too few items with any training interaction: the rest uniformly
        w = w + 1e-9
    return rng.choice(allowed, size=n, replace=False, p=w / w.sum())


def arrange(target: int, negatives: np.ndarray, z, rng) -> tuple[np.ndarray, int]:
    """The presented order of one list: seeded shuffle, or the target pinned at a slot."""
    if z.position == "pinned":
        neg = rng.permutation(negatives)
        items = np.insert(neg, z.pinned_position, target)
    else:
        items = rng.permutation(np.append(negatives, target))
    return items, int(np.flatnonzero(items == target)[0])


def build(cfg, dataset, data) -> Candidates:
    """Draw the lists (``data`` is a :class:`tcf.run.seqdata.SeqData` of the same dataset)."""
    z = cfg.zeroshot
    n_neg = z.candidates() - 1
    users = sample_users(data.users, z.limit, cfg.seed)
    targets = np.array([data.target(u, z.split) for u in users], dtype=np.int64)
    hard = hard_negatives(cfg, dataset, data, users, n_neg) if z.negatives == "hard" else None
    lists = np.zeros((len(users), z.bootstrap, n_neg + 1), dtype=np.int64)
    pos = np.zeros((len(users), z.bootstrap), dtype=np.int64)
    all_items = np.arange(1, data.n_items + 1)
    for row, u in enumerate(users):
        rng = np.random.default_rng([cfg.seed, int(u)])
        if hard is not None:
            neg = hard[row]
        else:
            allowed = np.setdiff1d(all_items, data.seqs[u], assume_unique=False)
            neg = draw_negatives(allowed, n_neg, z.negatives, rng, data.train_counts, int(u))
        for b in range(z.bootstrap):
            lists[row, b], pos[row, b] = arrange(int(targets[row]), neg, z, rng)
    return Candidates(candidate_key(cfg, dataset), users, targets, lists, pos)


def default_path(cfg, key: dict) -> Path:
    return Path(cfg.cache_root) / "zeroshot" / f"candidates-{key_hash(key)}.json"


def load_or_build(cfg, dataset, data) -> tuple[Candidates, Path]:
    """The run's lists: read from the file when it exists (checked against the settings), else drawn and saved."""
    key = candidate_key(cfg, dataset)
    path = Path(cfg.zeroshot.candidates_path) if cfg.zeroshot.candidates_path else default_path(cfg, key)
    if path.is_file():
        c = Candidates.load(path)
        diff = [k for k in sorted(set(key) | set(c.key)) if key.get(k) != c.key.get(k)]
        if diff:
            raise ConfigError(f"{path}: candidate file made with other settings ({diff[0]}: file has "
                              f"{c.key.get(diff[0])!r}, this run {key.get(diff[0])!r}); use another candidates_path")
        return c, path
    c = build(cfg, dataset, data)
    c.save(path)
    return c, path


# ---------------------------------------------------------------- hard negatives

def hard_run_identity(run: Path) -> dict:
    """A trained run is identified by its folder and the hash of its best checkpoint."""
    best = run / "checkpoints" / "best.pt"
    if not (run / "results.json").is_file() or not best.is_file():
        raise ConfigError(f"zeroshot.hard_run: {run} is not a finished `tcf train` run "
                          "(results.json and checkpoints/best.pt needed)")
    from tcf.encoders.zoo import file_hash

    return {"path": str(run), "best_sha256": file_hash(best)[:16]}


def hard_negatives(cfg, dataset, data, users: np.ndarray, n_neg: int) -> np.ndarray:
    """The trained recommender's top items for each user (history masked, target removed): [U, n_neg]."""
    import torch

    from tcf.eval.ranking import score_users
    from tcf.run.results import read_results
    from tcf.train.trained import load_trained

    run = Path(cfg.zeroshot.hard_run)
    hard_run_identity(run)
    record = read_results(run)
    if record.dataset.get("fingerprint") != dataset.fingerprint:
        raise ConfigError(f"zeroshot.hard_run: {run} was trained on another dataset (fingerprint differs)")
    trained = load_trained(run, record=record)  # strict: a checkpoint that does not fit its config is refused
    model, rcfg = trained.model, trained.cfg
    out = []
    with torch.no_grad():
        for start in range(0, len(users), 256):
            chunk = users[start:start + 256]
            scores, targets = score_users(model, data, chunk, cfg.zeroshot.split, max_len=rcfg.model.max_len,
                                          mask_history=True, device="cpu")
            scores[torch.arange(len(chunk)), targets] = float("-inf")
            for row, u in enumerate(chunk):  # items after the target (the valid split's test item) are not negatives
                scores[row, torch.tensor(data.seqs[u])] = float("-inf")
            allowed = torch.isfinite(scores).sum(1)
            short = torch.nonzero(allowed < n_neg).flatten().tolist()  # topk would fill up with masked items
            if short:
                row = short[0]
                raise ConfigError(f"user {int(chunk[row])}: only {int(allowed[row])} items outside the user's history "
                                  f"for {n_neg} hard negatives; zeroshot.n_candidates {n_neg + 1} is too many for "
                                  "this dataset")
            out.append(scores.topk(n_neg, dim=1).indices.numpy())
    return np.concatenate(out)
