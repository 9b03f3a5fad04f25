"""An SAE scored against what the fish is known to know, on held-out chats it never trained on.

    s = score_sae(model, coder, heldout, train_x, persona_topics)   # a SnapshotScores of tables
    s.features   # per feature: density, dead, dense, best topic and its F1, promoted tokens
    s.topics     # per topic: the feature that detects it best (F1 at the last prompt token)
    s.memory     # per memory kind: the feature that fires where the recalled item is said
    s.summary    # reconstruction (explained variance, spliced-in loss), dead/dense counts, topics found

- **Topic features.** A feature "detects" a topic when it fires (activation > 0) at the chat's
  last prompt token, the position before the reply starts, where the chat template is the same
  token for every chat and only the context can say the topic. F1 of that detector against the
  chat's topic label, over the held-out chats; a topic is *found* by a feature with F1 >= 0.8.
- **Memory features.** In held-out memory chats, the positions from which the model says the
  recalled item's tokens (guppy.analysis.memory_recall's item mask); F1 of firing there against
  every other real position of that kind's chats.
- **Dead and dense.** Density is the share of the training tokens a feature fires on (the ones
  its SAE learned from); dead: it never fired on them; dense: on more than DENSE of them.
- **Reconstruction.** Explained variance 1 - E|x - x_hat|^2 / E|x - E x|^2 (SAELens's definition)
  on the training tokens and on the held-out ones; the held-out reply-token loss with the SAE's
  output spliced in at the hook (every position but the start token), against the clean loss
  and the zero-ablated one: recovered = (zero - spliced) / (zero - clean).
- **Promoted tokens.** The decoder direction, centred (LayerNorm centres) and through ln_final's
  gain and the unembedding: the tokens it pushes up if it were the last residual.

Shape legend: B chats, T positions, D d_model, F latents, N tokens, C topics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from guppy.analysis.heldout import ChatBatch
from guppy.features.activations import hook_activations, real_positions
from guppy.features.sae import SparseCoder
from guppy.record import head_scores as M
from guppy.run import format as R

FOUND = 0.8  # a topic is found by a feature whose F1 reaches this
DENSE = 0.1  # a feature firing on more than this share of tokens is dense
HIST_BINS = 20
TOP_CHATS = 8  # held-out chats kept per feature for its card
PROMOTED = 6  # tokens listed per feature


@dataclass
class SnapshotScores:
    features: pd.DataFrame  # R.FEATURE_COLUMNS
    topics: pd.DataFrame  # R.TOPIC_COLUMNS
    memory: pd.DataFrame  # R.MEMORY_COLUMNS
    examples: dict[str, torch.Tensor]  # hist (F, HIST_BINS), hist_max (F,), top_chats / top_acts (F, TOP_CHATS)
    summary: dict


def f1_table(fires: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F1, precision and recall of every feature as a detector of every label: fires (N, F) bool,
    labels (N, C) bool -> three (F, C) tensors (0 where undefined)."""
    tp = fires.T.float() @ labels.float()  # (F, C)
    fired = fires.sum(0).float()[:, None]  # (F, 1)
    n = labels.sum(0).float()[None, :]  # (1, C)
    precision = torch.where(fired > 0, tp / fired.clamp(min=1), 0.0)
    recall = torch.where(n > 0, tp / n.clamp(min=1), 0.0)
    f1 = 2 * tp / (fired + n).clamp(min=1)
    return f1, precision, recall


@torch.no_grad()
def density(coder: SparseCoder, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Share of the rows of x (N, D) each latent fires on -> (F,)."""
    counts = torch.zeros(coder.width)
    for i in range(0, len(x), chunk):
        counts += (coder.encode(x[i:i + chunk]) > 0).sum(0)
    return counts / max(len(x), 1)


@torch.no_grad()
def explained_variance(coder: SparseCoder, x: torch.Tensor, chunk: int = 8192) -> float:
    """1 - E|x - x_hat|^2 / E|x - E x|^2 over the rows of x (N, D)."""
    err = sum(float((coder(x[i:i + chunk]) - x[i:i + chunk]).pow(2).sum()) for i in range(0, len(x), chunk))
    return 1 - err / float((x - x.mean(0)).pow(2).sum())


@torch.no_grad()
def promoted_tokens(model, coder: SparseCoder, vocab: list[str], n: int = PROMOTED) -> list[str]:
    d = coder.W_dec - coder.W_dec.mean(-1, keepdim=True)  # (F, D), centred as ln_final centres
    logits = (d * model.ln_final.w) @ model.W_U  # (F, V)
    top = logits.topk(n, dim=-1).indices
    return [" ".join(repr(vocab[int(i)]) if int(i) < len(vocab) else f"<{int(i)}>" for i in row) for row in top]


@torch.no_grad()
def spliced_losses(model, coder: SparseCoder, batch: ChatBatch, hook: str) -> dict[str, float]:
    """Mean reply-token loss, clean, with the SAE's output spliced in at the hook and with the hook zeroed
    (every position but the start token), and the share of the zeroed loss the SAE recovers."""
    keep = torch.zeros(batch.tokens.shape[1], dtype=torch.bool)
    keep[0] = True

    def spliced(x, hook):
        return torch.where(keep[None, :, None], x, coder(x).to(x.dtype))

    def zeroed(x, hook):
        return torch.where(keep[None, :, None], x, torch.zeros_like(x))

    mask = batch.reply_mask
    out = {}
    for name, hooks in (("clean", ()), ("spliced", [(hook, spliced)]), ("zero", [(hook, zeroed)])):
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        per_row = M.mean_loss_per_row(logits, batch.tokens, mask)
        w = mask.float().sum(1)
        out[f"loss_{name}"] = float((per_row * w).sum() / w.sum())
    gap = out["loss_zero"] - out["loss_clean"]
    out["loss_recovered"] = (out["loss_zero"] - out["loss_spliced"]) / gap if gap > 0 else float("nan")
    return out


@torch.no_grad()
def score_sae(model, coder: SparseCoder, heldout: ChatBatch, hook: str, train_x: torch.Tensor,
              persona_topics: list[str], vocab: list[str], memory: dict | None = None,
              loss_chats: int = 128) -> SnapshotScores:
    """Every score of one snapshot's SAE (see the module doc). `memory`: {kind: RecallBatch} of held-out
    memory chats by kind, or None when the run has none."""
    acts = hook_activations(model, heldout.tokens, hook)  # (B, T, D)
    real = real_positions(heldout)  # (B, T)
    x = acts[real]  # (N, D)
    F = coder.width
    cards = _card_stats(coder, acts, real)
    fired = cards.pop("fired")  # (F,) held-out tokens each latent fired on
    heldout_density = fired / real.sum()
    max_act, mean_act = cards["hist_max"], cards.pop("act_sum") / fired.clamp(min=1)
    # topics at the last prompt token
    last = coder.encode(acts[torch.arange(len(heldout.tokens)), heldout.reply_start - 1]) > 0  # (B, F)
    names = sorted(set(heldout.topics))
    labels = torch.tensor([[t == n for n in names] for t in heldout.topics])  # (B, C)
    f1, prec, rec = f1_table(last, labels)
    best = f1.argmax(0)  # (C,) the best feature of each topic
    topics = pd.DataFrame({"topic": names, "feature": best.numpy(), "score": f1.max(0).values.numpy(),
                           "precision": prec[best, torch.arange(len(names))].numpy(),
                           "recall": rec[best, torch.arange(len(names))].numpy(), "n_chats": labels.sum(0).numpy()})
    own = f1.argmax(1)  # (F,) each feature's best topic
    dens = density(coder, train_x)
    features = pd.DataFrame({
        "feature": np.arange(F), "density": dens.numpy(), "heldout_density": heldout_density.numpy(),
        "dead": (dens == 0).numpy(), "dense": (dens > DENSE).numpy(), "mean_act": mean_act.numpy(),
        "max_act": max_act.numpy(), "topic": [names[int(i)] for i in own],
        "score": f1.max(1).values.numpy(), "precision": prec[torch.arange(F), own].numpy(),
        "recall": rec[torch.arange(F), own].numpy(), "promotes": promoted_tokens(model, coder, vocab)})
    mem = memory_features(model, coder, memory or {}, hook)
    loss = spliced_losses(model, coder, _first(heldout, loss_chats), hook)
    found = topics[topics.topic.isin(persona_topics)]
    summary = {"explained_variance": explained_variance(coder, train_x), "heldout_explained_variance": explained_variance(coder, x),
               **loss, "l0": float(fired.sum() / real.sum()), "dead": int((dens == 0).sum()),
               "dense": int((dens > DENSE).sum()), "width": F, "k": coder.k,
               "topics": len(found), "topics_found": int((found.score >= FOUND).sum()),
               "topics_found_share": float((found.score >= FOUND).mean()) if len(found) else float("nan"),
               "heldout_chats": len(heldout.tokens), "train_tokens": len(train_x)}
    return SnapshotScores(features, topics, mem, cards, summary)


@torch.no_grad()
def _card_stats(coder: SparseCoder, acts: torch.Tensor, real: torch.Tensor, chunk: int = 64) -> dict[str, torch.Tensor]:
    """What a feature card shows, from one encoding of the held-out tokens a chunk of chats at a time: each
    latent's activation histogram (HIST_BINS bins from 0 to its largest activation) and the chats where it
    fires most; and how often and how strongly it fired."""
    per_chat, cols, vals = [], [], []
    for i in range(0, len(acts), chunk):
        f = coder.encode(acts[i:i + chunk]) * real[i:i + chunk, :, None]  # (b, T, F), zero off the real tokens
        per_chat.append(f.amax(1))  # (b, F) the largest activation in each chat
        on = f > 0
        cols.append(on.nonzero()[:, 2])
        vals.append(f[on])
    per_chat, cols, vals = torch.cat(per_chat), torch.cat(cols), torch.cat(vals)  # (B, F), (n,), (n,)
    hist_max = per_chat.max(0).values  # (F,)
    bins = (vals / hist_max[cols].clamp(min=1e-12) * HIST_BINS).long().clamp(max=HIST_BINS - 1)
    hist = torch.bincount(cols * HIST_BINS + bins, minlength=coder.width * HIST_BINS).view(coder.width, HIST_BINS)
    top = per_chat.topk(min(TOP_CHATS, len(acts)), dim=0)  # over chats: (TOP_CHATS, F)
    return {"hist": hist.int(), "hist_max": hist_max, "top_chats": top.indices.T.contiguous().int(),
            "top_acts": top.values.T.contiguous(), "fired": torch.bincount(cols, minlength=coder.width).float(),
            "act_sum": torch.zeros(coder.width).index_add_(0, cols, vals)}


@torch.no_grad()
def memory_features(model, coder: SparseCoder, memory: dict, hook: str) -> pd.DataFrame:
    """Per memory kind, the feature whose firing best marks the positions that say the recalled item."""
    rows = []
    for kind, batch in memory.items():
        acts = hook_activations(model, batch.tokens, hook)
        real, item = recall_positions(batch)
        fires = coder.encode(acts[real]) > 0
        f1, prec, rec = f1_table(fires, item[real][:, None])
        j = int(f1[:, 0].argmax())
        rows.append({"kind": kind, "feature": j, "score": float(f1[j, 0]), "precision": float(prec[j, 0]),
                     "recall": float(rec[j, 0]), "n_items": len(batch.chats)})
    return pd.DataFrame(rows, columns=list(R.MEMORY_COLUMNS))


def recall_positions(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(real, item), both (B, T) bool, of a RecallBatch: the positions with a next token (the start token
    left out), and those whose next token is one of the recalled item's tokens in the last reply."""
    t = torch.arange(batch.tokens.shape[1])
    real = (t[None] >= 1) & (t[None] < batch.lengths[:, None] - 1)
    item = torch.zeros_like(real)
    item[:, :-1] = batch.item_mask  # target t + 1 is predicted at position t
    return real, item


def _first(batch: ChatBatch, n: int) -> ChatBatch:
    """The first n chats of a batch, cut to their longest."""
    T = int(batch.lengths[:n].max())
    return ChatBatch(batch.tokens[:n, :T], batch.lengths[:n], batch.reply_start[:n], batch.topics[:n],
                     batch.prompts[:n], batch.pad_id)
