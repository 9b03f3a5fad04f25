"""The run format, defined once: file names, the schema version, every snapshot dataset key, the
head-metric names and the hook-name vocabulary. Pure Python (no torch, numpy or h5py), so every
reader and writer (trainer, recorder, `guppy.run.reader`, the dashboard, the probe scripts) imports
its names from here and none types a key of its own.

    runs/<name>/
      run.json                              config, versions, status; `schema_version`
      tokenizer.json                        the run's tokenizer (HF tokenizers)
      metrics.csv                           one row per logged step (METRIC_COLUMNS)
      watch.h5                              the watch set: fixed inputs every snapshot measures
      checkpoints/step-000064.safetensors   weights (+ .state.safetensors: optimizer, loop)
      snapshots/step-000064.h5              one snapshot: SNAPSHOT_ATTRS and the keys below
      probes/                               what the probe scripts (probes/*.py) wrote
      features/<hook>/step-000064/          a sparse autoencoder of that snapshot (guppy-sae; SAELens's format)
      timeline.csv, timeline_series.csv     what developed and when (guppy-timeline), and the signals it was found in
      timeline.json, llc.csv                what the timeline was computed from; the LLC per checkpoint

Schema 2 renamed the fixed input set from "probe set" to "watch set" (`probes.h5` ->
`watch.h5`, `loss/by_probe` -> `loss/by_input`); schema-1 runs are read through `LEGACY_KEYS`.
Hook names are TransformerLens's: `act_name("resid_pre", 3)` is `blocks.3.hook_resid_pre`,
`layer_of("blocks.3.attn.hook_z")` is 3 (TransformerLens's `get_act_name`, `HookPoint.layer()`).
"""

from __future__ import annotations

import re
from pathlib import Path

SCHEMA_VERSION = 2
READS_SCHEMAS = (1, 2)  # 1: written before the watch set had its name (see LEGACY_KEYS)

# ---- files ------------------------------------------------------------------------------------

RUN_JSON = "run.json"
TOKENIZER_JSON = "tokenizer.json"
CHAT_JSON = "chat.json"  # beside a foreign tokenizer.json: its special-token names and chat template
METRICS_CSV = "metrics.csv"
WATCH_FILE = "watch.h5"
WATCH_FILE_V1 = "probes.h5"
SNAPSHOTS_DIR = "snapshots"
CHECKPOINTS_DIR = "checkpoints"
PROBE_OUTPUTS_DIR = "probes"  # the probe scripts' CSV and HTML

METRIC_COLUMNS = ("step", "epoch", "tokens", "lr", "loss", "grad_norm", "tokens_per_s", "elapsed_s",
                  "eval_loss", "eval_ppl", "persona_pass")

_SNAPSHOT = re.compile(r"^step-(\d+)\.h5$")
_WEIGHTS = re.compile(r"^step-(\d+)\.safetensors$")


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS_DIR / f"{step_name(step)}.h5"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"{step_name(step)}.safetensors"


def state_path(weights: Path) -> Path:
    """The training state beside a weights file (kept for the newest checkpoint only)."""
    return weights.with_name(weights.name.replace(".safetensors", ".state.safetensors"))


def _steps(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    found = {}
    for f in folder.iterdir() if folder.is_dir() else ():
        m = pattern.match(f.name)  # a file being written has a temporary name: never matched
        if m:
            found[int(m.group(1))] = f
    return dict(sorted(found.items()))


def list_snapshots(run_dir: str | Path) -> dict[int, Path]:
    """Complete snapshot files of a run by step, oldest first."""
    return _steps(Path(run_dir) / SNAPSHOTS_DIR, _SNAPSHOT)


def list_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """Weights files of a run by step, oldest first."""
    return _steps(Path(run_dir) / CHECKPOINTS_DIR, _WEIGHTS)


def watch_path(run_dir: str | Path) -> Path:
    """The watch set of a run: watch.h5, or probes.h5 in a schema-1 run."""
    path = Path(run_dir) / WATCH_FILE
    old = Path(run_dir) / WATCH_FILE_V1
    return old if not path.exists() and old.exists() else path


# ---- run.json keys added by tools other than guppy-train ---------------------------------------

POSTHOC_KEY = "posthoc_record"  # guppy-record ran: when, how many steps, what is absent
IMPORTED_STATUS = "imported"  # the status of a run guppy-import wrote

# ---- health and forensics (guppy.health.watchdog writes them, guppy.health.files reads them) ---------

HEALTH_FILE = "health.csv"  # one row per logged step: loss, grad norm, loss scale, per-layer signals
FORENSICS_DIR = "forensics"  # forensics/step-000812/: what a divergence at step 812 left behind
SUMMARY_FILE = "summary.json"  # the facts of the one-line message (also run.json's DIVERGENCE_KEY)
HOOKS_FILE = "hooks.csv"  # every hook point of the fp32 replay, in forward order
PARAMS_FILE = "params.csv"  # per-parameter gradient norms and update ratios of the last steps
REPLAY_PARAMS_FILE = "replay_params.csv"  # per-parameter gradient norms of the fp32 replay
BATCH_FILE = "batch.csv"  # the batch that broke: chat index, token ids, text
WEIGHTS_FILE = "weights.safetensors"  # the last good weights, those the replay ran on
# per-layer signals: a health.csv column is f"blocks.{layer}.{signal}"
LAYER_SIGNALS = ("attn_logit_max", "resid_rms", "grad_norm", "update_ratio")
SIGNAL_TITLES = {"attn_logit_max": "largest |pre-softmax attention logit|", "resid_rms": "residual RMS (resid_post)",
                 "grad_norm": "gradient norm", "update_ratio": "update / weight ratio"}
# what run.json gains: a list of spikes, the facts of the latest divergence, a list of resumes
SPIKES_KEY, DIVERGENCE_KEY, HISTORY_KEY = "spikes", "divergence", "history"
HOOK_COLUMNS = ("order", "hook", "max_abs", "rms", "nonfinite", "baseline_max_abs", "growth",
                "grad_max_abs", "grad_rms", "grad_nonfinite", "first_bad")
PARAM_COLUMNS = ("step", "param", "grad_norm", "update_ratio")
TABLE_COLUMNS = {HOOKS_FILE: HOOK_COLUMNS, PARAMS_FILE: PARAM_COLUMNS, REPLAY_PARAMS_FILE: ("param", "grad_norm"),
                 BATCH_FILE: ("chat", "length", "tokens", "text")}  # the header even of an empty table


def health_columns(n_layers: int) -> list[str]:
    per_layer = [f"blocks.{layer}.{signal}" for signal in LAYER_SIGNALS for layer in range(n_layers)]
    return ["step", "loss", "grad_norm", "loss_scale", *per_layer]


def step_name(step: int) -> str:
    """How every per-step file and folder is named: step-000812 (.h5, .safetensors, a forensics folder)."""
    return f"step-{step:06d}"


def forensics_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / FORENSICS_DIR / step_name(step)


# ---- recall of memory chats (guppy.analysis.memory_recall writes it; the Induction view reads it) ------------

RECALL_FILE = "recall.csv"  # run folder: one row per measured step
# the in-context loss on repeated random tokens, in nats: on the first copy, the second, first - second
# (runs of before these columns lack them: not computed yet)
ICL_FIRST, ICL_SECOND, ICL_DROP = "icl_loss_first", "icl_loss_second", "icl_drop"
RECALL_COLUMNS = ("step", "tokens", "recall_loss", "recall_token_acc", "recall_acc",
                  "random_recall_loss", "random_recall_token_acc", "random_recall_acc",
                  ICL_FIRST, ICL_SECOND, ICL_DROP)  # then per-head columns
HEAD_COLUMN = "{metric}.L{layer}H{head}"  # per-head columns of recall.csv: induction.L1H2, prev_token.L0H3
_HEAD_COLUMN = re.compile(r"^(\w+)\.L(\d+)H(\d+)$")


def head_column_parts(name: str) -> tuple[str, int, int] | None:
    """A per-head column's metric, layer and head: 'induction.L1H2' -> ('induction', 1, 2); None otherwise."""
    m = _HEAD_COLUMN.match(name)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None

# ---- sparse autoencoder features (guppy-sae writes them; guppy.features.store and the Features view read them)
# features/<hook>/settings.json          what every SAE of that hook was trained with (width, k, tokens, seed, ...)
# features/<hook>/lineage.csv            each live feature's lifeline across snapshots (LINEAGE_COLUMNS)
# features/<hook>/step-000064/           one snapshot's SAE, written under a temporary name and renamed when whole:
#   cfg.json, sae_weights.safetensors    SAELens's on-disk format (sae_lens.SAE.load_from_disk)
#   features.csv, topics.csv, memory.csv guppy's scores of it (FEATURE_COLUMNS, TOPIC_COLUMNS, MEMORY_COLUMNS)
#   examples.safetensors, summary.json   per-feature histograms and top held-out chats; reconstruction, counts
# A run without features/ (older runs) reads as "not computed yet".

# ---- the timeline (guppy.analysis.timeline, guppy-timeline): what developed in a run, and when ----
TIMELINE_FILE = "timeline.csv"  # the events: TIMELINE_COLUMNS
TIMELINE_SERIES_FILE = "timeline_series.csv"  # one row per snapshot step: the signals the events were found in
TIMELINE_KEY_FILE = "timeline.json"  # what the cached timeline was computed from; changed = recompute
LLC_FILE = "llc.csv"  # the local learning coefficient per checkpoint step, with its settings
TIMELINE_COLUMNS = ("step", "kind", "what", "value", "evidence")
TIMELINE_KINDS = ("stage", "birth", "llc")

FEATURES_DIR = "features"
SAE_SETTINGS_FILE = "settings.json"
LINEAGE_FILE = "lineage.csv"
SAE_CFG_FILE = "cfg.json"  # SAELens's names (sae_lens.constants SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME)
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
FEATURE_TABLE = "features.csv"
TOPIC_TABLE = "topics.csv"
MEMORY_TABLE = "memory.csv"
FEATURE_EXAMPLES_FILE = "examples.safetensors"
SAE_SUMMARY_FILE = "summary.json"
FEATURE_COLUMNS = ("feature", "density", "heldout_density", "dead", "dense", "mean_act", "max_act",
                   "topic", "score", "precision", "recall", "promotes")
TOPIC_COLUMNS = ("topic", "feature", "score", "precision", "recall", "n_chats")
MEMORY_COLUMNS = ("kind", "feature", "score", "precision", "recall", "n_items")
LINEAGE_COLUMNS = ("step", "feature", "lineage", "event", "parents", "cosine")
LINEAGE_EVENTS = ("born", "continues", "split", "merged")  # how a feature came to be at its step
_SAE_DIR = re.compile(r"^step-(\d+)$")


def features_dir(run_dir: str | Path, hook: str) -> Path:
    return Path(run_dir) / FEATURES_DIR / hook


def sae_dir(run_dir: str | Path, hook: str, step: int) -> Path:
    return features_dir(run_dir, hook) / step_name(step)


def list_saes(run_dir: str | Path, hook: str) -> dict[int, Path]:
    """Complete SAE folders of a hook by step, oldest first (one being written has a temporary name)."""
    return _steps(features_dir(run_dir, hook), _SAE_DIR)


def feature_hooks(run_dir: str | Path) -> list[str]:
    """The hooks with at least one complete SAE, sorted; [] for a run without features."""
    root = Path(run_dir) / FEATURES_DIR
    return sorted(d.name for d in root.iterdir() if d.is_dir() and list_saes(run_dir, d.name)) if root.is_dir() else []


# ---- sites: what guppy-train --ablate knocks out, named as the probe scripts name them ------------

_SITE = re.compile(r"^L(\d+)(?:H(\d+)|\.mlp)$")
_STEPS = re.compile(r"^(\d*):(\d*)$")


def site_name(layer: int, head: int | None = None) -> str:
    """A head 'L0H3' (as recall.csv's columns and the probe scripts name it); an MLP 'L1.mlp' (head None)."""
    return f"L{layer}.mlp" if head is None else f"L{layer}H{head}"


def parse_sites(text: str) -> list[tuple[int, int | None]]:
    """'L0H3+L1.mlp' or 'L0H3,L1.mlp' -> [(0, 3), (1, None)]; '' and 'none' -> []."""
    sites = []
    for item in (t.strip() for t in text.replace("+", ",").split(",")):
        if item in ("", "none"):
            continue
        m = _SITE.match(item)
        if not m:
            raise ValueError(f"ablate: {item!r} is not a site; expected a head LxHy (L0H3) or an MLP Lx.mlp (L1.mlp)")
        site = (int(m.group(1)), None if m.group(2) is None else int(m.group(2)))
        if site not in sites:
            sites.append(site)
    return sites


def parse_steps(text: str) -> tuple[int, int | None]:
    """An --ablate-steps slice of optimizer steps: 'A:B' -> (A, B), 'A:' -> (A, None), ':B' -> (0, B),
    '' -> (0, None). The steps ablated are those taken while A <= steps done < B."""
    m = _STEPS.match(text.strip())
    if text.strip() and not m:
        raise ValueError(f"ablate_steps: {text!r} is not a slice of steps; expected A:B, A: or :B (e.g. 1000:)")
    start, stop = (int(g) if g else None for g in m.groups()) if m else (None, None)
    if start is not None and stop is not None and stop <= start:
        raise ValueError(f"ablate_steps: {text!r} is empty; B must be greater than A")
    return start or 0, stop


# ---- sweeps (guppy.train.sweep writes them, guppy.run.compare and the dashboard read them) --------------

SWEEP_FILE = "sweep.json"  # runs/<sweep>/sweep.json: the grid, every run's flags and status
SWEEP_SCHEMA = 1
SWEEP_LOCK = ".sweep.lock"  # held while a guppy-sweep process drives the sweep
SWEEP_LOGS_DIR = "_logs"  # runs/<sweep>/_logs/<run>.log; a leading underscore: not listed as a run
SEED_KEY = "seed"  # --seeds S1,S2 is --vary seed=S1,S2, the grid's last axis
# settings that change together are one axis of the grid: axis "batch_size/grad_accum", value "16/4"


def axis_keys(axes) -> list[str]:
    """The settings an iterable of grid axes varies, in order: ['lr', 'batch_size/grad_accum'] ->
    ['lr', 'batch_size', 'grad_accum']."""
    return [k for axis in axes for k in axis.split("/")]


def axis_name(keys) -> str:
    """['batch_size', 'grad_accum'] -> 'batch_size/grad_accum'."""
    return "/".join(keys)


def axis_values(value: str) -> list[str]:
    """One value of an axis, a part per setting: '16/4' -> ['16', '4']."""
    return value.split("/")


# ---- the watch set file (watch.h5) ------------------------------------------------------------

WATCH_ARRAYS = ("tokens", "lengths", "reply_start", "period", "subset")
WATCH_STRINGS = ("kind", "topic", "text")

# ---- snapshot files (snapshots/step-N.h5) -----------------------------------------------------

SNAPSHOT_ATTRS = ("schema_version", "step", "epoch", "tokens", "time", "wall_time")
ACTS = "acts"  # group: full tensors of the stored inputs, one dataset per hook name


def acts_key(hook_name: str) -> str:
    return f"{ACTS}/{hook_name}"


HEADS = "heads"  # group: one (L, H) array per head metric
# name: (title, what it measures); the attention scores are fractions of attention (0..1)
HEAD_METRICS = {
    "entropy": ("attention entropy", "nats of each query's attention distribution"),
    "prev_token": ("previous-token score", "attention from each token to the one before"),
    "induction": ("induction score", "attention to the token after the previous copy of the current one"),
    "first_token": ("first-token score", "attention resting on position 0"),
    "duplicate_token": ("duplicate-token score", "attention to the previous copy of the current token"),
    "out_norm": ("head output norm", "mean |z_h W_O[h]| over real positions"),
}
ATTENTION_METRICS = ("entropy", "prev_token", "induction", "first_token", "duplicate_token")  # from patterns
FRACTION_METRICS = ("prev_token", "induction", "first_token", "duplicate_token")  # range 0..1


def head_key(metric: str) -> str:
    return f"{HEADS}/{metric}"


LOSS_MEAN = "loss/mean"  # scalar: mean reply-token loss over the watch set
LOSS_BY_INPUT = "loss/by_input"  # (B,)
LOSS_BY_POSITION = "loss/by_position"  # (T-1,)
LOSS_BY_TOPIC = "loss/by_topic"  # (topics,), in the order of LOSS_TOPICS
LOSS_TOPICS = "loss/topics"
RESID_NORM = "resid/norm_by_position"  # (points, T)
RESID_POINTS = "resid/points"  # the hook names of the points
LENS_LOSS = "lens/loss"  # (points,)
LENS_TOP = "lens/top_tokens"  # (points, K, T, 5) int16
MLP_MEAN = "mlp/mean"  # (L,)
MLP_FRAC_ACTIVE = "mlp/frac_active"  # (L, d_mlp)
ACT_GRAD_NAMES = "grads/act_names"
ACT_GRAD_NORM = "grads/act_norm"  # (points,)
PARAM_GRAD_NORM = "grads/param_norm"  # (params,) RMS over the steps since the last snapshot
GRAD_STEPS = "grads/steps"
PARAM_NAMES = "params/names"
PARAM_NORM = "params/norm"
PARAM_UPDATE_RATIO = "params/update_ratio"
REPLIES = "samples/replies"
ABSENT = "absent"  # names of the datasets a snapshot could not measure (left NaN), e.g. after the fact

# schema 1 -> 2: what a key was called before
LEGACY_KEYS = {LOSS_BY_INPUT: "loss/by_probe"}


def group_of(key: str) -> str:
    return key.rpartition("/")[0]


# ---- hook names -------------------------------------------------------------------------------

_LAYER = re.compile(r"^blocks\.(\d+)\.")
_SHORT = {  # get_act_name's short names -> where the hook sits in a block
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "attn_scores": "attn.hook_attn_scores", "pattern": "attn.hook_pattern", "result": "attn.hook_result",
    "rot_q": "attn.hook_rot_q", "rot_k": "attn.hook_rot_k",
    "pre": "mlp.hook_pre", "post": "mlp.hook_post",
}


def act_name(name: str, layer: int | None = None) -> str:
    """A hook name from a short name and a layer, as TransformerLens's `get_act_name`:
    act_name("pattern", 2) -> 'blocks.2.attn.hook_pattern'; act_name("embed") -> 'hook_embed'."""
    if layer is None:
        if name in ("scale", "normalized"):
            return f"ln_final.hook_{name}"
        return name if name.startswith(("hook_", "ln_final.")) else f"hook_{name}"
    if name not in _SHORT:
        raise ValueError(f"act_name: unknown short name {name!r}; expected one of {', '.join(_SHORT)}")
    return f"blocks.{layer}.{_SHORT[name]}"


def layer_of(name: str) -> int | None:
    """The block a hook (or parameter) name belongs to: 'blocks.3.attn.hook_z' -> 3; None outside blocks."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def resid_points(n_layers: int) -> list[str]:
    """The residual stream at every layer boundary: resid_pre of each block, then the last resid_post."""
    return [act_name("resid_pre", l) for l in range(n_layers)] + [act_name("resid_post", n_layers - 1)]


def resid_alias(name: str) -> str | None:
    """blocks.l.hook_resid_post -> blocks.l+1.hook_resid_pre (the same tensor), else None."""
    layer = layer_of(name)
    if layer is not None and name == act_name("resid_post", layer):
        return act_name("resid_pre", layer + 1)
    return None
