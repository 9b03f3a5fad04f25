"""Cached reads of a run for the dashboard, all through `guppy.open_run`.

Arrays are cached by (run path, step, file mtime, name): a snapshot file is written once and
renamed into place, so its mtime names its content; a rewritten file is a new key. Nothing
caches an open h5py.File; every read opens the file for that moment only. Small datasets are
read a whole group at a time ('heads', 'grads', 'lens': a few KB, one file open instead of one
per dataset); full activations only for the hook and snapshot on screen. A view never reads a
whole run: the "over training" charts read one small group of each snapshot.
"""

from __future__ import annotations

import gc
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

import guppy
from guppy.run import format as R
from guppy.run.reader import Run, RunError

if TYPE_CHECKING:
    import pandas as pd

# What a broken run folder raises on read: a clear RunError, or whatever a truncated file throws.
READ_ERRORS = (RunError, OSError, KeyError, ValueError)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def freeze_imports() -> None:
    """Streamlit runs a full gc.collect() after every script and fragment run (runner.postScriptGC):
    with pandas, plotly (and torch, once the ablation view is open) loaded, that walks ~250k
    long-lived objects, 0.1-0.25 s added to every slider move on a 2-core machine. After new
    imports, move what exists now (modules, mostly) out of the collector's sight; later
    collections then cost a millisecond. The young generations are swept first (cheap), so
    little of this run's garbage is kept for good; a full sweep here would cost the first
    view what it saves the slider."""
    global _modules_frozen
    if len(sys.modules) != _modules_frozen:
        gc.collect(1)
        gc.freeze()
        _modules_frozen = len(sys.modules)


_modules_frozen = 0


@st.cache_resource(max_entries=16, show_spinner=False)
def _open_run(path: str, meta_mtime: int) -> Run:
    return guppy.open_run(path)


def run_of(path: str) -> Run:
    """The run at path, opened once per version of its run.json (opening parses it: ~1 ms
    that every uncached read used to pay again)."""
    return _open_run(path, _mtime(Path(path) / R.RUN_JSON))


@st.cache_data(max_entries=4096, show_spinner=False)
def read(path: str, step: int, mtime: int, name: str):
    """One dataset of one snapshot, or one group as {name: array}; float16 stays float16 here."""
    return run_of(path).read(name, step)


@st.cache_data(max_entries=512, show_spinner=False)
def acts(path: str, step: int, mtime: int, hook: str, k: int | None = None) -> np.ndarray:
    """Stored activations of one hook at one snapshot, float16: the whole probe subset (K, ...),
    or only its row k as (1, ...): a view draws one probe, and reading one row decompresses
    only its chunks (a fifth of the bytes for the guppy preset's residual stream)."""
    return run_of(path).acts(hook, step, rows=None if k is None else slice(k, k + 1))


@st.cache_data(max_entries=64, show_spinner=False)
def snapshot_check(path: str, step: int, mtime: int) -> str:
    """'' if the snapshot file is readable, else the reason (shown in the page)."""
    try:
        run_of(path).read(R.LOSS_MEAN, step)
        return ""
    except READ_ERRORS as e:
        return str(e)


@st.cache_data(max_entries=32, show_spinner=False)
def snapshot_table(path: str, key: tuple) -> pd.DataFrame:
    """step, epoch, tokens, time of every readable snapshot (key: the files' (step, mtime) pairs).
    The page names unreadable files itself (RunHandle.bad), so the reader's warning is not repeated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_of(path).snapshots.reset_index(drop=True)


@st.cache_data(max_entries=32, show_spinner=False)
def metrics(path: str, mtime: int) -> pd.DataFrame:
    return run_of(path).metrics


@st.cache_data(max_entries=16, show_spinner=False)
def head_cube(path: str, key: tuple) -> tuple[list[int], dict[str, np.ndarray]]:
    """Head metrics over training, (steps, {metric: (S, L, H) float32}), over the snapshots in
    key, their (step, mtime) pairs. Each file's 'heads' group is cached apart, so a new
    snapshot landing reads only that file. A metric an older file lacks is NaN there."""
    groups = [read(path, step, mtime, R.HEADS) for step, mtime in key]
    shape = next((v.shape for g in groups for v in g.values()), (0, 0))
    names = [m for m in R.HEAD_METRICS if any(m in g for g in groups)]
    cube = {m: np.stack([g[m] if m in g else np.full(shape, np.nan) for g in groups]).astype(np.float32)
            for m in names}
    return [step for step, _ in key], cube


@st.cache_data(max_entries=16, show_spinner=False)
def watch(path: str, mtime: int):
    return run_of(path).watch


@st.cache_resource(max_entries=16, show_spinner=False)
def tokenizer(path: str, mtime: int):
    return run_of(path).tokenizer


@st.cache_data(max_entries=16, show_spinner=False)
def vocab(path: str, mtime: int, d_vocab: int) -> list[str]:
    """The text of every token id, decoded once per run, specials included; the model's rows
    past the tokenizer's vocabulary (never trained on) read as ⟨id⟩."""
    tok = tokenizer(path, mtime)
    return [tok.decode([i], skip_special=False) for i in range(tok.vocab_size)] + \
        [f"⟨{i}⟩" for i in range(tok.vocab_size, d_vocab)]


@st.cache_resource(max_entries=2, show_spinner=False)
def model(path: str, step: int, mtime: int):
    """A checkpoint's model, keyed by its weights file's mtime (held while in use; at most two at a time)."""
    return run_of(path).model(step)


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
        run = run_of(str(path))  # RunError for a missing or half-written run.json (not cached)
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
        """A small dataset of one snapshot ('heads/induction'), read with the rest of its group
        (never the activations group: that one is megabytes; see `acts`)."""
        group, _, leaf = name.rpartition("/")
        if not group or group.split("/")[0] == R.ACTS:
            return read(str(self.path), step, self.snaps[step], name)
        values = read(str(self.path), step, self.snaps[step], group)
        if leaf not in values:
            raise RunError(f"{self.run.snapshot_files[step]}: no dataset {name!r}")
        return values[leaf]

    def acts(self, hook: str, step: int, k: int | None = None) -> np.ndarray:
        return acts(str(self.path), step, self.snaps[step], hook, k)

    def over_training(self, name: str) -> dict[int, np.ndarray]:
        """A small per-snapshot dataset at every snapshot, {step: array}."""
        return {s: self.read(name, s) for s in self.steps}

    def metrics(self) -> pd.DataFrame:
        return metrics(str(self.path), _mtime(self.path / R.METRICS_CSV))

    def snapshot_table(self) -> pd.DataFrame:
        return snapshot_table(str(self.path), self.key)

    def head_cube(self) -> tuple[list[int], dict[str, np.ndarray]]:
        return head_cube(str(self.path), self.key)

    def watch(self):
        return watch(str(self.path), _mtime(R.watch_path(self.path)))

    def tokenizer(self):
        return tokenizer(str(self.path), _mtime(self.path / R.TOKENIZER_JSON))

    def vocab(self) -> list[str]:
        return vocab(str(self.path), _mtime(self.path / R.TOKENIZER_JSON), self.run.model_config.d_vocab)

    @property
    def checkpoints(self) -> dict[int, int]:
        """step -> weights file mtime of every checkpoint: each snapshot's, and those of a run without
        snapshots (an imported GuppyLM series before guppy-record)."""
        return {step: _mtime(f) for step, f in R.list_checkpoints(self.path).items()}

    def model(self, step: int):
        """The model of checkpoint `step` (a snapshot's, or any other)."""
        return model(str(self.path), step, _mtime(R.checkpoint_path(self.path, step)))
