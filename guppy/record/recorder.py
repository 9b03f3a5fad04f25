"""Recording: snapshots of the model's insides on the fixed watch set, written to HDF5.

The Recorder is a training `Callback`: it sees the run through a `TrainView` and the model
through hook names only. What a snapshot holds is the list of measures in `guppy.record.measures`.

    runs/<name>/watch.h5                   the watch set, stored once
    runs/<name>/snapshots/step-000064.h5   one file per snapshot, renamed into place when whole
    runs/<name>/checkpoints/step-000064.safetensors   the weights of every snapshot

A snapshot file appears only once complete (temp name, fsync, rename), so a reader never sees
half of one and a killed process loses nothing that was finished.
"""

from __future__ import annotations

import fnmatch
import math
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from guppy.record.measures import Measure, ParamStats, Pass, default_measures
from guppy.run import format as R
from guppy.run.checkpoint import save_weights
from guppy.run.watch_set import WatchSet, build_watch_set
from guppy.run.writer import atomic_write
from guppy.train.callbacks import Callback, TrainView

DEFAULT_HOOKS = "blocks.*.attn.hook_pattern,blocks.*.hook_resid_pre,blocks.*.hook_resid_post"
COMPRESS = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


# ---- the schedule ---------------------------------------------------------------------------


def snapshot_schedule(total_steps: int, every: int = 0, log_spaced: bool = True) -> set[int]:
    """Step 0, every `every` steps (default: total/10) and the last step; with `log_spaced`,
    also powers of two below the first linear step, where structure forms fastest.
    Epoch ends are added by the recorder as they happen."""
    every = every or max(1, total_steps // 10)
    steps = {0, total_steps} | set(range(every, total_steps - every // 2 + 1, every))  # none just before the end
    if log_spaced:
        steps |= {2**i for i in range(int(math.log2(every)) + 1) if 2**i < every}
    return {s for s in steps if 0 <= s <= total_steps}


def stored_hooks(names: list[str], hooks: str) -> list[str]:
    """The hook points a comma-separated list of names/globs chooses, in model order; a glob that
    matches nothing is a ValueError. blocks.l.hook_resid_post is the very tensor blocks.l+1.hook_resid_pre
    holds, so it is stored once, under the latter name (`Run.acts` reads either name)."""
    globs = [h.strip() for h in hooks.split(",") if h.strip()]
    bad = [g for g in globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]
    if bad:
        raise ValueError(f"--record-hooks: {bad[0]!r} matches no hook point (e.g. blocks.*.attn.hook_pattern)")
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
    return [n for n in chosen if R.resid_alias(n) not in chosen]


# ---- the recorder ---------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self, every: int = 0, hooks: str = DEFAULT_HOOKS, full_inputs: int = 12, log_spaced: bool = True,
                 n_replies: int = 3, reply_tokens: int = 24, measures: list[Measure] | None = None):
        self.every, self.hooks = every, hooks
        self.full_inputs, self.log_spaced = full_inputs, log_spaced
        self.measures = default_measures(n_replies, reply_tokens) if measures is None else measures
        self.history = [m for m in self.measures if isinstance(m, ParamStats)]  # fed by training steps
        self.seconds = 0.0  # time spent recording, for the overhead figure

    # -- callback interface --

    def on_train_start(self, view: TrainView) -> None:
        t0 = time.perf_counter()
        self.start(view.run_dir, view.model, view.data, view.total_steps)
        self.seconds += time.perf_counter() - t0
        if view.step == 0 and not R.snapshot_path(self.run_dir, 0).exists():
            self.snapshot(view)

    def start(self, run_dir: Path, model, data, total_steps: int) -> None:
        """Open (or make) the run's watch set and plan the snapshots; `data` is only needed
        when the run has no watch set yet (its held-out chats and tokenizer build one)."""
        self.run_dir = Path(run_dir)
        self.store = stored_hooks(model.hook_names, self.hooks)  # a bad glob: nothing written yet
        (self.run_dir / R.SNAPSHOTS_DIR).mkdir(parents=True, exist_ok=True)
        path = R.watch_path(self.run_dir)
        if path.exists():  # a resumed run keeps its watch set
            self.watch = WatchSet.load(path)
        else:
            self.watch = build_watch_set(data, model.cfg.n_ctx, self.full_inputs)
            self.watch.save(path)
        self.tokenizer = data.tokenizer if data is not None else None
        self.schedule = snapshot_schedule(total_steps, self.every, self.log_spaced)

    def _due(self, view: TrainView, step: int) -> bool:
        return step in self.schedule or view.at_epoch_end

    def on_after_backward(self, view: TrainView) -> None:
        due = self._due(view, view.step + 1)  # keep the weights to measure this step's update
        for m in self.history:
            m.after_backward(view.model, keep_weights=due)

    def on_step_end(self, view: TrainView) -> None:
        if self._due(view, view.step):
            self.snapshot(view)

    # -- taking a snapshot --

    def snapshot(self, view: TrainView) -> Path:
        t0 = time.perf_counter()
        model, step = view.model, view.step
        out = R.snapshot_path(self.run_dir, step)
        was_training = model.training
        model.eval()
        arrays = self.measure(model)
        model.train(was_training)
        attrs = {"schema_version": R.SCHEMA_VERSION, "step": step, "epoch": view.epoch_progress,
                 "tokens": view.tokens, "time": view.elapsed, "wall_time": time.time()}
        atomic_write(out, lambda tmp: write_snapshot(tmp, arrays, attrs))
        weights = R.checkpoint_path(self.run_dir, step)
        if not weights.exists():
            save_weights(model, weights, step, {"epoch": str(view.epoch_progress), "tokens": str(view.tokens)})
        self.seconds += time.perf_counter() - t0
        return out

    def measure(self, model) -> dict[str, np.ndarray]:
        """Every measure over the watch set: one forward and one backward into the activations
        (never the weights), hooks reducing activations as they pass; then each writes."""
        p = Pass(model, self.watch, self.tokenizer, self.store)
        fwd = [h for m in self.measures for h in m.hooks(p)]
        bwd = [h for m in self.measures for h in m.grad_hooks(p)]

        def leaf(x, hook):  # gradients flow from here: activations only, no weight gradients
            return x.detach().requires_grad_(True)

        params = [q for q in model.parameters() if q.requires_grad]
        for q in params:
            q.requires_grad_(False)
        try:
            with torch.enable_grad():
                final = model.run_with_hooks(p.tokens, fwd_hooks=[("hook_embed", leaf)] + fwd, bwd_hooks=bwd,
                                             stop_at_layer=model.cfg.n_layers)  # (B, T, D), before ln_final
                # every recorded loss is of a reply token: decode those positions only (N, V)
                p.reply_losses = torch.nn.functional.cross_entropy(
                    model.unembed(model.ln_final(final[:, :-1][p.reply])).float(), p.targets, reduction="none")
                p.mean_loss = p.reply_losses.mean()
                p.mean_loss.backward()
        finally:
            for q in params:
                q.requires_grad_(True)
        out: dict[str, np.ndarray] = {}
        for m in self.measures:
            m.write(p, out)
        return out


def write_snapshot(path: Path, arrays: dict, attrs: dict) -> None:
    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        for name, value in arrays.items():
            value = np.asarray(value)
            big = value.ndim >= 2 and value.size >= 4096 and value.dtype.kind == "f"
            f.create_dataset(name, data=value, **(COMPRESS | {"chunks": True} if big else {}))
