"""The watch set of a recorded run: the fixed inputs every snapshot is measured on.

Stored once per run in `watch.h5` (`probes.h5` in schema-1 runs): one held-out chat per topic
(showcase topics first) and a few random token sequences repeated twice, which reveal
induction and previous-token heads. ("Probe" is kept for the analysis scripts in `probes/`.)
Numpy and h5py only, so readers of a run never need torch to list what was watched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from guppy.run.format import SCHEMA_VERSION, WATCH_ARRAYS, WATCH_STRINGS
from guppy.run.writer import atomic_write

SHOWCASE_TOPICS = ("greeting", "meaning_of_life", "food", "confused", "cat", "bye", "water", "joke")


@dataclass
class WatchSet:
    tokens: np.ndarray  # (B, T) int64, padded with pad_id: B inputs
    lengths: np.ndarray  # (B,) real tokens per input
    reply_start: np.ndarray  # (B,) first reply token (chats); 1 for synthetic inputs
    period: np.ndarray  # (B,) repeat period of synthetic inputs; 0 for chats
    kind: list[str]  # "chat" or "repeat"
    topic: list[str]  # chat topic, "" for synthetic inputs
    text: list[str]
    subset: np.ndarray  # inputs whose full tensors are stored

    def save(self, path: Path) -> None:
        def write(tmp):
            with h5py.File(tmp, "w") as f:
                f.attrs["schema_version"] = SCHEMA_VERSION
                for key in WATCH_ARRAYS:
                    f[key] = getattr(self, key)
                for key in WATCH_STRINGS:
                    f[key] = np.array(getattr(self, key), dtype=h5py.string_dtype())
        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> "WatchSet":
        with h5py.File(path, "r") as f:
            arrays = {k: f[k][()] for k in WATCH_ARRAYS}
            strings = {k: [s.decode() for s in f[k][()]] for k in WATCH_STRINGS}
        return cls(**arrays, **strings)


def repeated_random_tokens(vocab_size: int, start_id: int, n: int = 4, period: int = 20, seed: int = 0) -> list[list[int]]:
    """The standard induction probe, n rows of: a start token, `period` distinct random tokens of the
    whole vocabulary (never a special token, ids 0-2), the same tokens again. The watch set's repeats
    and the recall monitor's are these, so their scores agree."""
    rng = np.random.default_rng(seed)
    vocab = np.arange(3, vocab_size)
    rows = []
    for _ in range(n):
        r = rng.choice(vocab, size=period, replace=False).tolist()
        rows.append([start_id] + r + r)
    return rows


def build_watch_set(data, n_ctx: int, full: int = 12, n_repeat: int = 4, period: int = 20, seed: int = 0) -> WatchSet:
    """One held-out chat per topic (showcase topics first) plus repeated random sequences."""
    tok = data.tokenizer
    by_topic = {}
    for c in data.chats.eval:
        by_topic.setdefault(c.topic, c)
    order = [t for t in SHOWCASE_TOPICS if t in by_topic] + [t for t in data.topics if t not in SHOWCASE_TOPICS]
    chats = [by_topic[t] for t in order if t in by_topic]
    ids, starts = tok.encode_chats([c.prompt for c in chats], [c.reply for c in chats], [c.history for c in chats])
    period = min(period, (n_ctx - 1) // 2)
    repeats = repeated_random_tokens(tok.vocab_size, tok.start_id, n_repeat, period, seed)
    seqs = [x[:n_ctx] for x in ids] + repeats
    B, T = len(seqs), max(map(len, seqs))
    tokens = np.full((B, T), tok.pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = s
    n_chat = len(chats)
    n_full_rep = min(2, n_repeat)
    subset = list(range(min(full - n_full_rep, n_chat))) + list(range(n_chat, n_chat + n_full_rep))
    return WatchSet(
        tokens=tokens,
        lengths=np.array([len(s) for s in seqs]),
        reply_start=np.array(starts + [1] * n_repeat),
        period=np.array([0] * n_chat + [period] * n_repeat),
        kind=["chat"] * n_chat + ["repeat"] * n_repeat,
        topic=[c.topic for c in chats] + [""] * n_repeat,
        # a random token may be the NUL byte, which HDF5 strings cannot hold: shown as the NUL symbol
        text=[tok.decode(s, skip_special=False).replace("\x00", "\u2400") for s in seqs],
        subset=np.array(subset),
    )

