"""Per-user sequences as padded tensors for training and leave-one-out evaluation.

For user u with items s[0..n-1] in time order: training uses s[0..n-3] (inputs s[:-1],
next-item labels s[1:]); validation predicts s[n-2] from s[0..n-3]; test predicts
s[n-1] from s[0..n-2].  Sequences are cut to the most recent ``max_len`` inputs and
left-padded with 0.
"""

from __future__ import annotations

import numpy as np
import torch

from tcf.data import Dataset

TARGET_OFFSETS = {"test": 1, "valid": 2}  # a split's target: the last item, or the one before it


def left_pad(rows: list[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[-length:]
        if len(r):
            out[i, length - len(r):] = r
    return out


class SeqData:
    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.n_items, self.n_users = dataset.n_items, dataset.n_users
        self.seqs = dataset.sequences()  # index = user_id; [0] empty
        self.users = np.arange(1, self.n_users + 1)
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        labels = np.zeros(self.n_items + 1, dtype=np.int64)
        for s in self.seqs[1:]:
            np.add.at(counts, s[:-2], 1)
            np.add.at(labels, s[1:-2], 1)
        self.train_counts = counts  # training interactions per item (popularity)
        self.label_counts = labels  # training labels per item (every training interaction but a user's first)

    def train_part(self, u: int) -> np.ndarray:
        return self.seqs[u][:-2]

    @staticmethod
    def target_offset(split: str) -> int:
        """How far from the end of a sequence ``split``'s target is: test 1 (the last item), valid 2."""
        if split not in TARGET_OFFSETS:
            raise ValueError(f"split must be one of {list(TARGET_OFFSETS)}, got {split!r}")
        return TARGET_OFFSETS[split]

    def history(self, u: int, split: str) -> np.ndarray:
        """User ``u``'s items before ``split``'s target."""
        return self.seqs[u][:-self.target_offset(split)]

    def target(self, u: int, split: str) -> int:
        return int(self.seqs[u][-self.target_offset(split)])

    def windows(self, max_len: int) -> np.ndarray:
        """Training windows [W, 3] = (user, start, end): each user's training items cut, from the most
        recent backwards, into runs of at most max_len + 1 that overlap by one item, so every training
        interaction after a user's first is a label exactly once, with up to max_len items of context."""
        rows = []
        for u in self.users:
            end = len(self.train_part(u))
            while end >= 2:
                start = max(0, end - max_len - 1)
                rows.append((u, start, end))
                end = start + 1
        return np.asarray(rows, dtype=np.int64)

    def train_batch(self, windows: np.ndarray, max_len: int):
        """[B, 3] windows -> users [B], inputs [B, L], labels [B, L] (0 = no label), known [B, K] (each
        user's training items, for masking them as in-batch negatives)."""
        users = windows[:, 0]
        parts = [self.train_part(u)[a:b] for u, a, b in windows]
        inputs = left_pad([p[:-1] for p in parts], max_len)
        labels = left_pad([p[1:] for p in parts], max_len)
        known_rows = [self.train_part(u) for u in users]
        known = left_pad(known_rows, max(len(k) for k in known_rows))
        return (torch.as_tensor(users), torch.as_tensor(inputs), torch.as_tensor(labels), torch.as_tensor(known))

    def eval_batch(self, users: np.ndarray, split: str, max_len: int):
        """-> users [B], inputs [B, L], targets [B], history [B, H] (everything before the target, 0-padded)."""
        history = [self.history(u, split) for u in users]
        targets = np.array([self.target(u, split) for u in users], dtype=np.int64)
        inputs = left_pad(history, max_len)
        width = max(len(h) for h in history)
        return (torch.as_tensor(users), torch.as_tensor(inputs), torch.as_tensor(targets),
                torch.as_tensor(left_pad(history, width)))

    def history_lengths(self, split: str) -> np.ndarray:
        cut = self.target_offset(split)
        return np.array([len(self.seqs[u]) - cut for u in self.users])
