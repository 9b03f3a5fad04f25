"""Checkpoints: weights and training state as safetensors, never pickle.

    runs/<name>/checkpoints/step-000120.safetensors        weights + model config (metadata)
    runs/<name>/checkpoints/step-000120.state.safetensors  optimizer moments, RNG, loop position

Every file is written to a temporary name, fsynced and renamed, so a crash leaves either the
previous file or the complete new one. Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from guppy.config import ModelConfig
from guppy.run.writer import atomic_write


def save_weights(model: torch.nn.Module, path: Path, step: int, extra: dict | None = None) -> None:
    # clone: tied embeddings share storage, which safetensors refuses; contiguous for the file
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"model_config": json.dumps(model.cfg.to_dict()), "step": str(step), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_weights(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    """(model config, state dict, metadata) of a weights file; ValueError naming the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "model_config" not in meta:
            raise ValueError("no model_config in its metadata")
        cfg = ModelConfig.from_dict(json.loads(meta["model_config"]))
        return cfg, load_file(str(path)), meta
    except (OSError, SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable guppy checkpoint ({e})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """A GuppyLM with the weights of checkpoint `path`, in eval mode."""
    from guppy.model.transformer import GuppyLM

    cfg, tensors, _ = read_weights(path)
    model = GuppyLM(cfg)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match its model config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()


def save_state(path: Path, optimizer: torch.optim.Optimizer, loop: dict, scaler=None) -> None:
    """Optimizer moments (by parameter index), RNG state and the loop position."""
    tensors = {"rng.torch": torch.get_rng_state()}
    for i, st in optimizer.state_dict()["state"].items():
        for key, value in st.items():
            tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous().clone()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    meta = {"loop": json.dumps(loop), "param_groups": json.dumps(groups)}
    if scaler is not None and scaler.is_enabled():
        meta["scaler"] = json.dumps({k: float(v) if torch.is_tensor(v) else v for k, v in scaler.state_dict().items()})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_state(path: Path, optimizer: torch.optim.Optimizer, scaler=None) -> dict:
    """Restore what `save_state` wrote; returns the loop position."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{path}: unreadable training state ({e})") from None
    current = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    groups = json.loads(meta["param_groups"])
    for g, saved in zip(current["param_groups"], groups):
        g.update(saved)
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(json.loads(meta["scaler"]))
    return json.loads(meta["loop"])
