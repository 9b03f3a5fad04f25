"""The story of a run, found from what it recorded: its stages, the births of its parts, its LLC.

    frame = timeline(run)               # step, kind, what, value, evidence: stages, births, llc
    series = measure(run)               # one row per snapshot: every signal the events are found in
    for line in plain_words(frame): print(line)

Signals (one row per snapshot, `measure`): from the snapshot files, the watch set's loss (mean,
by position, by topic), every head's type scores and the logit lens's loss at each layer boundary;
from the checkpoint of the same step (absent with `quick`), the model's outputs on the watch set
(log-probability of every next token: the "essential dynamics" of Hoogland et al. 2024 are their
principal components across snapshots), the held-out loss with each head and MLP mean-ablated, and
a linear probe of the chat topic at each layer boundary; from metrics.csv the held-out loss and
persona pass rate; from recall.csv (the memory-chat runs) the dense head scores, recall and the
in-context loss; from llc.csv the learning coefficient (`guppy.analysis.llc`, devinterp).

Events: **stages** are the change points of the trajectory (ruptures' exact dynamic programming,
continuous piecewise-linear cost, on the loss families and essential dynamics, each scaled to equal
weight, the LLC too where it was estimated), each boundary with the families that turned there;
**births** are the steps a series crosses half way up its rise (`rise`), as
`guppy.analysis.memory_recall.formation` dates the induction head, for head roles (by
`head_types.HEAD_TYPES`' thresholds), copy heads on memory chats, topic probes, the logit lens and
ablation; **llc** rows carry the LLC series with its settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from guppy.analysis.head_types import HEAD_TYPES
from guppy.run import format as R
from guppy.run.writer import atomic_write

TIMELINE_VERSION = 1  # bump when what the events mean changes: cached timelines are then recomputed
KINDS = R.TIMELINE_KINDS
COPY_RISE = 0.15  # a head's copy score on memory chats must rise this much to count as a copy head
MATTERS = 0.05  # nats of held-out loss: an ablation that costs less never "matters"
PROBE_RISE = 0.10  # topic-probe accuracy gained, at least, for a layer's topic to be "born"
LENS_DROP = 0.5  # nats of logit-lens loss lost, at least, for a layer's lens to be "born"
RECALL_RISE = 0.10  # recall of held-out items gained, at least
ICL_RISE = 0.5  # nats of in-context loss drop gained, at least
ROLE_WORDS = {"previous_token": "previous-token", "induction": "induction", "duplicate_token": "duplicate-token",
              "first_token": "first-token"}
SCORE_WORDS = {"prev_token": "previous-token score", "induction": "induction score",
               "duplicate_token": "duplicate-token score", "first_token": "first-token score"}


@dataclass(frozen=True)
class TimelineSettings:
    quick: bool = False  # snapshot files only: no checkpoint is loaded (no ablation, probe, outputs)
    ablation_chats: int = 16  # one forward per head and MLP each: most of the cost (benchmarks/bench_timeline.py)
    probe_chats: int = 200
    max_stages: int = 6
    min_stage: int = 2  # snapshots, at least, in a stage
    seed: int = 0


# ---- the signals ------------------------------------------------------------------------------


def _rows_at(table: pd.DataFrame | None, column: str, steps) -> np.ndarray:
    """`column` of a per-step table at `steps` (the last row at or before each step; NaN if none)."""
    out = np.full(len(steps), np.nan)
    if table is None or column not in table:
        return out
    t = table[["step", column]].dropna()
    if t.empty:
        return out
    idx = np.searchsorted(t.step.to_numpy(), np.asarray(steps), side="right") - 1
    ok = idx >= 0
    out[ok] = t[column].to_numpy()[idx[ok]]
    return out


def _snapshot_signals(run, step: int) -> dict[str, float]:
    row: dict[str, float] = {}
    try:
        row["loss"] = float(run.read(R.LOSS_MEAN, step))
    except Exception:  # a dataset the snapshot could not measure: absent, not zero
        pass
    try:
        by_pos = np.asarray(run.read(R.LOSS_BY_POSITION, step), dtype=float)
        row |= {f"pos_loss.{i}": v for i, v in enumerate(by_pos)}
        topics = [str(t) for t in run.read(R.LOSS_TOPICS, step)]
        by_topic = np.asarray(run.read(R.LOSS_BY_TOPIC, step), dtype=float)
        row |= {f"topic_loss.{t}": v for t, v in zip(topics, by_topic)}
    except Exception:
        pass
    try:
        heads = run.read(R.HEADS, step)
        for metric in SCORE_WORDS:
            if metric in heads:
                for (l, h), v in np.ndenumerate(np.asarray(heads[metric], dtype=float)):
                    row[f"head.{R.HEAD_COLUMN.format(metric=metric, layer=l, head=h)}"] = v
    except Exception:
        pass
    try:
        lens = np.asarray(run.read(R.LENS_LOSS, step), dtype=float)
        points = R.resid_points(run.model_config.n_layers)
        row |= {f"lens.{p}": v for p, v in zip(points, lens)}
    except Exception:
        pass
    return row


@torch.no_grad()
def _outputs(model, watch) -> np.ndarray:
    """Log-probability of every real next token of the watch set -> (N,): the model's outputs."""
    tokens = torch.from_numpy(watch.tokens)
    logp = torch.log_softmax(model(tokens).float(), -1)[:, :-1]
    target = logp.gather(-1, tokens[:, 1:, None])[..., 0]  # (B, T-1)
    real = torch.arange(tokens.shape[1] - 1)[None] < torch.from_numpy(watch.lengths)[:, None] - 1
    return target[real].numpy()


@torch.no_grad()
def _checkpoint_signals(run, step: int, batch, probe) -> tuple[dict[str, float], np.ndarray]:
    from guppy.analysis.heldout import each_site_losses
    from guppy.analysis.linear_probe import features, probe_layers
    from guppy.model.ablate import ablation_sites
    from guppy.model.precision import BF16_CPU_MIN_SPEEDUP, cpu_bf16_speedup
    from guppy.record import head_scores as M

    model = run.model(step).float().eval()
    row: dict[str, float] = {}
    # the ablations are most of the cost (one forward per head and MLP): bf16 where this CPU runs it fast
    fast = torch.bfloat16 if cpu_bf16_speedup() >= BF16_CPU_MIN_SPEEDUP else torch.float32
    with torch.autocast("cpu", dtype=fast, enabled=fast != torch.float32):
        clean = M.mean_loss_per_row(model(batch.tokens).float(), batch.tokens, batch.reply_mask)
        m = batch.reply_mask.float().sum(1)
        clean = float((clean * m).sum() / m.sum())
        ablated = each_site_losses(model, batch.tokens, batch.reply_mask, "mean", pad_id=batch.pad_id)
    row["heldout_loss"] = clean
    for (kind, l, h), v in zip(ablation_sites(model.cfg), ablated.tolist()):
        row[f"ablate.{_site_name(kind, l, h)}"] = v - clean
    pbatch, y, train, test, n_topics = probe
    if pbatch is not None:
        X, names = features(model, pbatch)
        for name, r in zip(names, probe_layers(X, y, train, test, n_topics, 1e-2, 0)):
            row[f"probe.{name}"] = r["test_acc"]
    return row, _outputs(model, run.watch)


def _site_name(kind: str, layer: int, head: int) -> str:
    return f"L{layer}H{head}" if kind == "head" else f"MLP{layer}"


def _probe_data(run, n: int, seed: int):
    from guppy.analysis.heldout import encode_batch, heldout_chats
    from guppy.analysis.linear_probe import split_by_prompt

    batch = encode_batch(run.tokenizer, heldout_chats(run, n), run.model_config.n_ctx)
    topics = sorted(set(batch.topics))
    if len(topics) < 2:
        return None, None, None, None, 0
    y = torch.tensor([topics.index(t) for t in batch.topics])
    train, test = split_by_prompt(batch.prompts, 0.3, seed)
    return batch, y, train, test, len(topics)


def measure(run, settings: TimelineSettings = TimelineSettings(), progress=None) -> pd.DataFrame:
    """Every signal at every snapshot step -> one row per step (columns: `step`, then signals;
    `ed.pc1`.. are the essential dynamics; NaN where a signal was not measured)."""
    from guppy.analysis.heldout import heldout_batch

    steps = list(run.snapshot_files)
    have_weights = set(run.checkpoint_steps) if not settings.quick else set()
    rows, outputs = [], {}
    batch = probe = None
    if have_weights & set(steps):
        batch = heldout_batch(run, settings.ablation_chats)
        probe = _probe_data(run, settings.probe_chats, settings.seed)
    for i, step in enumerate(steps):
        row = {"step": step, **_snapshot_signals(run, step)}
        if step in have_weights:
            extra, outputs[step] = _checkpoint_signals(run, step, batch, probe)
            row |= extra
        rows.append(row)
        if progress:
            progress(i + 1, len(steps))
    series = pd.DataFrame(rows)
    if "step" not in series:
        series = pd.DataFrame({"step": pd.Series(dtype=int)})
    if len(outputs) >= 3:  # essential dynamics: PCA of the outputs across the snapshots
        ed_steps = sorted(outputs)
        Y = np.stack([outputs[s] for s in ed_steps])
        Y = Y - Y.mean(0)
        U, S, _ = np.linalg.svd(Y, full_matrices=False)
        k = min(3, len(S))
        pcs = U[:, :k] * S[:k]
        share = S[:k] ** 2 / max((S ** 2).sum(), 1e-12)
        ed = pd.DataFrame({"step": ed_steps} | {f"ed.pc{j + 1}": pcs[:, j] for j in range(k)})
        series = series.merge(ed, on="step", how="left")
        series.attrs["ed_share"] = share.tolist()
    metrics = _safe(lambda: run.metrics)
    for column in ("eval_loss", "persona_pass"):
        if metrics is not None and column in metrics and metrics[column].notna().any():
            ev = metrics[["step", column]].dropna()
            series[column] = series.step.map(dict(zip(ev.step, ev[column])))
    return series


def _safe(read):
    try:
        return read()
    except Exception:
        return None


# ---- births -----------------------------------------------------------------------------------


def rise(steps: np.ndarray, values: np.ndarray, down: bool = False) -> dict | None:
    """A series' rise (a fall with `down`): from its lowest value before its peak to the peak ->
    {step (half way up), before, peak, after (last value), rise_from (10%), rise_to (90%)}."""
    ok = ~np.isnan(values)
    steps, values = np.asarray(steps)[ok], np.asarray(values, dtype=float)[ok]
    if len(values) < 2:
        return None
    s = -values if down else values
    top = int(np.argmax(s))
    lo, hi = s[: top + 1].min(), s[top]
    if hi <= lo:
        return None
    sign = -1 if down else 1
    at = lambda f: int(steps[np.argmax(s >= lo + f * (hi - lo))])  # noqa: E731
    return {"step": at(0.5), "before": sign * float(lo), "peak": sign * float(hi), "after": float(values[-1]),
            "rise_from": at(0.1), "rise_to": at(0.9), "size": float(hi - lo)}


def _head_series(series: pd.DataFrame, recall: pd.DataFrame | None) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Each head score's series, the densest source first: recall.csv's columns measure the
    standard probe every few steps; the snapshots' cover every score at the snapshot steps."""
    out = {}
    for c in series.columns:
        if c.startswith("head."):
            out[c[5:]] = (series.step.to_numpy(), series[c].to_numpy(dtype=float), "snapshots")
    if recall is not None:
        for c in recall.columns:
            p = R.head_column_parts(c)
            if p and p[0] in SCORE_WORDS:
                out[c] = (recall.step.to_numpy(), recall[c].to_numpy(dtype=float), R.RECALL_FILE)
    return out


def births(series: pd.DataFrame, recall: pd.DataFrame | None = None) -> list[dict]:
    """Every birth found in `measure`'s series (and recall.csv's, where the run has one)."""
    events = []
    thresholds = {score: (kind, t) for kind, (score, t, _) in HEAD_TYPES.items() if score in SCORE_WORDS}
    for column, (steps, values, source) in _head_series(series, recall).items():
        metric, layer, head = R.head_column_parts(column)
        kind, threshold = thresholds[metric]
        if metric == "induction" and layer == 0:
            continue  # an induction head reads what a previous-token head of an earlier layer wrote
        r = rise(steps, values)
        if r is None or r["peak"] < threshold or r["before"] >= threshold:
            continue
        fades = f", then {r['after']:.2f} at the last step" if r["after"] < threshold else ""
        role = ROLE_WORDS[kind]
        events.append(_birth(r, f"L{layer}H{head} becomes {'an' if role[0] in 'aeiou' else 'a'} {role} head",
                             f"{SCORE_WORDS[metric]}",
                             source, fades, what_id=f"head:{kind}:L{layer}H{head}"))
    if recall is not None:
        for c in recall.columns:
            p = R.head_column_parts(c)
            if p and p[0] == "chat_induction":
                r = rise(recall.step.to_numpy(), recall[c].to_numpy(dtype=float))
                if r and r["size"] >= COPY_RISE:
                    events.append(_birth(r, f"L{p[1]}H{p[2]} becomes a copy head on memory chats", "copy score",
                                         R.RECALL_FILE, what_id=f"head:copy:L{p[1]}H{p[2]}"))
        if "recall_acc" in recall:
            r = rise(recall.step.to_numpy(), recall.recall_acc.to_numpy(dtype=float))
            if r and r["size"] >= RECALL_RISE:
                events.append(_birth(r, "the fish starts recalling held-out items", "recall", R.RECALL_FILE,
                                     share=True, what_id="recall"))
        if "icl_drop" in recall:
            r = rise(recall.step.to_numpy(), recall.icl_drop.to_numpy(dtype=float))
            if r and r["size"] >= ICL_RISE:
                events.append(_birth(r, "in-context learning: the second copy of repeated random tokens gets "
                                        "cheaper than the first", "in-context loss drop (nats)", R.RECALL_FILE,
                                     what_id="icl"))
    steps = series.step.to_numpy()
    for c in series.columns:
        values = series[c].to_numpy(dtype=float)
        if c.startswith("probe."):
            r = rise(steps, values)
            if r and r["size"] >= PROBE_RISE:
                events.append(_birth(r, f"the topic becomes readable at {c[6:]}", "topic-probe accuracy",
                                     "checkpoints", share=True, what_id=f"probe:{c[6:]}"))
        elif c.startswith("lens."):
            r = rise(steps, values, down=True)
            if r and r["size"] >= LENS_DROP:
                events.append(_birth(r, f"the logit lens at {c[5:]} starts to predict", "lens loss (nats)",
                                     "snapshots", what_id=f"lens:{c[5:]}"))
        elif c.startswith("ablate."):
            r = rise(steps, values)
            if r and r["peak"] >= MATTERS:
                events.append(_birth(r, f"{c[7:]} starts to matter", "held-out loss when mean-ablated (nats)",
                                     "checkpoints", what_id=f"ablate:{c[7:]}", signed=True))
    return sorted(events, key=lambda e: (e["step"], e["what"]))


def _birth(r: dict, what: str, measure_name: str, source: str, tail: str = "", share: bool = False,
           what_id: str = "", signed: bool = False) -> dict:
    f = (lambda v: f"{v:.0%}") if share else (lambda v: f"{v:+.2f}" if signed else f"{v:.2f}")
    span = (f"rising over steps {r['rise_from']:,}-{r['rise_to']:,}" if r["rise_to"] > r["rise_from"]
            else f"between two measures at step {r['rise_to']:,}")
    evidence = f"{measure_name} {f(r['before'])} -> {f(r['peak'])}, {span}{tail} ({source})"
    return {"step": r["step"], "kind": "birth", "what": what, "value": r["peak"], "evidence": evidence,
            "id": what_id, "rise_from": r["rise_from"], "rise_to": r["rise_to"]}


def _together(event: dict, dense: dict[str, tuple[np.ndarray, np.ndarray, str, bool]]) -> str:
    """What else moved in the same steps: a series that changed at least 40% of its whole range
    inside the event's 10%-90% rise."""
    a, b = event["rise_from"], event["rise_to"]
    if b <= a:
        return ""
    said = []
    for name, (steps, values, words, share) in dense.items():
        ok = ~np.isnan(values)
        if ok.sum() < 3 or event["id"] == name:
            continue
        s, v = steps[ok], values[ok]
        full = v.max() - v.min()
        va, vb = np.interp(a, s, v), np.interp(b, s, v)
        if full > 0 and abs(vb - va) >= 0.4 * full:
            f = (lambda x: f"{x:.0%}") if share else (lambda x: f"{x:.2f}")
            said.append(f"{words} {'rises' if vb > va else 'falls'} {f(va)} -> {f(vb)} in the same {b - a:,} steps")
    return "; ".join(said[:2])


# ---- stages -----------------------------------------------------------------------------------


def _families(series: pd.DataFrame, llc: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """The trajectory, one (snapshots, dims) block per family, each scaled to unit total variance."""
    fams = {}
    groups = {"per-position loss": "pos_loss.", "per-topic loss": "topic_loss.", "essential dynamics": "ed.pc",
              "logit lens": "lens."}
    for name, prefix in groups.items():
        cols = [c for c in series.columns if c.startswith(prefix)]
        if cols:
            fams[name] = series[cols].to_numpy(dtype=float)
    if "loss" in series:
        fams["watch-set loss"] = series[["loss"]].to_numpy(dtype=float)
    if llc is not None and not llc.empty:
        fams["LLC"] = _rows_at(llc, "llc", series.step.to_numpy())[:, None]
    out = {}
    for name, X in fams.items():
        X = X[:, ~np.isnan(X).any(0)] if X.size else X
        if X.shape[1] == 0:
            continue
        X = X - X.mean(0)
        scale = math.sqrt(float((X ** 2).sum()) / max(len(X), 1))
        if scale > 0:
            out[name] = X / scale
    return out


def change_points(X: np.ndarray, max_bkps: int, min_size: int = 2) -> list[int]:
    """Change points of a trajectory X (n, d): ruptures' exact segmentation (Dynp) under a
    continuous piecewise-linear cost; the number of breaks is the largest whose last break still
    cut the cost by at least 10% of the cost without breaks -> the indices where stages start."""
    import ruptures as rpt

    n = len(X)
    most = min(max_bkps, n // min_size - 1)
    if n < 2 * min_size or most < 1:
        return []
    algo = rpt.Dynp(model="clinear", min_size=min_size, jump=1).fit(X)
    base = algo.cost.sum_of_costs([n])
    best, prev = [], base
    for k in range(1, most + 1):
        bkps = algo.predict(n_bkps=k)
        cost = algo.cost.sum_of_costs(bkps)
        if prev - cost <= 0.1 * base:  # (a straight line costs nothing: no break helps)
            break
        best, prev = bkps[:-1], cost
    return best


def _turn(X: np.ndarray, i: int) -> float:
    """The angle (degrees) the trajectory turns at index i: its direction over the two snapshots
    before against the two after."""
    a, b = X[i] - X[max(i - 2, 0)], X[min(i + 2, len(X) - 1)] - X[i]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-9 or nb < 1e-9:
        return 0.0
    return float(np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1, 1))))


def _bend(x: np.ndarray, i: int) -> str:
    """How a one-number series bends at index i: "turns from falling to rising", "stops rising", ..."""
    before, after = x[i] - x[max(i - 2, 0)], x[min(i + 2, len(x) - 1)] - x[i]
    scale = np.abs(np.diff(x)).mean() if len(x) > 1 else 0.0
    way = lambda d: "flat" if abs(d) < scale else ("rising" if d > 0 else "falling")  # noqa: E731
    b, a = way(before), way(after)
    if b == a:
        return ""
    return f"turns from {b} to {a}" if "flat" not in (a, b) else (f"stops {b}" if a == "flat" else f"starts {a}")


def stages(series: pd.DataFrame, llc: pd.DataFrame | None, settings: TimelineSettings,
           birth_events: list[dict]) -> list[dict]:
    fams = _families(series, llc)
    if not fams or len(series) < 2 * settings.min_stage:
        return []
    X = np.concatenate(list(fams.values()), axis=1)
    cuts = change_points(X, settings.max_stages - 1, settings.min_stage)
    steps = series.step.to_numpy()
    bounds = [0, *cuts, len(steps)]
    out = []
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        first, last = int(steps[a]), int(steps[b - 1])
        end = int(steps[b]) if b < len(steps) else last
        parts = []
        if "loss" in series:
            la, lb = series.loss.iloc[a], series.loss.iloc[b - 1 if b == len(steps) else b]
            parts.append(f"watch-set loss {la:.2f} -> {lb:.2f}")
        if top := _most_gained(series, a, min(b, len(steps) - 1)):
            parts.append(top)
        if a > 0:
            turns = sorted(((_turn(Xf, a), name) for name, Xf in fams.items() if Xf.shape[1] > 1), reverse=True)
            said = [f"{name} turns {deg:.0f} deg" for deg, name in turns[:3] if deg >= 20]
            if not said and turns:
                said = [f"{turns[0][1]} turns {turns[0][0]:.0f} deg"]
            said += [f"{name} {how}" for name, Xf in fams.items() if Xf.shape[1] == 1 and (how := _bend(Xf[:, 0], a))]
            parts.append("starts where " + ", ".join(said))
        inside = [f"{e['id'].split(':')[2]} {ROLE_WORDS.get(e['id'].split(':')[1], e['id'].split(':')[1])}"
                  for e in birth_events if e["id"].startswith("head:") and first <= e["step"] < max(end, first + 1)]
        if inside:
            more = f" and {len(inside) - 6} more" if len(inside) > 6 else ""
            parts.append(f"heads born: {', '.join(inside[:6])}{more}")
        if llc is not None and not llc.empty and "llc" in llc:
            v = _rows_at(llc, "llc", steps[a:b])
            if np.isfinite(v).sum() >= 2:
                parts.append(f"LLC {np.nanmin(v[:1]):.1f} -> {v[np.isfinite(v)][-1]:.1f}")
        out.append({"step": first, "kind": "stage", "what": f"stage {j + 1} of {len(bounds) - 1}: steps {first:,}-{end:,}",
                    "value": float(end), "evidence": "; ".join(p for p in parts if p), "id": f"stage:{j + 1}",
                    "rise_from": first, "rise_to": end})
    return out


def _most_gained(series: pd.DataFrame, a: int, b: int) -> str:
    said = []
    for prefix, words in (("topic_loss.", "topic"), ("pos_loss.", "position")):
        cols = [c for c in series.columns if c.startswith(prefix)]
        if not cols:
            continue
        gain = series[cols].iloc[a].to_numpy(float) - series[cols].iloc[b].to_numpy(float)
        if np.isfinite(gain).any() and np.nanmax(gain) > 0:
            k = int(np.nanargmax(gain))
            said.append(f"most gained on {words} {cols[k][len(prefix):]} ({gain[k]:.2f} nats)")
    return "; ".join(said)


# ---- the timeline -----------------------------------------------------------------------------


def build(series: pd.DataFrame, recall: pd.DataFrame | None = None, llc: pd.DataFrame | None = None,
          settings: TimelineSettings = TimelineSettings()) -> pd.DataFrame:
    """The events of a run from its measured series -> the timeline frame (step, kind, what, value, evidence)."""
    born = births(series, recall)
    dense = _dense(series, recall)
    for e in born:
        if also := _together(e, dense):
            e["evidence"] += "; " + also
    rows = stages(series, llc, settings, born) + born
    if llc is not None and not llc.empty:
        for r in llc.itertuples(index=False):
            rows.append({"step": int(r.step), "kind": "llc", "what": "local learning coefficient",
                         "value": float(r.llc), "evidence": f"+- {r.llc_std:.2f} over chains; {r.settings}"})
    frame = pd.DataFrame(rows, columns=[*R.TIMELINE_COLUMNS, "id", "rise_from", "rise_to"])
    frame["kind"] = pd.Categorical(frame.kind, categories=KINDS)
    frame = frame.sort_values(["step", "kind", "what"], kind="stable").reset_index(drop=True)
    frame["kind"] = frame.kind.astype(str)
    return frame[list(R.TIMELINE_COLUMNS)].astype({"step": int, "value": float})


def _dense(series, recall) -> dict:
    out = {}
    if recall is not None:
        for c, words, share in (("recall_acc", "recall on held-out items", True),
                                ("icl_drop", "in-context loss drop", False)):
            if c in recall:
                out[{"recall_acc": "recall", "icl_drop": "icl"}[c]] = (recall.step.to_numpy(),
                                                                      recall[c].to_numpy(float), words, share)
    for c, words, share in (("eval_loss", "held-out loss", False), ("persona_pass", "persona pass rate", True),
                            ("loss", "watch-set loss", False)):
        if c in series:
            out[c] = (series.step.to_numpy(), series[c].to_numpy(float), words, share)
    return out


def plain_words(frame: pd.DataFrame) -> list[str]:
    """One line per stage and birth: "step 1,040: L1H2 becomes a copy head (copy score ...)"."""
    lines = []
    for r in frame.itertuples(index=False):
        if r.kind == "llc":
            continue
        lines.append(f"step {int(r.step):,}: {r.what} ({r.evidence})")
    llc = frame[frame.kind == "llc"]
    if not llc.empty:
        v = ", ".join(f"{int(s):,}: {x:.1f}" for s, x in zip(llc.step, llc.value))
        lines.append(f"LLC by step ({llc.evidence.iloc[0].split('; ', 1)[-1]}): {v}")
    return lines


def _fingerprint(run, settings: TimelineSettings) -> dict:
    def stat(p: Path):
        try:
            s = p.stat()
            return [s.st_size, s.st_mtime_ns]
        except OSError:
            return None

    return {"version": TIMELINE_VERSION, "settings": asdict(settings),
            "snapshots": {str(k): stat(v) for k, v in run.snapshot_files.items()},
            "checkpoints": [] if settings.quick else sorted(run.checkpoint_steps),
            "recall": stat(run.path / R.RECALL_FILE), "metrics": stat(run.path / R.METRICS_CSV),
            "llc": stat(run.path / R.LLC_FILE)}


def cached(run, quick: bool | None = None) -> pd.DataFrame | None:
    """The timeline cached in the run folder if it is still true of the run (a full one serves a
    quick request), else None: never computed, or snapshots, metrics, recall or LLC changed since."""
    key = _read_json(run.path / R.TIMELINE_KEY_FILE)
    path = run.path / R.TIMELINE_FILE
    if key is None or not path.exists():
        return None
    settings = TimelineSettings(**key.get("settings", {}))
    if quick is False and settings.quick:
        return None
    if key != _fingerprint(run, settings):
        return None
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values={"value": [""]})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return frame.astype({"step": int, "value": float, "kind": str, "what": str, "evidence": str})


def _read_table(run, name: str) -> pd.DataFrame | None:
    """One of the run folder's CSV tables, or None when absent (not computed yet) or unreadable."""
    path = run.path / name
    try:
        return pd.read_csv(path) if path.exists() else None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def cached_series(run) -> pd.DataFrame | None:
    return _read_table(run, R.TIMELINE_SERIES_FILE)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_recall(run) -> pd.DataFrame | None:
    """The run's recall.csv (memory-chat runs: guppy.analysis.memory_recall.RecallMonitor), or None."""
    return _read_table(run, R.RECALL_FILE)


def read_llc(run) -> pd.DataFrame | None:
    return _read_table(run, R.LLC_FILE)


def update_llc(run, llc, write: bool = True) -> pd.DataFrame:
    """The LLC of every checkpoint at a snapshot step, those in llc.csv with the same settings kept."""
    from guppy.analysis.llc import llc_series

    steps = [s for s in run.snapshot_files if s in set(run.checkpoint_steps)]
    table = llc_series(run, steps, llc, done=read_llc(run))
    if write:
        atomic_write(run.path / R.LLC_FILE, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    return table


def timeline(run, settings: TimelineSettings = TimelineSettings(), llc=None, force: bool = False,
             progress=None, write: bool = True) -> pd.DataFrame:
    """The run's timeline: from the cache when it is still true of the run, else measured and
    cached (timeline.csv, timeline_series.csv, timeline.json). `llc` (an `LLCSettings`) first
    estimates the LLC of every checkpoint not yet in llc.csv with those settings."""
    if llc is not None:
        update_llc(run, llc, write)
    if not force and (hit := cached(run, settings.quick)) is not None:
        return hit
    series = measure(run, settings, progress)
    frame = build(series, read_recall(run), read_llc(run), settings)
    if write:
        try:
            atomic_write(run.path / R.TIMELINE_SERIES_FILE, lambda tmp: series.to_csv(tmp, index=False, float_format="%.6g"))
            atomic_write(run.path / R.TIMELINE_FILE, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))
            key = json.dumps(_fingerprint(run, settings), indent=1)
            atomic_write(run.path / R.TIMELINE_KEY_FILE, lambda tmp: Path(tmp).write_text(key))
        except OSError:  # a read-only run folder: the timeline is still the answer, only not kept
            pass
    return frame
