"""Reading a run folder: the one way tools (chat, eval, probes, dashboard) load a run."""

from __future__ import annotations

from pathlib import Path

from guppy.checkpoint import list_checkpoints, load_model
from guppy.runfiles import read_run_json, read_train_config
from guppy.tokenizer import ChatTokenizer


def resolve_checkpoint(run_dir: str | Path, which: str | int = "latest") -> Path:
    """The weights file of checkpoint `which` (a step number, or 'latest')."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder")
    found = list_checkpoints(run_dir)
    if not found:
        raise ValueError(f"{run_dir}: the run has no checkpoint yet")
    if which == "latest":
        return found[max(found)]
    try:
        return found[int(which)]
    except (ValueError, KeyError):
        steps = ", ".join(map(str, found))
        raise ValueError(f"{run_dir}: no checkpoint {which!r}; expected 'latest' or one of steps {steps}") from None


def load_for_inference(run_dir: str | Path, which: str | int = "latest", device: str = "cpu"):
    """(model, tokenizer, checkpoint path) of a run, the model in eval mode."""
    path = resolve_checkpoint(run_dir, which)
    read_run_json(run_dir)  # a clear error if this is not a run folder
    tokenizer = ChatTokenizer.load(Path(run_dir) / "tokenizer.json")
    return load_model(path, device), tokenizer, path


def load_eval_data(run_dir: str | Path):
    """The persona and held-out chats a run was trained against (regenerated, cached)."""
    from guppy.data import load_dataset
    from guppy.train import data_config

    data = load_dataset(data_config(read_train_config(Path(run_dir))))
    return data.persona, data.chats.eval
