"""The Watchdog: the trainer's always-on observer of health, spikes and divergence.

Every step: per-parameter gradient, update and weight norms into a ring buffer (a few fused
passes over the weights, no host sync) and a check that the gradients are finite. On logged
steps: the per-layer health row (guppy.health.signals) into health.csv. On a loss spike (above
--spike-factor x the recent median): a note in run.json and, when recording, a snapshot; the
run goes on. On divergence (a non-finite loss or gradient): forensics into
runs/<name>/forensics/step-N/ (guppy.health.forensics, guppy.health.files) and the one-line account
that guppy-train ends with.

`InjectFault` (tests, demonstrations) scales one hook point's activation at one step, so a
test can check that the forensics name that very hook first. `resume_config` lets
`guppy-train --resume RUN --lr X` continue a diverged run with a changed schedule, keeping the
change in run.json's history.

The Watchdog is part of the training loop, not an observer: the Trainer owns it and calls it
with itself at the points a Callback is called (the forensics need the optimizer's scaler, the
device, the data and the last checkpoint, which a `TrainView` does not show). It does not import
the trainer; it reads trainer.model, .step, .total_steps, .cfg, .scaler, .step_loss, .run_dir,
.ranks, .callbacks, .show_progress, .data, .device, .dtype, .last_checkpoint and .view().
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from guppy.config import TrainConfig
from guppy.health.files import write_forensics
from guppy.health.forensics import Diverged, SpikeDetector, StepRing, first_bad, hook_table, replay
from guppy.health.signals import ForwardSignals, health_row, is_logged
from guppy.record.recorder import Recorder
from guppy.run import writer as run_writer
from guppy.run.checkpoint import read_weights, save_weights
from guppy.run.format import (
    BATCH_FILE,
    DIVERGENCE_KEY,
    FORENSICS_DIR,
    HEALTH_FILE,
    HISTORY_KEY,
    HOOKS_FILE,
    PARAMS_FILE,
    REPLAY_PARAMS_FILE,
    SPIKES_KEY,
    SUMMARY_FILE,
    health_columns,
    list_checkpoints,
    snapshot_path,
    state_path,
    step_name,
)
from guppy.train.callbacks import Callback

RING_STEPS = 16  # steps of per-parameter norms kept for the forensics
RESUME_CHANGES = ("lr", "warmup_steps", "grad_clip", "min_lr")  # what a diverged run may resume with


class Watchdog:
    def __init__(self, spike_factor: float = 0.0, ring_steps: int = RING_STEPS):
        self.spikes = SpikeDetector(spike_factor)
        self.ring_steps = ring_steps
        self.cause = ""

    # ---- the callback methods ---------------------------------------------------------------

    def on_train_start(self, trainer) -> None:
        model = trainer.model
        self.main = trainer.ranks.is_main
        self.ring = StepRing(list(model.named_parameters()), self.ring_steps)
        self.forward = ForwardSignals(model)
        self.start_step = trainer.step
        # the weights this session began with: the baseline a break is compared against when
        # no earlier weights file exists (one copy, kept on the CPU)
        self.start_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.health = run_writer.MetricsWriter(Path(trainer.run_dir) / HEALTH_FILE, health_columns(model.cfg.n_layers))
        if self.main:  # a resumed run writes its rows and spikes after the checkpoint again
            self.health.truncate_after(trainer.step)
            spikes = run_writer.read_run_json(trainer.run_dir).get(SPIKES_KEY, [])
            if any(s["step"] > trainer.step for s in spikes):
                run_writer.update_run_json(trainer.run_dir, **{SPIKES_KEY: [s for s in spikes if s["step"] <= trainer.step]})
        if is_logged(trainer.step + 1, trainer.total_steps, trainer.cfg.log_every):
            self.forward.start()

    def on_after_backward(self, trainer) -> torch.Tensor:
        """Records this step's gradient norms (P,) and returns them: the Trainer clips by them
        (`guppy.train.trainer.clip_by_norms`) rather than take every norm again."""
        grads = self.ring.record_grads(trainer.step + 1)
        self.forward.stop()
        # fp16's GradScaler skips a step with inf gradients and lowers its scale: that is no break
        if not trainer.scaler.is_enabled() and not bool(torch.isfinite(grads).all()):
            bad = int((~torch.isfinite(grads)).sum())
            self.cause = f"gradient non-finite in {bad} of {len(grads)} parameters"
            raise Diverged(f"gradient became non-finite at step {trainer.step + 1}")
        return grads

    def on_step_end(self, trainer) -> None:
        self.ring.record_update()
        step, loss = trainer.step, trainer.step_loss
        median = self.spikes.observe(loss)
        if median is not None:
            self._spike(trainer, loss, median)
        if is_logged(step, trainer.total_steps, trainer.cfg.log_every):
            if self.main:
                g, u, w = self.ring.latest()
                scale = float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else None
                forward = {k: self.forward.last.get(k, float("nan")) for k in health_columns(trainer.model.cfg.n_layers)
                           if k.endswith(("attn_logit_max", "resid_rms"))}
                self.health.write(health_row(step, loss, float(g.norm()), scale, forward, g, u, w, self.ring.layers,
                                             trainer.model.cfg.n_layers))
        if is_logged(step + 1, trainer.total_steps, trainer.cfg.log_every) and step < trainer.total_steps:
            self.forward.start()

    def on_eval(self, trainer, metrics: dict) -> None:
        pass

    def on_train_end(self, trainer, status: str) -> None:
        self.forward.stop()
        self.health.close()

    # ---- spikes -----------------------------------------------------------------------------

    def _spike(self, trainer, loss: float, median: float) -> None:
        if not self.main:
            return
        recorder = next((cb for cb in trainer.callbacks if isinstance(cb, Recorder)), None)
        snapshot = None
        if recorder is not None:
            done = snapshot_path(trainer.run_dir, trainer.step)
            snapshot = (done if done.exists() else recorder.snapshot(trainer.view())).name
        note = {"step": trainer.step, "loss": loss, "median": median, "factor": loss / median, "snapshot": snapshot}
        spikes = run_writer.read_run_json(trainer.run_dir).get(SPIKES_KEY, [])
        run_writer.update_run_json(trainer.run_dir, **{SPIKES_KEY: [*spikes, note]})
        if trainer.show_progress:
            print(f"\nspike at step {trainer.step}: loss {loss:.3g} is {loss / median:.1f}x the recent median "
                  f"{median:.3g}" + (f"; snapshot {snapshot}" if snapshot else ""), file=sys.stderr)

    # ---- divergence -------------------------------------------------------------------------

    def diverged(self, trainer, micro: list[np.ndarray]) -> str:
        """Write the forensics of the step that broke; return the one-line account."""
        self.forward.stop()  # a loss that broke before the backward left this step's watch open
        step = trainer.step + 1
        loss = trainer.step_loss
        cause = f"loss {loss}" if not math.isfinite(loss) else (self.cause or "non-finite")
        ckpt = trainer.last_checkpoint
        where = f"last good checkpoint {ckpt.stem}" if ckpt else "no checkpoint yet to resume from"
        if not self.main:
            return f"diverged at step {step}: {cause}"
        try:
            facts = self._forensics(trainer, step, cause, micro)
        except Exception as e:  # the account must not hide the divergence itself
            run_writer.update_run_json(trainer.run_dir, **{DIVERGENCE_KEY: {"step": step, "cause": cause, "error": repr(e)}})
            return f"diverged at step {step}: {cause}; forensics failed ({type(e).__name__}: {e}); {where}"
        hook, why = facts["first_bad_hook"], facts["first_bad_kind"]
        label = "max attention logit" if hook and hook.endswith("hook_attn_scores") else "max |x|"
        named = {"non-finite": "first non-finite", "non-finite gradient": "first non-finite gradient",
                 "fastest growth": "fastest growth"}.get(why, why)
        growth = facts["first_bad_growth"]
        grew = f", x{growth:.3g} over the last {facts['growth_steps']} steps" if math.isfinite(growth) else ""
        said = f"{named}: {hook} ({label} {facts['first_bad_max_abs']:.2g}{grew})" if hook else named
        top = f"largest update ratio: {facts['top_param']} ({facts['top_update_ratio']:.2g} at step " \
              f"{facts['top_update_step']})" if facts["top_param"] else "no update ratios yet"
        message = f"diverged at step {step}: {cause}; {said}; {top}; forensics in {facts['forensics']}/; {where}"
        facts["message"] = message
        run_writer.update_run_json(trainer.run_dir, **{DIVERGENCE_KEY: facts})
        return message

    def _forensics(self, trainer, step: int, cause: str, micro) -> dict:
        from guppy.data.dataset import collate

        model, data = trainer.model, trainer.data
        params_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        weights_step = step - 1
        if not params_finite:  # the last update broke the weights: go back to the newest file
            found = {s: p for s, p in list_checkpoints(trainer.run_dir).items() if s < step}
            if found:
                weights_step = max(found)
                model.load_state_dict(read_weights(found[weights_step])[1])
        idx = np.concatenate(micro)
        inputs, targets, mask = collate(data.train, idx, data.tokenizer.pad_id, model.cfg.n_ctx,
                                        trainer.cfg.loss_on == "reply")
        x, y, m = (torch.from_numpy(a).to(trainer.device) for a in (inputs, targets, mask))
        rows, grads, replay_loss, param_grads = replay(model, x, y, m)
        base_step, baseline = self._baseline(trainer, weights_step, x, y, m)
        table = hook_table(rows, grads, baseline)
        hook, why = first_bad(table, list(grads))
        named = next((r for r in table if r["hook"] == hook), None)
        if named:
            named["first_bad"] = True
        ring = self.ring.table()
        top = max((r for r in ring if math.isfinite(r["update_ratio"])), key=lambda r: r["update_ratio"], default=None)
        chats = [data.train.chat(int(i))[: model.cfg.n_ctx + 1].tolist() for i in idx]  # as the step saw them
        batch = [{"chat": int(i), "length": len(ids), "tokens": " ".join(map(str, ids)),
                  "text": data.tokenizer.decode(ids)} for i, ids in zip(idx, chats)]
        folder = Path(FORENSICS_DIR) / step_name(step)
        facts = {
            "step": step, "cause": cause, "loss": trainer.step_loss, "replay_loss": replay_loss,
            "first_bad_hook": hook, "first_bad_kind": why,
            "first_bad_max_abs": named["max_abs"] if named else float("nan"),
            "first_bad_growth": named["growth"] if named else float("nan"),
            "weights_step": weights_step, "baseline_step": base_step, "growth_steps": weights_step - base_step,
            "top_param": top["param"] if top else None, "top_update_ratio": top["update_ratio"] if top else None,
            "top_update_step": top["step"] if top else None,
            "last_checkpoint": trainer.last_checkpoint.name if trainer.last_checkpoint else None,
            "forensics": str(Path(trainer.run_dir) / folder), "precision": str(trainer.dtype).replace("torch.", ""),
        }
        files = {SUMMARY_FILE: facts, HOOKS_FILE: table, PARAMS_FILE: ring, BATCH_FILE: batch,
                 REPLAY_PARAMS_FILE: [{"param": n, "grad_norm": g} for n, g in param_grads.items()]}
        write_forensics(trainer.run_dir, step, files,
                        lambda path: save_weights(model, path, weights_step, {"forensics_of_step": str(step)}))
        return facts

    def _baseline(self, trainer, weights_step: int, x, y, m) -> tuple[int, dict[str, float]]:
        """max |x| per hook point of the same batch on earlier weights: the newest weights file
        before `weights_step`, else the weights this session started from."""
        from guppy.model.transformer import GuppyLM

        found = {s: p for s, p in list_checkpoints(trainer.run_dir).items() if s < weights_step}
        if found:
            base_step = max(found)
            state = read_weights(found[base_step])[1]
        else:
            base_step, state = self.start_step, self.start_weights
        earlier = GuppyLM(trainer.model.cfg).to(trainer.device)  # apart: a fault hook on the model stays out
        earlier.load_state_dict(state)
        rows, _, _, _ = replay(earlier, x, y, m, backward=False)
        return base_step, {r["hook"]: r["max_abs"] for r in rows}


# ---- resuming a diverged run ------------------------------------------------------------------


def resume_config(run_dir: Path, changes: dict) -> TrainConfig:
    """The run's config with `changes` (from RESUME_CHANGES) applied, recorded in run.json's
    history; without changes, the run's own config. Only a diverged run may change."""
    flags = ", ".join(f"--{k.replace('_', '-')}" for k in changes)
    allowed = ", ".join(f"--{k.replace('_', '-')}" for k in RESUME_CHANGES)
    if any(k not in RESUME_CHANGES for k in changes):
        raise ValueError(f"--resume continues a run with its own config; drop {flags} "
                         f"(only {allowed} may change, and only for a diverged run)")
    cfg = run_writer.read_train_config(run_dir)
    if not changes:
        return cfg
    meta = run_writer.read_run_json(run_dir)
    if meta.get("status") != "diverged":
        raise ValueError(f"--resume continues a run with its own config; drop {flags} "
                         f"(the run is {meta.get('status')}; only a diverged run resumes with {allowed})")
    try:
        new = replace(cfg, **changes)
    except ValueError as e:
        raise ValueError(f"--resume {run_dir}: {e}") from None
    usable = [s for s, p in list_checkpoints(run_dir).items() if state_path(p).exists()]
    if not usable:
        raise ValueError(f"{run_dir}: diverged before its first checkpoint, so there is nothing good to resume "
                         f"from; start a new run with the changed flags (and --eval-every N for checkpoints)")
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from_step": max(usable),
             "changes": {k: [getattr(cfg, k), v] for k, v in changes.items()}, "after": meta.get(DIVERGENCE_KEY)}
    run_writer.update_run_json(run_dir, train_config=new.to_dict(),
                             **{HISTORY_KEY: [*meta.get(HISTORY_KEY, []), entry], DIVERGENCE_KEY: None})
    return new


# ---- a fault on purpose -----------------------------------------------------------------------


class InjectFault(Callback):
    """Scale hook point `hook`'s activation by `scale` during the step that becomes step `step`
    (inf: the classic overflow). The fault stays armed through that step's forensics replay,
    which replays that step; the baseline model of the replay is a separate copy, unhooked."""

    def __init__(self, hook: str, step: int, scale: float = float("inf")):
        self.hook, self.step, self.scale = hook, step, scale
        self.armed = False

    def _fn(self, x, hook):
        return x * self.scale if self.armed else None

    def on_train_start(self, trainer) -> None:
        trainer.model.hook_dict[self.hook].fwd.append(self._fn)
        self.armed = trainer.step + 1 == self.step

    def on_after_backward(self, trainer) -> None:
        pass

    def on_step_end(self, trainer) -> None:
        self.armed = trainer.step + 1 == self.step

    def on_eval(self, trainer, metrics: dict) -> None:
        pass

    def on_train_end(self, trainer, status: str) -> None:
        trainer.model.hook_dict[self.hook].fwd.remove(self._fn)
