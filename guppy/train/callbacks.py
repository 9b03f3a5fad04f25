"""How observers plug into training: the `Callback` protocol and the `TrainView` they receive.

The training loop (`guppy.train.trainer`) calls these; the recorder (`guppy.record.recorder`) and tests implement
them. Neither side imports the other: both import this module, which imports no guppy module,
so the loop knows nothing about recording and a reader of runs never imports the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainView:
    """What an observer may read of a training run at one moment: a fresh, frozen view per call,
    so no observer can move the loop. `model` is the live model (its weights are the point)."""

    run_dir: Path
    model: Any  # guppy.model.transformer.GuppyLM, in whatever mode the loop left it
    data: Any  # guppy.data.dataset.Dataset: tokenizer, chats, topics
    total_steps: int
    steps_per_epoch: int
    step: int  # optimizer steps taken
    epoch: int  # completed passes
    epoch_step: int  # optimizer steps taken of the current pass
    tokens: int  # real tokens trained on so far
    elapsed: float  # seconds of training so far (evaluation and recording excluded)

    @property
    def epoch_progress(self) -> float:
        return round(self.epoch + self.epoch_step / self.steps_per_epoch, 4)

    @property
    def at_epoch_end(self) -> bool:
        return self.epoch_step == self.steps_per_epoch


class Callback:
    """Observes training; every method is optional. Under torchrun every rank runs the callbacks
    it is given (start_run gives the Recorder to rank 0 only)."""

    def on_train_start(self, view: TrainView) -> None: ...
    def on_after_backward(self, view: TrainView) -> None: ...  # p.grad holds this step's gradients (unclipped)
    def on_step_end(self, view: TrainView) -> None: ...
    def on_eval(self, view: TrainView, metrics: dict) -> None: ...
    def on_train_end(self, view: TrainView, status: str) -> None: ...
