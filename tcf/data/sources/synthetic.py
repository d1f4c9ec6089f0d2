"""A seeded synthetic dataset whose item texts carry the structure behind the sequences.

Every item belongs to one latent topic; its title is made of that topic's words
plus a few words shared by all topics.  A user prefers a few topics and moves
between items of the same topic with probability ``stay``, else jumps to another
preferred topic; within a topic, popularity is Zipf-like, so many items are cold.
A text model can therefore learn something real (which topic an item is), while an
ID model has to see every item often.  Item ids are shuffled, so nothing leaks
through id order, and no field names the topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tcf.data.io import LINE
from tcf.data.prepare import RawData
from tcf.errors import DataError

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "pl"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]


@dataclass(frozen=True)
class Options:
    seed: int = 0
    n_users: int = 600
    n_items: int = 400
    n_topics: int = 8
    min_len: int = 5
    max_len: int = 25
    words_per_item: int = 5
    topic_words: int = 24  # vocabulary size of each topic
    shared_words: int = 2  # words per title drawn from a vocabulary common to all topics
    stay: float = 0.85  # probability that the next item has the same topic as the last
    zipf: float = 1.1  # popularity skew within a topic (0 = uniform)


def _vocabulary(rng: np.random.Generator, n: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.integers(2, 4)
        words.add("".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)))
    out = sorted(words)
    rng.shuffle(out)
    return out


def generate(options: Options = Options()) -> tuple[RawData, dict[str, int]]:
    """The raw dataset and the latent topic of each item (by source id), for tests."""
    o = options
    if o.n_topics < 1 or o.n_items < o.n_topics or o.n_users < 1 or not 3 <= o.min_len <= o.max_len:
        raise DataError(None, f"synthetic options out of range: {o}")
    if not 0 < o.shared_words < o.words_per_item and o.shared_words != 0:
        raise DataError(None, "shared_words must be below words_per_item")
    rng = np.random.default_rng(o.seed)
    vocab = _vocabulary(rng, o.n_topics * o.topic_words + 4 * o.topic_words)
    topic_vocab = [vocab[t * o.topic_words:(t + 1) * o.topic_words] for t in range(o.n_topics)]
    shared_vocab = vocab[o.n_topics * o.topic_words:]

    topic = rng.permutation(np.arange(o.n_items) % o.n_topics)
    titles = []
    for t in topic:
        own = rng.choice(topic_vocab[t], size=o.words_per_item - o.shared_words, replace=False).tolist()
        common = rng.choice(shared_vocab, size=o.shared_words, replace=False).tolist()
        words = own + common
        rng.shuffle(words)
        titles.append(" ".join(words))
    members = [np.flatnonzero(topic == t) for t in range(o.n_topics)]
    weights = []
    for m in members:
        w = 1.0 / np.arange(1, len(m) + 1) ** o.zipf
        weights.append(w / w.sum())

    users, items, times = [], [], []
    for u in range(o.n_users):
        pref = rng.dirichlet(np.full(o.n_topics, 0.3))
        length = int(rng.integers(o.min_len, o.max_len + 1))
        t = int(rng.choice(o.n_topics, p=pref))
        clock = int(rng.integers(1_500_000_000, 1_600_000_000))
        for _ in range(length):
            if rng.random() > o.stay:
                t = int(rng.choice(o.n_topics, p=pref))
            items.append(int(members[t][rng.choice(len(members[t]), p=weights[t])]))
            users.append(u)
            clock += int(rng.integers(60, 86_400))
            times.append(clock)

    # shuffled source ids; the item file lists items in an order unrelated to topic
    codes = rng.permutation(np.arange(10_000, 10_000 + o.n_items))
    source_ids = [f"i{c}" for c in codes]
    file_order = rng.permutation(o.n_items)
    item_df = pd.DataFrame({"source_id": pd.array([source_ids[i] for i in file_order], dtype="string"),
                            "title": pd.array([titles[i] for i in file_order], dtype="string"),
                            LINE: np.arange(1, o.n_items + 1)})
    inter = pd.DataFrame({"user": pd.array([f"u{u}" for u in users], dtype="string"),
                          "item": pd.array([source_ids[i] for i in items], dtype="string"),
                          "timestamp": np.asarray(times, dtype=np.int64), LINE: np.arange(1, len(users) + 1)})
    where = Path("<synthetic>")
    raw = RawData("synthetic", item_df, where, inter, where, ["title"], "{title}", "title",
                  item_id_column="item", user_column="user", item_column="item", files=[],
                  info={"options": {k: getattr(o, k) for k in o.__dataclass_fields__}})
    return raw, {source_ids[i]: int(topic[i]) for i in range(o.n_items)}


def read(path: Path | None, options: Options = Options()) -> RawData:
    if path is not None:
        raise DataError(path, "the synthetic source takes no path; set its options with --set (e.g. seed=1)")
    return generate(options)[0]
