"""Writing a run folder: run.json, tokenizer.json, metrics.csv, the progress bar (names: guppy.run.format).

Reading runs is `guppy.run.reader`' job; this module is the writer's side, used by the trainer.
It imports no torch, so tools that only read files (the dashboard) start fast.
run.json is rewritten atomically on every change; metrics.csv is appended line by line and
flushed, so a reader sees whole rows (a torn last line from a crash is skipped on read).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from guppy.config import TrainConfig
from guppy.run.format import METRIC_COLUMNS, RUN_JSON, SCHEMA_VERSION, TOKENIZER_JSON


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)`, then fsync and rename onto `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict:
    import numpy
    import tokenizers
    import torch

    import guppy
    return {"guppy": guppy.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "tokenizers": tokenizers.__version__}


def new_run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.runs_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} already exists; continue it with --resume {run_dir} or pick another --run-name")
    return run_dir


def read_run_json(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; is {run_dir} a guppy run folder?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable run file ({e})") from None


def read_train_config(run_dir: Path) -> TrainConfig:
    meta = read_run_json(run_dir)
    try:
        return TrainConfig.from_dict(meta["train_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{Path(run_dir) / RUN_JSON}: bad train_config ({e})") from None


def write_new_run(run_dir: Path, cfg: TrainConfig, model_cfg, data) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    data.tokenizer.save(run_dir / TOKENIZER_JSON)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "status": "created",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_config": cfg.to_dict(),
        "model_config": model_cfg.to_dict(),
        "data_config": asdict(data.config),
        "data_stats": data.stats,
        "topics": data.topics,
        "versions": versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
    }
    _write_json(run_dir / RUN_JSON, meta)


def update_run_json(run_dir: Path, **changes) -> None:
    meta = read_run_json(run_dir)
    meta.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_json(Path(run_dir) / RUN_JSON, meta)


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, default=str)))


class MetricsWriter:
    """Appends rows to a table of logged steps (metrics.csv, health.csv), one flushed line per row."""

    def __init__(self, path: Path, columns=METRIC_COLUMNS):
        self.path, self.columns = Path(path), list(columns)
        self.file = None

    def _open(self):
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.file = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=self.columns, extrasaction="raise")
            if new:
                self.writer.writeheader()
        return self.writer

    def write(self, row: dict) -> None:
        self._open().writerow({k: _fmt(v) for k, v in row.items()})
        self.file.flush()

    def truncate_after(self, step: int) -> None:
        """Drop rows beyond `step` (written after the checkpoint a resume starts from)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if _whole(r) and int(r["step"]) <= step]

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.columns)
                w.writeheader()
                w.writerows(rows)
        atomic_write(self.path, write)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _whole(row: dict) -> bool:
    return None not in row.values() and None not in row and (row.get("step") or "").isdigit()


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, disable=not enabled, unit="step", dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)

