"""Cached reads of a run for the dashboard, all through `guppy.open_run`.

Arrays are cached by (run path, step, file mtime, dataset name): a snapshot file is written
once and renamed into place, so its mtime names its content; a rewritten file is a new key.
Nothing caches an open h5py.File; every read opens the file for that moment only. A view
reads only the datasets it draws, for the snapshot on screen (or a small per-snapshot dataset
across training for the "over training" charts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import guppy
from guppy.runs import Run, RunError

# What a broken run folder raises on read: a clear RunError, or whatever a truncated file throws.
READ_ERRORS = (RunError, OSError, KeyError, ValueError)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_data(max_entries=4096, show_spinner=False)
def read(path: str, step: int, mtime: int, name: str):
    """One dataset of one snapshot (small or large); float16 stays float16 here."""
    return guppy.open_run(path).read(name, step)


@st.cache_data(max_entries=96, show_spinner=False)
def acts(path: str, step: int, mtime: int, hook: str) -> np.ndarray:
    """Stored activations (probe subset) of one hook at one snapshot, (K, ...) float16."""
    return guppy.open_run(path).acts(hook, step)


@st.cache_data(max_entries=64, show_spinner=False)
def snapshot_check(path: str, step: int, mtime: int) -> str:
    """'' if the snapshot file is readable, else the reason (shown in the page)."""
    try:
        guppy.open_run(path).read("loss/mean", step)
        return ""
    except READ_ERRORS as e:
        return str(e)


@st.cache_data(max_entries=32, show_spinner=False)
def snapshot_table(path: str, key: tuple) -> pd.DataFrame:
    """step, epoch, tokens, time of every snapshot (key: the files' (step, mtime) pairs)."""
    try:
        return guppy.open_run(path).snapshots.reset_index(drop=True)
    except READ_ERRORS:  # a broken file among them: the readable steps, without attributes
        return pd.DataFrame({"step": [s for s, _ in key], "epoch": np.nan, "tokens": np.nan, "time": np.nan})


@st.cache_data(max_entries=32, show_spinner=False)
def metrics(path: str, mtime: int) -> pd.DataFrame:
    return guppy.open_run(path).metrics


@st.cache_data(max_entries=16, show_spinner=False)
def head_metrics(path: str, key: tuple) -> pd.DataFrame:
    """The long head-metrics frame (step, layer, head, metric, value) over the snapshots in
    key, their (step, mtime) pairs; each file's small arrays are cached apart, so a new
    snapshot landing reads only that file."""
    from dashboards.data import HEAD_METRICS

    frames = []
    for step, mtime in key:
        for metric in HEAD_METRICS:
            try:
                v = read(path, step, mtime, f"heads/{metric}")
            except RunError:  # an older schema without this metric
                continue
            L, H = v.shape
            frames.append(pd.DataFrame({"step": step, "layer": np.repeat(np.arange(L), H),
                                        "head": np.tile(np.arange(H), L), "metric": metric, "value": v.ravel()}))
    if not frames:
        return pd.DataFrame(columns=["step", "layer", "head", "metric", "value"])
    return pd.concat(frames, ignore_index=True)


@st.cache_data(max_entries=16, show_spinner=False)
def probes(path: str, mtime: int):
    return guppy.open_run(path).probes


@st.cache_resource(max_entries=16, show_spinner=False)
def tokenizer(path: str, mtime: int):
    return guppy.open_run(path).tokenizer


@st.cache_data(max_entries=16, show_spinner=False)
def vocab(path: str, mtime: int, d_vocab: int) -> list[str]:
    """The text of every token id, decoded once per run, specials included; the model's rows
    past the tokenizer's vocabulary (never trained on) read as ⟨id⟩."""
    tok = tokenizer(path, mtime)
    return [tok.decode([i], skip_special=False) for i in range(tok.vocab_size)] + \
        [f"⟨{i}⟩" for i in range(tok.vocab_size, d_vocab)]


@st.cache_resource(max_entries=2, show_spinner=False)
def model(path: str, step: int, mtime: int):
    """A snapshot's model (weights held while in use; at most two at a time)."""
    return guppy.open_run(path).model(step)


@dataclass
class RunHandle:
    """One opened run and its readable snapshots; what every view receives."""

    name: str
    path: Path
    run: Run
    snaps: dict[int, int] = field(default_factory=dict)  # step -> file mtime, readable files only
    bad: dict[int, str] = field(default_factory=dict)  # step -> why the file cannot be read

    @classmethod
    def open(cls, name: str, path: Path) -> "RunHandle":
        run = guppy.open_run(path)  # RunError for a missing or half-written run.json
        h = cls(name, path, run)
        for step, f in run.snapshot_files.items():
            mtime = _mtime(f)
            why = snapshot_check(str(path), step, mtime)
            if why:
                h.bad[step] = why
            else:
                h.snaps[step] = mtime
        return h

    @property
    def steps(self) -> list[int]:
        return list(self.snaps)

    @property
    def key(self) -> tuple:
        return tuple(self.snaps.items())

    def read(self, name: str, step: int):
        return read(str(self.path), step, self.snaps[step], name)

    def acts(self, hook: str, step: int) -> np.ndarray:
        return acts(str(self.path), step, self.snaps[step], hook)

    def over_training(self, name: str) -> dict[int, np.ndarray]:
        """A small per-snapshot dataset at every snapshot, {step: array}."""
        return {s: self.read(name, s) for s in self.steps}

    def metrics(self) -> pd.DataFrame:
        return metrics(str(self.path), _mtime(self.path / "metrics.csv"))

    def snapshot_table(self) -> pd.DataFrame:
        return snapshot_table(str(self.path), self.key)

    def head_metrics(self) -> pd.DataFrame:
        return head_metrics(str(self.path), self.key)

    def probes(self):
        return probes(str(self.path), _mtime(self.path / "probes.h5"))

    def tokenizer(self):
        return tokenizer(str(self.path), _mtime(self.path / "tokenizer.json"))

    def vocab(self) -> list[str]:
        return vocab(str(self.path), _mtime(self.path / "tokenizer.json"), self.run.model_config.d_vocab)

    def model(self, step: int):
        return model(str(self.path), step, self.snaps[step])
