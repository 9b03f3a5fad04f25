"""Reading a run: `guppy.open_run(path)`, the one way tools load a run.

    run = guppy.open_run("runs/demo")
    run.metrics                                        # pandas, one row per logged step
    run.snapshots                                      # pandas, one row per snapshot
    run.acts("blocks.0.attn.hook_pattern", snapshot=64)        # numpy (stored inputs, H, T, T)
    run.acts("blocks.*.hook_resid_pre", snapshot="latest")     # {hook name: numpy}
    run.head_metrics()                                 # long frame: step, layer, head, metric, value
    run.model(64)                                      # a hooked GuppyLM with that snapshot's weights
    run.watch_table                                    # pandas: the watch set, the fixed inputs every snapshot measures
    run.probe_outputs()                                # {probe name: ProbeOutput}: what probes/*.py wrote
    run.health                                         # pandas, per-layer health signals per logged step
    run.forensics()                                    # what the latest divergence left (a Forensics of pandas)
    run.events                                         # spikes, the divergence, resumes with changed flags

Opening is lazy: nothing is read from a snapshot until asked, and each snapshot file is opened
only for the moment it is read, so a run still training can be read at the same time.
Every failure names the file and what is wrong, as a `RunError`; one unreadable snapshot
(a partial copy, a full disk) is listed in `run.unreadable` and hides nothing else.
File names and dataset keys come from `guppy.run.format`; runs of schema 1 read the same.
"""

from __future__ import annotations

import fnmatch
import io
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from guppy.config import ModelConfig
from guppy.data.dataset import DataConfig, data_config, load_dataset
from guppy.data.tokenizer import ChatTokenizer
from guppy.health.files import Forensics, read_forensics, read_health
from guppy.run import format as R
from guppy.run.watch_set import WatchSet
from guppy.run.writer import read_run_json, read_train_config

if TYPE_CHECKING:  # pandas loads on first use: a dashboard view that draws no table starts ~0.5 s sooner
    import pandas as pd


class RunError(ValueError):
    """A run folder or one of its files cannot be read; the message names the file."""


def resolve_checkpoint(run_dir: str | Path, which: str | int = "latest") -> Path:
    """The weights file of checkpoint `which` (a step number, or 'latest')."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    found = R.list_checkpoints(run_dir)
    if not found:
        raise RunError(f"{run_dir}: the run has no checkpoint yet")
    if which == "latest":
        return found[max(found)]
    try:
        return found[int(which)]
    except (ValueError, KeyError):
        steps = ", ".join(map(str, found))
        raise RunError(f"{run_dir}: no checkpoint {which!r}; expected 'latest' or one of steps {steps}") from None


def latest_run(runs_dir: str | Path = "runs") -> Path:
    """The run under `runs_dir` with a checkpoint whose run.json changed last."""
    runs = [d for d in Path(runs_dir).glob("*") if R.list_checkpoints(d) and (d / R.RUN_JSON).exists()]
    if not runs:
        raise RunError(f"{runs_dir}: no trained run found; train one with `make demo` or guppy-train, or pass --run")
    return max(runs, key=lambda d: (d / R.RUN_JSON).stat().st_mtime)


def load_for_inference(run_dir: str | Path, which: str | int = "latest", device: str = "cpu"):
    """(model, tokenizer, checkpoint path) of a run, the model in eval mode."""
    from guppy.run.checkpoint import load_model  # torch: only for those who load a model

    path = resolve_checkpoint(run_dir, which)
    read_run_json(run_dir)  # a clear error if this is not a run folder
    tokenizer = ChatTokenizer.load(Path(run_dir) / R.TOKENIZER_JSON)
    return load_model(path, device), tokenizer, path


def load_run_dataset(run_dir: str | Path):
    """The dataset a run was trained on (or, for an imported run, is judged by), regenerated from its
    data config (cached): its persona, train chats (read from disk when asked) and held-out chats."""
    meta = read_run_json(Path(run_dir))
    if "train_config" not in meta and "data_config" in meta:  # an imported run: the persona it is judged by
        cfg = DataConfig(**meta["data_config"])
    else:
        cfg = data_config(read_train_config(Path(run_dir)))
    return load_dataset(cfg)


def load_eval_data(run_dir: str | Path):
    """The persona and held-out chats a run was trained against (regenerated, cached)."""
    data = load_run_dataset(run_dir)
    return data.persona, data.chats.eval


def _decoded(value):
    """HDF5 strings come back as bytes objects: make them str."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return np.array([v.decode() if isinstance(v, bytes) else v for v in value])
    return value


def open_run(path: str | Path) -> "Run":
    return Run(path)


class Run:
    """A read-only view of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such run folder")
        try:
            self.meta = read_run_json(self.path)
        except ValueError as e:
            raise RunError(f"{e} (a run folder is complete once guppy-train has written run.json)") from None
        self.schema = self.meta.get("schema_version")
        if self.schema not in R.READS_SCHEMAS:
            raise RunError(f"{self.path / R.RUN_JSON}: schema_version {self.schema}, this guppy reads "
                           f"{', '.join(map(str, R.READS_SCHEMAS))}")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, snapshots={len(self.snapshot_files)})"

    # ---- metadata ------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return read_run_json(self.path).get("status", "unknown")  # re-read: a live run changes it

    @cached_property
    def config(self):
        return read_train_config(self.path)

    @cached_property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.meta["model_config"])

    @cached_property
    def tokenizer(self) -> ChatTokenizer:
        return ChatTokenizer.load(self.path / R.TOKENIZER_JSON)

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per logged step (training rows have `loss`, eval rows `eval_loss`)."""
        import pandas as pd

        path = self.path / R.METRICS_CSV
        if not path.exists():
            return pd.DataFrame()
        text = path.read_text()
        if not text.endswith("\n"):  # a row being written right now: not whole yet
            text = text[: text.rfind("\n") + 1]
        try:
            return pd.read_csv(io.StringIO(text))
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise RunError(f"{path}: unreadable metrics table ({e})") from None

    @property
    def health(self) -> pd.DataFrame:
        """One row per logged step: loss, grad_norm, loss_scale and per layer `blocks.L.<signal>`
        (attn_logit_max, resid_rms, grad_norm, update_ratio); empty for a run without health.csv."""
        try:
            return read_health(self.path)
        except ValueError as e:
            raise RunError(str(e)) from None

    @property
    def events(self) -> dict:
        """What went wrong and what was done, from run.json read afresh (a live run adds to it):
        {"spikes": [...], "divergence": {...} or None, "history": [resumes with changed flags]}."""
        meta = read_run_json(self.path)
        return {"spikes": meta.get(R.SPIKES_KEY) or [], "divergence": meta.get(R.DIVERGENCE_KEY),
                "history": meta.get(R.HISTORY_KEY) or []}

    def forensics(self, step: int | str = "latest") -> Forensics:
        """What a divergence left: .summary (the facts), .hooks (every hook point of the fp32
        replay, forward order), .params (per-parameter norms of the last steps), .replay_params,
        .batch (the chats that broke it), .weights (the last good weights' file)."""
        try:
            return read_forensics(self.path, step)
        except ValueError as e:
            raise RunError(str(e)) from None

    # ---- snapshots -----------------------------------------------------------------------------

    @property
    def snapshot_files(self) -> dict[int, Path]:
        """Complete snapshot files by step (files being written have a temporary name)."""
        return R.list_snapshots(self.path)

    def _scan(self) -> tuple[list[dict], dict[int, str]]:
        """The attributes of every readable snapshot, and why each unreadable one is not."""
        rows, bad = [], {}
        for step, f in self.snapshot_files.items():
            try:
                with self._open(f) as h:
                    rows.append({"step": step, **{k: h.attrs[k] for k in ("epoch", "tokens", "time")}, "file": f.name})
            except (RunError, KeyError, OSError) as e:
                bad[step] = str(e) if isinstance(e, RunError) else f"{f}: unreadable snapshot ({e})"
        return rows, bad

    @property
    def snapshots(self) -> pd.DataFrame:
        """One row per readable snapshot: step, epoch, tokens, time (s of training), file.
        Unreadable files are left out with a warning (see `unreadable`)."""
        import pandas as pd

        rows, bad = self._scan()
        if bad:
            warnings.warn(f"{self.path}: {len(bad)} unreadable snapshot(s) left out: "
                          f"{'; '.join(bad.values())}", RuntimeWarning, stacklevel=2)
        return pd.DataFrame(rows, columns=["step", "epoch", "tokens", "time", "file"]).set_index("step", drop=False)

    @property
    def unreadable(self) -> dict[int, str]:
        """{step: why} for snapshot files that cannot be read (damaged, truncated, other schema)."""
        return self._scan()[1]

    def _step(self, snapshot: int | str) -> int:
        files = self.snapshot_files
        if not files:
            raise RunError(f"{self.path}: no snapshots (was the run recorded with --record?)")
        if snapshot in ("latest", -1):
            return max(files)
        if snapshot == "first":
            return min(files)
        try:
            step = int(snapshot)
        except (TypeError, ValueError):
            step = None
        if step not in files:
            raise RunError(f"{self.path}: no snapshot {snapshot!r}; have steps {', '.join(map(str, files))}")
        return step

    def _open(self, path: Path) -> h5py.File:
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise RunError(f"{path}: not a readable HDF5 snapshot ({e})") from None
        version = f.attrs.get("schema_version")
        if version not in R.READS_SCHEMAS:
            f.close()
            raise RunError(f"{path}: snapshot schema_version {version}, this guppy reads "
                           f"{', '.join(map(str, R.READS_SCHEMAS))}")
        return f

    @staticmethod
    def _key(f: h5py.File, name: str) -> str:
        """`name` as this file spells it (a schema-1 file may use the key's old name)."""
        return name if name in f else R.LEGACY_KEYS.get(name, name)

    def read(self, name: str, snapshot: int | str = "latest") -> np.ndarray | dict[str, np.ndarray]:
        """Any dataset of a snapshot by its key (guppy.run.format), e.g. runformat.LOSS_BY_TOPIC;
        a group (runformat.HEADS) gives {dataset name: array}, all read in one open of the file."""
        path = self.snapshot_files[self._step(snapshot)]
        with self._open(path) as f:
            key = self._key(f, name)
            if key not in f:
                raise RunError(f"{path}: no dataset {name!r}")
            if isinstance(f[key], h5py.Group):
                legacy = {old.rpartition("/")[2]: new.rpartition("/")[2] for new, old in R.LEGACY_KEYS.items()
                          if R.group_of(new) == name}
                return {legacy.get(k, k): _decoded(v[()]) for k, v in f[key].items() if isinstance(v, h5py.Dataset)}
            return _decoded(f[key][()])

    def hook_names(self, snapshot: int | str = "latest") -> list[str]:
        """Hook points stored with full tensors (a resid_post stored as the next resid_pre counts)."""
        with self._open(self.snapshot_files[self._step(snapshot)]) as f:
            stored = list(f[R.ACTS].keys()) if R.ACTS in f else []
        L = self.model_config.n_layers
        aliases = [R.act_name("resid_post", l) for l in range(L - 1)
                   if R.resid_alias(R.act_name("resid_post", l)) in stored]
        return stored + [a for a in aliases if a not in stored]

    def _read_act(self, name: str, snapshot, rows=()) -> np.ndarray:
        with self._open(self.snapshot_files[self._step(snapshot)]) as f:  # one open per read
            key = R.acts_key(name) if R.acts_key(name) in f else R.acts_key(R.resid_alias(name))
            return f[key][rows]

    def acts(self, name: str, snapshot: int | str = "latest", rows: int | slice | None = None):
        """Stored activations of the watch set's stored inputs (`watch_subset`): numpy for one hook
        name, {name: numpy} for a glob; snapshot='all' stacks every snapshot on a new first axis.
        `rows` reads only those rows of the stored inputs (an index or a slice): only their
        chunks are read and decompressed."""
        names = self.hook_names(snapshot if snapshot != "all" else "latest")
        matches = [n for n in names if fnmatch.fnmatchcase(n, name)]
        if not matches:
            raise RunError(f"{self.path}: no stored hook matches {name!r}; stored: {', '.join(names) or 'none'}")
        rows = () if rows is None else rows
        if snapshot == "all":
            got = {n: np.stack([self._read_act(n, s, rows) for s in self.snapshot_files]) for n in matches}
        else:
            got = {n: self._read_act(n, snapshot, rows) for n in matches}
        return got[name] if name in got and len(got) == 1 else got

    def head_metrics(self, metrics: tuple[str, ...] | None = None) -> pd.DataFrame:
        """Long frame: step, layer, head, metric, value, over every readable snapshot
        (metric names: runformat.HEAD_METRICS)."""
        import pandas as pd

        frames, bad = [], self.unreadable
        for step in self.snapshot_files:
            if step in bad:
                continue
            heads = self.read(R.HEADS, step)
            for metric in metrics or list(heads):
                v = heads[metric]
                L, H = v.shape
                frames.append(pd.DataFrame({"step": step, "layer": np.repeat(np.arange(L), H),
                                            "head": np.tile(np.arange(H), L), "metric": metric,
                                            "value": v.ravel()}))
        if not frames:
            return pd.DataFrame(columns=["step", "layer", "head", "metric", "value"])
        return pd.concat(frames, ignore_index=True)

    @property
    def checkpoint_steps(self) -> list[int]:
        """Steps with saved weights: every snapshot's, and those of a run recorded without snapshots
        (an imported GuppyLM series before guppy-record, an unrecorded run), oldest first."""
        return list(R.list_checkpoints(self.path))

    def model(self, step: int | str = "latest", device: str = "cpu"):
        """A hooked GuppyLM with the weights of checkpoint `step` ('latest', 'first' or a step
        number: any checkpoint, not only a snapshot's), in eval mode."""
        from guppy.run.checkpoint import load_model  # torch: only for those who load a model

        found = R.list_checkpoints(self.path)
        if not found:
            if self.snapshot_files:  # snapshots keep their weights: the folder lost its checkpoints
                raise RunError(f"{self.path / R.CHECKPOINTS_DIR}: missing; every snapshot keeps its weights, "
                               "so the run folder is incomplete")
            raise RunError(f"{self.path}: the run has no checkpoint yet")
        if step in ("latest", -1):
            step = max(found)
        elif step == "first":
            step = min(found)
        try:
            path = found[int(step)]
        except (KeyError, TypeError, ValueError):
            if isinstance(step, int) and step in self.snapshot_files:
                raise RunError(f"{R.checkpoint_path(self.path, step)}: missing; every snapshot keeps its weights, "
                               "so the run folder is incomplete") from None
            raise RunError(f"{self.path}: no checkpoint {step!r}; have steps {', '.join(map(str, found))}") from None
        try:
            return load_model(path, device)
        except ValueError as e:
            raise RunError(str(e)) from None

    # ---- the watch set: the fixed inputs every snapshot measures ---------------------------------

    @cached_property
    def watch(self) -> WatchSet:
        path = R.watch_path(self.path)
        if not path.exists():
            raise RunError(f"{path}: missing (was the run recorded with --record?)")
        try:
            return WatchSet.load(path)
        except (OSError, KeyError) as e:
            raise RunError(f"{path}: unreadable watch set ({e})") from None

    @property
    def watch_tokens(self) -> np.ndarray:
        return self.watch.tokens

    @property
    def watch_text(self) -> list[str]:
        return self.watch.text

    @property
    def watch_subset(self) -> np.ndarray:
        """Indices of the inputs whose full tensors `acts` returns, in that order."""
        return self.watch.subset

    @property
    def watch_table(self) -> pd.DataFrame:
        import pandas as pd

        w = self.watch
        return pd.DataFrame({"kind": w.kind, "topic": w.topic, "length": w.lengths, "period": w.period,
                             "text": w.text, "stored": np.isin(np.arange(len(w.kind)), w.subset)})

    def eval_data(self):
        """(persona, held-out chats) the run was trained against, regenerated from its data config."""
        return load_eval_data(self.path)

    # ---- the timeline: what developed, and when (guppy.analysis.timeline, guppy-timeline) -------------

    def timeline(self, compute: bool = True, quick: bool = False, llc=None) -> pd.DataFrame:
        """What developed in the run, and when (guppy.analysis.timeline): one row per event, columns
        step, kind (stage / birth / llc), what, value, evidence. From the cache in the run folder
        while it is still true of the run, else measured (`quick`: the snapshot files only) and
        cached; `compute=False` gives only the cache (None when not computed yet, or stale).
        `llc`: an `LLCSettings` whose estimates are added first."""
        from guppy.analysis import timeline as T

        if not compute:
            return T.cached(self, quick)
        return T.timeline(self, T.TimelineSettings(quick=quick), llc=llc)

    def timeline_series(self) -> pd.DataFrame | None:
        """The signals the cached timeline was found in: one row per snapshot step (None if not computed yet)."""
        from guppy.analysis import timeline as T

        return T.cached_series(self)

    # ---- features: the sparse autoencoders guppy-sae trained (guppy.features) ---------------------

    @property
    def feature_hooks(self) -> list[str]:
        """Hooks with SAEs (guppy-sae); [] when none are computed yet."""
        return R.feature_hooks(self.path)

    def features(self, hook: str | None = None) -> pd.DataFrame:
        """Every SAE feature at every snapshot: step, feature, lineage (-1 if dead), event (born /
        continues / split / merged), parents, cosine, density, dead, dense, topic (its best), score
        (that topic's F1 at the last prompt token), precision, recall, promotes, ...; `hook` may be
        left out when one hook has SAEs. Empty (with these columns) when none are computed yet."""
        from guppy.features import store

        return self._features(store.read_features, hook)

    def feature_topics(self, hook: str | None = None) -> pd.DataFrame:
        """Per snapshot and topic, the feature that detects it best: step, topic, feature, score (F1), ..."""
        from guppy.features import store

        return self._features(lambda p, h: store.read_table(p, h, R.TOPIC_TABLE), hook)

    def feature_summary(self, hook: str | None = None) -> pd.DataFrame:
        """One row per snapshot's SAE: explained variance, spliced-in losses, dead / dense counts, topics found."""
        from guppy.features import store

        return self._features(store.read_summary, hook)

    def sae(self, step: int | str = "latest", hook: str | None = None):
        """A snapshot's SAE as a guppy.features.sae.SparseCoder (encode / decode); sae_lens.SAE.load_from_disk
        reads the same folder (run.path / "features" / hook / "step-N")."""
        from guppy.features.sae import SparseCoder

        hook = self._feature_hook(hook)
        saes = R.list_saes(self.path, hook) if hook else {}
        if not saes:
            raise RunError(f"{self.path}: no SAEs computed yet (guppy-sae {self.path})")
        step = max(saes) if step in ("latest", -1) else min(saes) if step == "first" else step
        if step not in saes:
            raise RunError(f"{self.path}: no SAE at step {step!r} for {hook}; have steps {', '.join(map(str, saes))}")
        try:
            return SparseCoder.load(saes[step])
        except ValueError as e:
            raise RunError(str(e)) from None

    def _feature_hook(self, hook: str | None) -> str | None:
        from guppy.features import store

        try:
            return store.pick_hook(self.path, hook)
        except ValueError as e:
            raise RunError(str(e)) from None

    def _features(self, read, hook: str | None):
        hook = self._feature_hook(hook)
        try:
            return read(self.path, hook or "")  # no hook computed: an empty frame with the columns
        except ValueError as e:
            raise RunError(str(e)) from None

    # ---- what the probe scripts wrote (probes/*.py) --------------------------------------------

    def probe_outputs(self) -> dict[str, "ProbeOutput"]:
        """The outputs of the probe scripts under `probes/`, by probe name (empty if none ran).
        A script writes `name.html` and `name.csv` or `name_<table>.csv`; a CSV whose stem is
        another output's name plus `_<table>` is one more table of that probe."""
        folder = self.path / R.PROBE_OUTPUTS_DIR
        files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")] if folder.is_dir() else []
        html = {f.stem: f for f in files if f.suffix == ".html"}
        found = {name: ProbeOutput(name, {}, path) for name, path in html.items()}
        for f in sorted((f for f in files if f.suffix == ".csv"), key=lambda f: (len(f.stem), f.stem)):
            owner = max((n for n in found if f.stem.startswith(n + "_")), key=len, default=None)
            if f.stem in found:
                found[f.stem].tables[""] = f
            elif owner is not None:
                found[owner].tables[f.stem[len(owner) + 1:]] = f
            else:
                found[f.stem] = ProbeOutput(f.stem, {"": f}, None)
        return dict(sorted(found.items()))


@dataclass(frozen=True)
class ProbeOutput:
    """One probe script's outputs: its CSV tables ("" for `name.csv`) and its plotly HTML."""

    name: str
    tables: dict[str, Path]
    html: Path | None

    def read(self, table: str = "") -> pd.DataFrame:
        import pandas as pd

        path = self.tables.get(table)
        if path is None:
            raise RunError(f"probe output {self.name!r} has no table {table!r}; have {sorted(self.tables)}")
        try:
            return pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise RunError(f"{path}: unreadable probe table ({e})") from None
