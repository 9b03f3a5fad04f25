"""Features followed across snapshots: each one's lifeline, from the cosine of decoder directions.

    table = lineages([(step, W_dec, alive), ...], threshold=MATCH_COSINE)   # R.LINEAGE_COLUMNS

Between consecutive snapshots, every live feature of the later SAE is matched to the earlier
SAE's live features by the cosine of their decoder directions (what a feature writes into the
residual stream). With `best_parent[j]` the earlier feature closest to later feature j, and
`best_child[i]` the later feature closest to earlier feature i, each counted only at a cosine
>= the threshold:

| event at the later step | when |
|---|---|
| merged    | two or more earlier features have j as their best child |
| split     | j's best parent is also the best parent of another later feature |
| continues | j has a best parent, shared with no other feature: j keeps its lineage |
| born      | nothing earlier is close to j (and every feature of the first snapshot) |

A lineage ends (the feature *dies*) at its last step: nothing later continues it, because it
went dead, split, merged or drifted past the threshold. Dead features (never firing on the
training tokens) take part in no match: warm-started, their untrained decoder would "continue"
for ever. MATCH_COSINE 0.7: the cosine of two random directions in d_model = 384 has a spread
of 1/sqrt(384) = 0.05, so the largest of 1536 x 1536 random pairs is about 0.28; and a feature
split in two along an orthogonal axis (d +- a e) keeps cosine 0.7 with its parent until its
two halves are 90 degrees apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from guppy.run import format as R

MATCH_COSINE = 0.7


def unit_rows(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def match(dec_a: torch.Tensor, dec_b: torch.Tensor, alive_a: torch.Tensor, alive_b: torch.Tensor,
          threshold: float = MATCH_COSINE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best_parent (Fb,), best_child (Fa,), cosine of each best parent (Fb,)); -1 where none reaches
    the threshold or the feature is dead. dec_a (Fa, D), dec_b (Fb, D); alive_* bool."""
    cos = unit_rows(dec_a.float()) @ unit_rows(dec_b.float()).T  # (Fa, Fb)
    cos[~alive_a] = -2.0
    cos[:, ~alive_b] = -2.0
    parent_cos, parent = cos.max(0)  # (Fb,)
    child_cos, child = cos.max(1)  # (Fa,)
    parent = torch.where(parent_cos >= threshold, parent, -1)
    child = torch.where(child_cos >= threshold, child, -1)
    return parent.numpy(), child.numpy(), parent_cos.numpy()


def lineages(snapshots: list[tuple[int, torch.Tensor, torch.Tensor]], threshold: float = MATCH_COSINE) -> pd.DataFrame:
    """One row per live feature per snapshot: step, feature, lineage (an id kept while it continues),
    event (born / continues / split / merged), parents (the earlier lineages it came from, comma-
    separated) and cosine (to its best parent; NaN for a birth). snapshots: (step, W_dec (F, D), alive (F,))
    in step order."""
    rows, next_id = [], 0
    prev = None  # (W_dec, alive, lineage id per feature)
    for step, dec, alive in snapshots:
        alive = torch.as_tensor(alive, dtype=torch.bool)
        ids = np.full(len(dec), -1)
        if prev is None:
            parent = np.full(len(dec), -1)
            cos = np.full(len(dec), np.nan)
            children = np.zeros(0, int)
            child_of = np.zeros(0, int)
        else:
            parent, child_of, cos = match(prev[0], dec, prev[1], alive, threshold)
            children = np.bincount(parent[parent >= 0], minlength=len(prev[0]))  # later features per earlier one
        merged_into = np.bincount(child_of[child_of >= 0], minlength=len(dec)) if len(child_of) else np.zeros(len(dec), int)
        for j in np.flatnonzero(alive.numpy()):
            p = int(parent[j])
            if merged_into[j] >= 2:
                event, sources = "merged", np.flatnonzero(child_of == j)
            elif p >= 0 and children[p] >= 2:
                event, sources = "split", [p]
            elif p >= 0:
                event, sources = "continues", [p]
            else:
                event, sources = "born", []
            if event == "continues":
                ids[j] = prev[2][p]
            else:
                ids[j], next_id = next_id, next_id + 1
            parents = ",".join(str(prev[2][i]) for i in sources) if event in ("split", "merged") else ""
            rows.append((step, int(j), int(ids[j]), event, parents, float(cos[j]) if p >= 0 else float("nan")))
        prev = (dec, alive, ids)
    return pd.DataFrame(rows, columns=list(R.LINEAGE_COLUMNS))


def lifeline(table: pd.DataFrame, lineage: int) -> pd.DataFrame:
    """The rows of one lineage, with the lineages it came from and those that came from it:
    step, feature, lineage, event, parents, cosine, relation (self / parent / child)."""
    own = table[table.lineage == lineage]
    parents = {int(p) for s in own.parents for p in str(s).split(",") if p and p != "nan"}
    children = {int(r.lineage) for r in table.itertuples() if lineage in _ids(r.parents)}
    out = [own.assign(relation="self"),
           table[table.lineage.isin(parents)].assign(relation="parent"),
           table[table.lineage.isin(children)].assign(relation="child")]
    return pd.concat(out, ignore_index=True).sort_values(["step", "relation"])


def _ids(parents) -> set[int]:
    return {int(p) for p in str(parents).split(",") if p and p != "nan"}


def birth_step(features: pd.DataFrame, step: int, feature: int) -> int | None:
    """The first step of the lineage `feature` belongs to at `step` (run.features()); None for a dead one."""
    row = features[(features.step == step) & (features.feature == feature)]
    if row.empty or int(row.lineage.iloc[0]) < 0:
        return None
    return int(features[features.lineage == int(row.lineage.iloc[0])].step.min())


def topic_births(features: pd.DataFrame, topics: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Each topic's best feature at `step` (default the last) and the step its lineage was born:
    topic, feature, score, born (run.features(), run.feature_topics())."""
    step = int(topics.step.max()) if step is None else step
    best = topics[topics.step == step][["topic", "feature", "score"]].reset_index(drop=True)
    best["born"] = [birth_step(features, step, int(f)) for f in best.feature]
    return best
