"""Comparing runs: `guppy.compare_runs(paths or a sweep folder)`, one object over several runs.

    cmp = guppy.compare_runs("runs/lr-study")          # a sweep folder (or any folder of run folders)
    cmp = guppy.compare_runs(["runs/a", "runs/b"])      # or runs named one by one
    cmp.settings                        # one row per run, one column per setting that differs
    cmp.metrics                         # long: run, <settings>, step, epoch, tokens, metric, value
    cmp.head_metrics()                  # long: run, <settings>, step, epoch, tokens, layer, head, metric, value
    cmp.at(0.5, by="epoch")             # {run: its snapshot step at that point of training}
    cmp.aligned(by="tokens")            # training time x run -> the snapshot step of each run
    cmp.final("eval_loss")              # per setting, over its seeds: mean, std, min, max, n
    cmp.curves("eval_loss")             # per setting and step, over its seeds: mean, std, min, max, n

A "setting" is any train or model config value that is not the same in every run (the run's
name and folder aside); `seed` is a setting too, but the summaries pool the seeds of a setting.
Runs of different shapes line up by (layer, head): a head that one run lacks has no rows.
Everything is read through `guppy.open_run`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import pandas as pd

from guppy.run.format import RUN_JSON, SWEEP_FILE, axis_keys
from guppy.run.format import SEED_KEY as SEED
from guppy.run.reader import Run, RunError, open_run

EVAL_LOSS, PERSONA_PASS = "eval_loss", "persona_pass"  # metrics.csv columns the summaries default to
TIME_AXES = ("step", "epoch", "tokens")  # what "matched training time" can mean
NOT_SETTINGS = ("run_name", "runs_dir")  # where a run lives, not how it trained


def _run_folders(path: Path) -> tuple[list[Path], dict | None]:
    """The run folders a path stands for: itself, a sweep's runs in grid order, or a folder's runs."""
    if (path / RUN_JSON).exists():
        return [path], None
    if (path / SWEEP_FILE).exists():
        try:
            sweep = json.loads((path / SWEEP_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunError(f"{path / SWEEP_FILE}: unreadable sweep file ({e})") from None
        return [path / r["name"] for r in sweep.get("runs", []) if (path / r["name"] / RUN_JSON).exists()], sweep
    if path.is_dir():
        return sorted(d for d in path.iterdir() if (d / RUN_JSON).exists()), None
    raise RunError(f"{path}: no such run or sweep folder")


def compare_runs(paths: str | Path | Sequence[str | Path]) -> "Comparison":
    """One Comparison over the runs that `paths` name: run folders, sweep folders, or folders of runs."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    folders, sweep = [], None
    for p in items:
        found, s = _run_folders(Path(p))
        folders += [f for f in found if f not in folders]
        sweep = s if len(items) == 1 else None
    if not folders:
        raise RunError(f"{', '.join(map(str, items))}: no run with a run.json to compare yet")
    names = [f.name for f in folders]
    if len(set(names)) < len(names):  # same folder names from different places: keep the parent too
        names = [f"{f.parent.name}/{f.name}" for f in folders]
    return Comparison({n: open_run(f) for n, f in zip(names, folders)}, sweep)


class Comparison:
    """Several runs read side by side; frames are built on first use and kept."""

    def __init__(self, runs: dict[str, Run], sweep: dict | None = None):
        self.runs, self.sweep = runs, sweep

    def __repr__(self) -> str:
        return f"Comparison({len(self.runs)} runs, settings={self.varied})"

    # ---- what differs ---------------------------------------------------------------------------

    @cached_property
    def settings(self) -> pd.DataFrame:
        """One row per run (index: run), one column per setting that is not the same in all runs."""
        every = {}
        for name, run in self.runs.items():
            # the model config wins: a train config field of the same name may say -1 or 0 for "the preset's"
            both = run.meta.get("train_config", {}) | run.meta.get("model_config", {})
            every[name] = {k: v for k, v in both.items() if k not in NOT_SETTINGS}
        keys = list(dict.fromkeys(k for d in every.values() for k in d))
        differ = [k for k in keys if len({json.dumps(d.get(k)) for d in every.values()}) > 1]
        first = axis_keys((self.sweep or {}).get("grid", {}))  # a sweep's own axes lead, in its order
        cols = [k for k in first if k in differ] + [k for k in differ if k not in first]
        return pd.DataFrame([{k: every[n].get(k) for k in cols} for n in self.runs],
                            index=pd.Index(list(self.runs), name="run"), columns=cols)

    @property
    def varied(self) -> list[str]:
        return list(self.settings.columns)

    @property
    def groups(self) -> list[str]:
        """The settings that tell one setting from another: every varied one but the seed."""
        return [k for k in self.varied if k != SEED]

    def _tag(self, frame: pd.DataFrame, name: str) -> pd.DataFrame:
        """frame with `run` and one column per setting in front."""
        front = pd.DataFrame({"run": name, **{k: [self.settings.at[name, k]] * len(frame) for k in self.varied}},
                             index=frame.index)
        return pd.concat([front, frame], axis=1)

    # ---- long frames ---------------------------------------------------------------------------

    @cached_property
    def snapshots(self) -> pd.DataFrame:
        """run, <settings>, step, epoch, tokens, time: every snapshot of every run."""
        frames = [self._tag(run.snapshots.reset_index(drop=True).drop(columns="file"), n) for n, run in self.runs.items()]
        return pd.concat(frames, ignore_index=True)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """run, <settings>, step, epoch, tokens, metric, value: every logged number of every run."""
        frames = []
        for name, run in self.runs.items():
            m = run.metrics
            if m.empty:
                continue
            long = m.melt(id_vars=[c for c in TIME_AXES if c in m], var_name="metric", value_name="value").dropna(subset=["value"])
            frames.append(self._tag(long.reset_index(drop=True), name))
        if not frames:
            return pd.DataFrame(columns=["run", *self.varied, *TIME_AXES, "metric", "value"])
        return pd.concat(frames, ignore_index=True)

    def head_metrics(self, metrics: tuple[str, ...] | None = None) -> pd.DataFrame:
        """run, <settings>, step, epoch, tokens, layer, head, metric, value, over every snapshot."""
        frames = []
        for name, run in self.runs.items():
            h = run.head_metrics(metrics)
            times = run.snapshots.reset_index(drop=True)[["step", "epoch", "tokens"]]
            h = h.merge(times, on="step", how="left")[["step", "epoch", "tokens", "layer", "head", "metric", "value"]]
            frames.append(self._tag(h, name))
        return pd.concat(frames, ignore_index=True)

    # ---- matched training time -----------------------------------------------------------------

    def at(self, when: float, by: str = "step") -> dict[str, int | None]:
        """Each run's latest snapshot at or before `when` (a step, an epoch or a token count); None
        for a run that has not got that far or has no snapshot yet."""
        return {name: snapshot_at(self.snapshots[self.snapshots.run == name], when, by) for name in self.runs}

    def aligned(self, by: str = "step") -> pd.DataFrame:
        """Rows: every point at which some run took a snapshot, along `by`; columns: runs; cells:
        the step of that run's snapshot to show there (<NA> past its end)."""
        _check_axis(by)
        points = sorted(set(self.snapshots[by].astype(float if by == "epoch" else int)))
        table = pd.DataFrame([self.at(p, by) for p in points], index=pd.Index(points, name=by), columns=list(self.runs))
        return table.astype("Int64")

    # ---- seeds pooled ------------------------------------------------------------------------

    def final(self, metric: str = EVAL_LOSS) -> pd.DataFrame:
        """The last logged value of `metric` per run, pooled over the seeds of each setting:
        <settings>, mean, std, min, max, n (std is NaN for a single seed)."""
        return _pool(self.last(metric), self.groups)

    def last(self, metric: str = EVAL_LOSS) -> pd.DataFrame:
        """run, <settings>, step, epoch, tokens, metric, value: each run's last logged `metric`."""
        m = self.metrics[self.metrics.metric == metric].sort_values("step", kind="stable")
        return m.groupby("run", sort=False).tail(1).set_index("run", drop=False).reindex(
            [r for r in self.runs if r in set(m.run)]).reset_index(drop=True)

    def curves(self, metric: str = EVAL_LOSS, by: str = "step") -> pd.DataFrame:
        """`metric` over training per setting: <settings>, `by`, mean, std, min, max, n over its
        seeds, at the points where they logged it (seeds of one setting log at the same steps)."""
        _check_axis(by)
        m = self.metrics[self.metrics.metric == metric]
        return _pool(m, [*self.groups, by])


def snapshot_at(snapshots: pd.DataFrame, when: float, by: str = "step") -> int | None:
    """The step of the latest snapshot at or before `when` along `by` in one run's snapshot table
    (columns step and `by`); None before its first or past its last: a run that stopped earlier
    has no state to show at a later time, and showing its last one there would mislead."""
    _check_axis(by)
    s = snapshots.sort_values(by)
    tol = 1e-6 * max(1.0, abs(float(when)))  # epochs are stored rounded
    if s.empty or float(when) > float(s[by].iloc[-1]) + tol:
        return None
    before = s[s[by].astype(float) <= float(when) + tol]
    return int(before.step.iloc[-1]) if len(before) else None


def _pool(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    cols = ["mean", "std", "min", "max", "n"]
    if frame.empty:
        return pd.DataFrame(columns=[*keys, *cols])
    if not keys:  # nothing but the seed varies: one setting
        frame, keys = frame.assign(_all=""), ["_all"]
    out = frame.groupby(keys, sort=True, dropna=False)["value"].agg(["mean", "std", "min", "max", "count"])
    out = out.rename(columns={"count": "n"}).reset_index()
    return out.drop(columns="_all") if "_all" in out else out


def _check_axis(by: str) -> None:
    if by not in TIME_AXES:
        raise ValueError(f"by={by!r}: expected one of {', '.join(TIME_AXES)}")

