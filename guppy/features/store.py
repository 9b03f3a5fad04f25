"""The features folder of a run (guppy.run.format: FEATURES_DIR): one snapshot's SAE and scores written
whole, and every snapshot read back as pandas.

    write_snapshot(run_dir, hook, step, sae, scores)     # an SAE folder, renamed into place when complete
    read_features(run_dir, hook)                         # per feature per step, with its lineage
    read_table(run_dir, hook, R.TOPIC_TABLE)             # any per-snapshot table, a `step` column first
    read_summary(run_dir, hook)                          # one row per step: reconstruction, counts, topics found
    write_lineage(run_dir, hook)                         # lineage.csv from every saved decoder

A run without a features folder, or a hook without SAEs, reads as empty frames with their
columns: "not computed yet" (guppy-sae computes them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from guppy.features.lineage import MATCH_COSINE, lineages
from guppy.features.sae import SAESettings, SparseCoder, save_sae
from guppy.run import format as R
from guppy.run.writer import atomic_write

SUMMARY_COLUMNS = ("step", "explained_variance", "heldout_explained_variance", "loss_clean", "loss_spliced", "loss_zero",
                   "loss_recovered", "l0", "dead", "dense", "width", "k", "topics", "topics_found", "topics_found_share",
                   "warm_start", "seconds")


def write_snapshot(run_dir, hook: str, step: int, sae, scores, summary: dict) -> Path:
    """One snapshot's SAE (SAELens's format) and its scores, in one folder renamed into place when whole."""
    from safetensors.torch import save_file

    folder = R.sae_dir(run_dir, hook, step)
    folder.parent.mkdir(parents=True, exist_ok=True)
    extra = {
        R.FEATURE_TABLE: lambda p: scores.features.to_csv(p, index=False),
        R.TOPIC_TABLE: lambda p: scores.topics.to_csv(p, index=False),
        R.MEMORY_TABLE: lambda p: scores.memory.to_csv(p, index=False),
        R.FEATURE_EXAMPLES_FILE: lambda p: save_file({k: v.contiguous() for k, v in scores.examples.items()}, p),
        R.SAE_SUMMARY_FILE: lambda p: Path(p).write_text(json.dumps({"step": step, **summary}, indent=1)),
    }
    save_sae(sae, folder, extra)
    return folder


def read_settings(run_dir, hook: str) -> SAESettings | None:
    path = R.features_dir(run_dir, hook) / R.SAE_SETTINGS_FILE
    if not path.exists():
        return None
    try:
        return SAESettings.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: unreadable SAE settings ({e})") from None


def write_settings(run_dir, hook: str, settings: SAESettings, extra: dict) -> None:
    folder = R.features_dir(run_dir, hook)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings.to_dict() | extra, indent=1)
    atomic_write(folder / R.SAE_SETTINGS_FILE, lambda p: Path(p).write_text(text))


def settings_extra(run_dir, hook: str) -> dict:
    """What settings.json holds besides the SAE settings (the held-out chats scored, the match threshold)."""
    path = R.features_dir(run_dir, hook) / R.SAE_SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def load_coder(run_dir, hook: str, step: int) -> SparseCoder:
    return SparseCoder.load(R.sae_dir(run_dir, hook, step))


def read_summary(run_dir, hook: str) -> pd.DataFrame:
    rows = []
    for step, folder in R.list_saes(run_dir, hook).items():
        path = folder / R.SAE_SUMMARY_FILE
        try:
            rows.append({"step": step, **json.loads(path.read_text())})
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable SAE summary ({e})") from None
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*SUMMARY_COLUMNS, *(k for r in rows for k in r)])))


def read_table(run_dir, hook: str, name: str) -> pd.DataFrame:
    """A per-snapshot table (FEATURE_TABLE, TOPIC_TABLE, MEMORY_TABLE) of every SAE, a `step` column first."""
    columns = {R.FEATURE_TABLE: R.FEATURE_COLUMNS, R.TOPIC_TABLE: R.TOPIC_COLUMNS, R.MEMORY_TABLE: R.MEMORY_COLUMNS}[name]
    frames = []
    for step, folder in R.list_saes(run_dir, hook).items():
        try:
            frames.append(pd.read_csv(folder / name).assign(step=step))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ValueError(f"{folder / name}: unreadable table ({e})") from None
    if not frames:
        return pd.DataFrame(columns=["step", *columns])
    df = pd.concat(frames, ignore_index=True)
    return df[["step"] + [c for c in df.columns if c != "step"]]


def write_lineage(run_dir, hook: str, threshold: float = MATCH_COSINE) -> pd.DataFrame:
    """lineage.csv from every saved SAE's decoder and its live features (density > 0 on its training tokens)."""
    from safetensors.torch import load_file

    snaps = []
    for step, folder in R.list_saes(run_dir, hook).items():
        dead = pd.read_csv(folder / R.FEATURE_TABLE, usecols=["dead"]).dead.to_numpy(bool)
        snaps.append((step, load_file(folder / R.SAE_WEIGHTS_FILE)["W_dec"], torch.from_numpy(~dead)))
    table = lineages(snaps, threshold)
    atomic_write(R.features_dir(run_dir, hook) / R.LINEAGE_FILE, lambda p: table.to_csv(p, index=False))
    return table


def read_lineage(run_dir, hook: str) -> pd.DataFrame:
    path = R.features_dir(run_dir, hook) / R.LINEAGE_FILE
    if not path.exists():
        return pd.DataFrame(columns=list(R.LINEAGE_COLUMNS))
    try:
        return pd.read_csv(path, dtype={"parents": str}, keep_default_na=False, na_values={"cosine": [""]})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: unreadable lineage table ({e})") from None


def read_features(run_dir, hook: str) -> pd.DataFrame:
    """Every feature of every snapshot's SAE: step, feature, lineage (-1 for a dead feature), event,
    parents, cosine, then the FEATURE_COLUMNS scores (topic, score = its F1, density, ...)."""
    feats = read_table(run_dir, hook, R.FEATURE_TABLE)
    lin = read_lineage(run_dir, hook)
    df = feats.merge(lin, on=["step", "feature"], how="left")
    df["lineage"] = df.lineage.fillna(-1).astype(int)
    df["event"] = df.event.fillna("")
    df["parents"] = df.parents.fillna("")
    first = ["step", "feature", "lineage", "event", "parents", "cosine"]
    return df[first + [c for c in df.columns if c not in first]]


def pick_hook(run_dir, hook: str | None) -> str | None:
    """The hook asked for, or the only one computed; None when none is; an error naming them when several are."""
    hooks = R.feature_hooks(run_dir)
    if hook is not None:
        if hook not in hooks:
            raise ValueError(f"{Path(run_dir) / R.FEATURES_DIR}: no SAEs for hook {hook!r}; computed: "
                             f"{', '.join(hooks) or 'none yet (guppy-sae RUN)'}")
        return hook
    if len(hooks) > 1:
        raise ValueError(f"{Path(run_dir) / R.FEATURES_DIR}: SAEs for {len(hooks)} hooks ({', '.join(hooks)}); say which")
    return hooks[0] if hooks else None
