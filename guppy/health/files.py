"""Health and forensics on disk: file names, columns, the writers and the readers. No torch.

    runs/<name>/health.csv                      one row per logged step: per-layer signals
    runs/<name>/forensics/step-000812/          what a divergence at step 812 left behind
        summary.json       the facts of the one-line message (also in run.json "divergence")
        hooks.csv          every hook point of the fp32 replay, in forward order
        params.csv         per-parameter gradient norms and update ratios of the last steps
        replay_params.csv  per-parameter gradient norms of the fp32 replay
        batch.csv          the batch that broke: chat index, token ids, text
        weights.safetensors  the last good weights (those the replay ran on)

health.csv is written like metrics.csv (flushed whole rows; a torn last line is skipped on
read). A forensics folder is written under a hidden temporary name and renamed into place
when complete, so a process killed while writing it leaves no half folder (and no half file:
each file inside is also written atomically). The trainer's side lives in guppy.health.signals and
guppy.health.forensics; `guppy.run.reader` reads through `read_health` and `read_forensics`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from guppy.run.writer import atomic_write

if TYPE_CHECKING:
    import pandas as pd

from guppy.run.format import (  # noqa: E402
    BATCH_FILE,
    FORENSICS_DIR,
    HEALTH_FILE,
    HOOKS_FILE,
    PARAMS_FILE,
    REPLAY_PARAMS_FILE,
    SUMMARY_FILE,
    TABLE_COLUMNS,
    WEIGHTS_FILE,
    forensics_path,
)

# ---- writing ----------------------------------------------------------------------------------


def _whole_lines(text: str) -> list[str]:
    """Lines that were written whole: a row being written right now has no newline yet."""
    return text[: text.rfind("\n") + 1].splitlines()


def write_forensics(run_dir: Path, step: int, files: dict[str, object], weights_writer=None) -> Path:
    """Write one divergence's files into forensics/step-N/ so that the folder appears whole.

    `files` maps a file name to its content: a dict (JSON), a list of row dicts (CSV) or a
    pandas frame (CSV). `weights_writer(path)` writes the weights file, if given."""
    root = Path(run_dir) / FORENSICS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = forensics_path(run_dir, step)
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a folder a killed process left half-written
    tmp.mkdir()
    for name, content in files.items():
        atomic_write(tmp / name, lambda path, c=content, n=name: _write_content(path, c, TABLE_COLUMNS.get(n, ())))
    if weights_writer is not None:
        weights_writer(tmp / WEIGHTS_FILE)
    _fsync_dir(tmp)
    if final.exists():  # the same step diverged again after a resume: the newer account wins
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def _write_content(path: Path, content, columns=()) -> None:
    if isinstance(content, dict):
        path.write_text(json.dumps(content, indent=1, default=str))
    elif hasattr(content, "to_csv"):
        content.to_csv(path, index=False)
    else:
        rows = list(content)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(columns))
            w.writeheader()
            w.writerows(rows)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- reading ----------------------------------------------------------------------------------


def read_health(run_dir: str | Path) -> "pd.DataFrame":
    """health.csv as pandas (empty if the run has none yet); a torn last line is skipped."""
    import pandas as pd

    path = Path(run_dir) / HEALTH_FILE
    if not path.exists():
        return pd.DataFrame()
    lines = _whole_lines(path.read_text())
    if not lines:
        return pd.DataFrame()
    try:
        return pd.read_csv(io.StringIO("\n".join(lines) + "\n"))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: unreadable health table ({e})") from None


def forensic_steps(run_dir: str | Path) -> list[int]:
    """Steps whose forensics folder is complete, oldest first (half-written ones are hidden)."""
    root = Path(run_dir) / FORENSICS_DIR
    steps = []
    for d in root.glob("step-*") if root.is_dir() else ():
        if d.is_dir() and d.name[5:].isdigit():
            steps.append(int(d.name[5:]))
    return sorted(steps)


@dataclass(frozen=True)
class Forensics:
    """What one divergence left: the summary facts and the tables, as pandas."""

    step: int
    folder: Path
    summary: dict
    hooks: "pd.DataFrame"  # one row per hook point, forward order; first_bad marks the one named
    params: "pd.DataFrame"  # long: step, param, grad_norm, update_ratio over the last steps
    replay_params: "pd.DataFrame"  # param, grad_norm of the fp32 replay
    batch: "pd.DataFrame"  # chat, length, tokens (space-separated ids), text

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def first_bad(self) -> str | None:
        return self.summary.get("first_bad_hook")


def read_forensics(run_dir: str | Path, step: int | str = "latest") -> Forensics:
    """The forensics of the divergence at `step` ('latest': the newest); ValueError naming the folder."""
    import pandas as pd

    steps = forensic_steps(run_dir)
    if not steps:
        raise ValueError(f"{Path(run_dir) / FORENSICS_DIR}: no forensics (the run has not diverged)")
    if step == "latest":
        step = steps[-1]
    if step not in steps:
        raise ValueError(f"{Path(run_dir) / FORENSICS_DIR}: no forensics for step {step!r}; have {steps}")
    folder = forensics_path(run_dir, int(step))
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        tables = {name: pd.read_csv(folder / name, keep_default_na=True)
                  for name in (HOOKS_FILE, PARAMS_FILE, REPLAY_PARAMS_FILE, BATCH_FILE)}
    except (OSError, json.JSONDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{folder}: unreadable forensics ({e})") from None
    return Forensics(int(step), folder, summary, tables[HOOKS_FILE], tables[PARAMS_FILE],
                     tables[REPLAY_PARAMS_FILE], tables[BATCH_FILE])
