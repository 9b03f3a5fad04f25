"""Recall on memory chats: can the model repeat what the user told it earlier in the chat?

    batch = recall_batch(tokenizer, chats, n_ctx)        # held-out memory chats (guppy.data.memory_chats)
    recall_scores(model, batch)                          # {"recall_loss", "recall_token_acc", "recall_acc"}
    recall_scores(model, batch, fwd_hooks=ablation_hooks(model, heads=[(1, 2)]))   # the same, one head off
    chat_scores(model, random_items(batch, vocab_size))  # the item swapped for random tokens, + copy scores

Scored teacher-forced on the tokens of the recalled item in the last reply (`Chat.recall`): its
loss, the share of its tokens predicted exactly (argmax), and `acc`, the share of chats whose
item is right in every token. Held-out items are never in train, so only copying scores.

`RecallMonitor` is a training callback that measures this every few steps, together with each
head's copy score inside the chats (`chat_scores`), the same two with the item swapped for random
tokens (`random_items`), and each head's induction and previous-token scores on repeated random
tokens (`guppy.record.head_scores`) with the in-context loss on them (`icl_losses`), and rewrites `recall.csv` in the run folder: a curve dense enough to date when the induction head
forms, far cheaper than a full snapshot.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from guppy.record import head_scores as M
from guppy.run.format import HEAD_COLUMN, ICL_DROP, ICL_FIRST, ICL_SECOND, RECALL_FILE, head_column_parts, layer_of
from guppy.run.watch_set import repeated_random_tokens
from guppy.run.writer import atomic_write
from guppy.train.callbacks import Callback

DENSE_METRICS = ("induction", "prev_token")


@dataclass
class RecallBatch:
    tokens: torch.Tensor  # (B, T) padded with pad_id
    lengths: torch.Tensor  # (B,)
    item_mask: torch.Tensor  # (B, T-1) bool over next-token targets: the recalled item's tokens in the last reply
    chats: list  # the Chats, in order
    copy_pairs: torch.Tensor  # (N, 3) int64: (row, query q, key k) where predicting the item's next token at q,
    #  an induction head attends to k, the position after the last earlier occurrence of token q


def item_token_span(tokenizer, reply: str, item: str) -> tuple[int, int]:
    """(first, end) token indices, within the encoded reply, of the last occurrence of `item`."""
    at = reply.rfind(item)
    if at < 0:
        raise ValueError(f"recalled item {item!r} is not in the reply {reply!r}")
    enc = tokenizer.tok.encode(reply, add_special_tokens=False)
    inside = [i for i, (s, e) in enumerate(enc.offsets) if s < at + len(item) and e > at]
    return inside[0], inside[-1] + 1


def recall_batch(tokenizer, chats, n_ctx: int) -> RecallBatch:
    """Memory chats (those with a `recall` item) as one padded batch; longer chats than n_ctx are dropped."""
    chats = [c for c in chats if c.recall]
    if not chats:
        raise ValueError("no memory chats to score recall on; train with --memory-fraction > 0")
    ids, starts = tokenizer.encode_chats([c.prompt for c in chats], [c.reply for c in chats],
                                         [c.history for c in chats])
    keep = [i for i, x in enumerate(ids) if len(x) <= n_ctx + 1]
    chats, ids, starts = [chats[i] for i in keep], [ids[i] for i in keep], [starts[i] for i in keep]
    T = max(map(len, ids))
    tokens = torch.full((len(ids), T), tokenizer.pad_id, dtype=torch.long)
    item = torch.zeros(len(ids), T - 1, dtype=torch.bool)
    for row, (x, s, c) in enumerate(zip(ids, starts, chats)):
        tokens[row, :len(x)] = torch.tensor(x)
        first, end = item_token_span(tokenizer, c.reply, c.recall)
        item[row, s + first - 1:s + end - 1] = True  # target t is predicted at position t - 1
    return RecallBatch(tokens, torch.tensor([len(x) for x in ids]), item, chats, _copy_pairs(tokens, item))


def held_out_memory_chats(run_dir, n: int | None = None) -> list:
    """The first `n` (default all) held-out memory chats of a run (regenerated from its data
    config, cached); a clear error if it was trained without memory chats."""
    from guppy.run.reader import load_eval_data

    chats = [c for c in load_eval_data(run_dir)[1] if c.recall][:n]
    if not chats:
        raise ValueError(f"{run_dir}: the run has no memory chats (train with --memory-fraction > 0)")
    return chats


def example_chat(chats: list):
    """The memory chat to draw a copy head's attention on: the first whose item has four words or
    more (a long item shows the copy's diagonal), else the first."""
    return next((c for c in chats if len(c.recall.split()) >= 4), chats[0])


def _copy_pairs(tokens: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """RecallBatch.copy_pairs for these tokens and item mask."""
    pairs = []
    for row in range(len(tokens)):
        seq = tokens[row].tolist()
        for q in torch.nonzero(item[row]).flatten().tolist():
            earlier = [k for k in range(q - 1) if seq[k] == seq[q]]
            if earlier:
                pairs.append((row, q, earlier[-1] + 1))
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 3)


def random_items(batch: RecallBatch, vocab_size: int, seed: int = 0, pool: torch.Tensor | None = None) -> RecallBatch:
    """The same chats with the recalled item's tokens, wherever the chat says them, replaced by the
    same random tokens (ids 3..V-1, never special, as in the repeated-random-tokens probe): copying
    these is copying tokens the model was never trained to copy, inside the chat's frame. Chats
    whose item's tokens do not occur verbatim earlier (a tokenization that differs) are left out.
    `pool`: draw the random tokens from these ids instead (e.g. `item_tokens(batch)`)."""
    g = torch.Generator().manual_seed(seed)
    tokens, keep = batch.tokens.clone(), []
    for row in range(len(tokens)):
        at = torch.nonzero(batch.item_mask[row]).flatten() + 1  # the item's tokens in the last reply
        first, n = int(at[0]), len(at)
        seq = tokens[row].tolist()
        earlier = [i for i in range(first - n + 1) if seq[i:i + n] == seq[first:first + n]]
        if not earlier:
            continue
        random_tokens = (torch.randint(3, vocab_size, (n,), generator=g) if pool is None
                         else pool[torch.randint(len(pool), (n,), generator=g)])
        for i in [*earlier, first]:
            tokens[row, i:i + n] = random_tokens
        keep.append(row)
    if not keep:
        raise ValueError("no memory chat repeats its item verbatim: nothing to swap random tokens into")
    tokens, item = tokens[keep], batch.item_mask[keep]
    return RecallBatch(tokens, batch.lengths[keep], item, [batch.chats[i] for i in keep], _copy_pairs(tokens, item))


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def chat_scores(model, batch: RecallBatch, fwd_hooks=(), prefix: str = "recall",
                copy_metric: str | None = "chat_induction") -> dict[str, float]:
    """One forward pass over `batch`: the recall scores (`{prefix}_loss`, `{prefix}_token_acc`,
    `{prefix}_acc`; see the module docstring) and, unless `copy_metric` is None, every head's copy
    score, as recall.csv columns `{copy_metric}.L{l}H{h}`: its mean attention, from each position
    that predicts a token of the recalled item, to the position after the last earlier occurrence
    of the current token (the copy an induction head makes). Unlike the score on repeated random
    tokens, this is measured on the model's own data, where a copying head may work before it
    generalises to any token."""
    device = _device(model)
    tokens, m = batch.tokens.to(device), batch.item_mask.to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    row, q, k = batch.copy_pairs.to(device).unbind(1)
    out: dict[str, float] = {}

    def on_pattern(pattern, hook):  # (B, H, T, T)
        layer = layer_of(hook.name)
        mass = pattern[row, :, q, k].float().mean(0) if len(row) else torch.zeros(pattern.shape[1])  # (H,)
        for h, v in enumerate(mass.tolist()):
            out[HEAD_COLUMN.format(metric=copy_metric, layer=layer, head=h)] = v

    hooks = [*fwd_hooks, *([("blocks.*.attn.hook_pattern", on_pattern)] if copy_metric else [])]
    was_training = model.training
    model.eval()
    try:
        logits = model.run_with_hooks(x, fwd_hooks=hooks)  # (B, T-1, V)
    finally:
        model.train(was_training)
    m = m[:, :x.shape[1]]
    loss = torch.nn.functional.cross_entropy(logits[m].float(), y[m])
    right = torch.zeros_like(m)
    right[m] = logits[m].argmax(-1) == y[m]
    chat_right = (right | ~m).all(1)  # every item token right
    return {f"{prefix}_loss": float(loss), f"{prefix}_token_acc": float(right[m].float().mean()),
            f"{prefix}_acc": float(chat_right.float().mean())} | out


def recall_scores(model, batch: RecallBatch, fwd_hooks=()) -> dict[str, float]:
    """Teacher-forced loss and accuracy on the recalled items' tokens (see the module docstring)."""
    return chat_scores(model, batch, fwd_hooks, copy_metric=None)


def chat_induction(model, batch: RecallBatch) -> dict[str, float]:
    """Every head's copy score inside the memory chats, `chat_induction.L{l}H{h}` (see `chat_scores`)."""
    return {k: v for k, v in chat_scores(model, batch).items() if head_column_parts(k)}


def item_tokens(batch: RecallBatch) -> torch.Tensor:
    """The distinct token ids the recalled items of `batch` are made of."""
    return torch.unique(batch.tokens[:, 1:][batch.item_mask])


def repeated_batch(prefix: list[int], middle: list[int], period: int, pool: torch.Tensor,
                   n: int = 32, seed: int = 0) -> RecallBatch:
    """`n` sequences `prefix + r + middle + r`, r `period` distinct tokens drawn from `pool`, as a
    RecallBatch whose 'item' is the second copy after its first token (what copying can predict):
    `chat_scores` on it gives every head's copy score and the accuracy of the copy, in any frame
    (a bare start token, a user turn, words between the copies)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        r = pool[torch.randperm(len(pool), generator=g)[:period]].tolist()
        rows.append([*prefix, *r, *middle, *r])
    T = len(rows[0])
    tokens = torch.tensor(rows)
    item = torch.zeros(n, T - 1, dtype=torch.bool)
    item[:, T - period:] = True  # targets: the second copy's tokens 2..period, predicted at T-period .. T-2
    return RecallBatch(tokens, torch.full((n,), T), item, [None] * n, _copy_pairs(tokens, item))


@torch.no_grad()
def chat_pattern(model, batch: RecallBatch, layer: int, head: int, row: int = 0) -> np.ndarray:
    """One head's attention in one chat of `batch`, (item positions, chat positions): the rows are
    the positions that predict the recalled item's tokens, the columns the whole chat."""
    n = int(batch.lengths[row]) - 1
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(batch.tokens[row:row + 1, :n].to(_device(model)), names=name)
    rows = torch.nonzero(batch.item_mask[row, :n]).flatten().to(_device(model))
    return cache[name][0, head][rows].float().cpu().numpy()


def corrupted(chats, seed: int = 0) -> list:
    """The same chats with the item told earlier swapped for another chat's item (the answer keeps
    the original): accuracy on these is what a model scores without the information, i.e. chance."""
    from dataclasses import replace

    rng = random.Random(seed)
    items = [c.recall for c in chats]
    out = []
    for c in chats:
        other = rng.choice([i for i in items if i != c.recall] or ["zzz"])
        history = tuple((u.replace(c.recall, other), a.replace(c.recall, other)) for u, a in c.history)
        out.append(replace(c, history=history))
    return out


def repeated_tokens(vocab_size: int, n: int = 8, period: int = 20, seed: int = 0, start_id: int = 1):
    """(tokens (n, 1 + 2 period), lengths, period): random tokens repeated once, after a start token;
    never a special token (ids 0-2). The same sequences the recorder's watch set uses
    (guppy.run.watch_set.repeated_random_tokens)."""
    tokens = torch.tensor(repeated_random_tokens(vocab_size, start_id, n, period, seed))
    return tokens, torch.full((n,), tokens.shape[1]), torch.full((n,), period)


def icl_losses(logits: torch.Tensor, tokens: torch.Tensor, period: int) -> dict[str, float]:
    """The in-context loss on repeated random tokens (a start token, r, r; logits (B, T, V) of
    tokens (B, T)), as recall.csv's `icl_*` columns: the mean loss, in nats, on the first copy's
    tokens and on the second copy's, each but its first token (which nothing before predicts), and
    `icl_drop`, first - second: what copying from the first copy gains."""
    P = period
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]  # (B, T-1)
    first, second = -lp[:, 1:P].mean(), -lp[:, P + 1:2 * P].mean()  # targets 2..P and P+2..2P
    return {ICL_FIRST: float(first), ICL_SECOND: float(second), ICL_DROP: float(first - second)}


@torch.no_grad()
def dense_head_scores(model, tokens, lengths, period) -> dict[str, float]:
    """Every head's induction and previous-token score on repeated random tokens, as recall.csv
    columns, and the in-context loss on them (`icl_losses`). The rows share one period."""
    out: dict[str, float] = {}
    if not bool((period == period[0]).all()):
        raise ValueError("dense_head_scores: the repeated sequences must share one period")

    device = _device(model)
    tokens, lengths, period = tokens.to(device), lengths.to(device), period.to(device)

    def on_pattern(pattern, hook):
        layer = layer_of(hook.name)
        scores = M.head_metrics(pattern.detach(), lengths, period)
        for metric in DENSE_METRICS:
            for h, v in enumerate(scores[metric].tolist()):
                out[HEAD_COLUMN.format(metric=metric, layer=layer, head=h)] = v

    was_training = model.training
    model.eval()
    try:
        logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.*.attn.hook_pattern", on_pattern)])
    finally:
        model.train(was_training)
    return out | icl_losses(logits, tokens, int(period[0]))


class RecallMonitor(Callback):
    """A training callback: every `every` steps and at the last, into recall.csv: the recall and copy
    scores of `n_chats` held-out memory chats (`chat_scores`), the same of those chats with their
    item swapped for random tokens (`random_items`: `random_recall_*`, `chat_random_induction.*`),
    and the dense head scores on repeated random tokens."""

    def __init__(self, every: int = 10, n_chats: int = 256):
        self.every, self.n_chats = every, n_chats
        self.rows: list[dict] = []
        self.seconds = 0.0

    def on_train_start(self, trainer) -> None:
        self.path = Path(trainer.run_dir) / RECALL_FILE
        model, tok = trainer.model, trainer.data.tokenizer
        self.batch = recall_batch(tok, [c for c in trainer.data.chats.eval if c.recall][:self.n_chats], model.cfg.n_ctx)
        self.random = random_items(self.batch, tok.vocab_size)
        self.repeats = repeated_tokens(tok.vocab_size, start_id=tok.start_id)
        if self.path.exists():  # a resumed run keeps the rows it measured up to its checkpoint
            old = pd.read_csv(self.path)
            self.rows = old[old.step <= trainer.step].to_dict("records")
        if not self.rows or self.rows[-1]["step"] < trainer.step:
            self.measure(trainer)
        else:
            self._write()  # without the rows of steps the resumed run will take again

    def on_step_end(self, trainer) -> None:
        if trainer.step % self.every == 0 or trainer.step == trainer.total_steps:
            self.measure(trainer)

    def measure(self, trainer) -> None:
        t0 = time.perf_counter()
        model = trainer.model
        row = {"step": trainer.step, "tokens": trainer.tokens} | chat_scores(model, self.batch)
        row |= chat_scores(model, self.random, prefix="random_recall", copy_metric="chat_random_induction")
        row |= dense_head_scores(model, *self.repeats)
        self.rows.append(row)
        self._write()
        self.seconds += time.perf_counter() - t0

    def _write(self) -> None:  # the whole table, atomically: a reader never sees a torn row
        table = pd.DataFrame(self.rows)
        atomic_write(self.path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.5g"))


def read_recall(run_dir: str | Path) -> pd.DataFrame | None:
    """A run's recall.csv (one row per measured step), or None if it has none."""
    path = Path(run_dir) / RECALL_FILE
    return pd.read_csv(path) if path.exists() else None


def previous_token_head(table: pd.DataFrame, before_layer: int | None = None) -> str | None:
    """recall.csv's previous-token column (`prev_token.L0H3`) highest at the last measured step,
    among the layers before `before_layer` (where an induction head's partner must sit), or all."""
    cols = [c for c in table.columns if (p := head_column_parts(c)) and p[0] == "prev_token"
            and (before_layer is None or p[1] < before_layer)]
    return max(cols, key=lambda c: table[c].iloc[-1], default=None)


def column_rise(table: pd.DataFrame, column: str) -> dict:
    """How one recall.csv column rose: its lowest value before its peak (`before`), its peak
    (`peak`), its last (`after`), and the steps it first crossed 10%, 50% and 90% of the way from
    `before` to `peak` (`rise_from`, `step`, `rise_to`): a rise dated half way up, as formation()."""
    s, steps = table[column].to_numpy(), table.step.to_numpy()
    lo, hi = s[: int(np.argmax(s)) + 1].min(), s.max()
    at = {name: int(steps[np.argmax(s >= lo + f * (hi - lo))]) for name, f in
          (("rise_from", 0.1), ("step", 0.5), ("rise_to", 0.9))}
    return {"before": float(lo), "peak": float(hi), "after": float(s[-1])} | at


def copy_heads(table: pd.DataFrame, layer: int, metric: str = "induction", floor: float = 0.1) -> list[str]:
    """The heads of `layer` ("L1H2") whose `metric` score ends at `floor` or above: the heads that
    share the copying when it is split between redundant heads (Singh et al. 2024)."""
    last = table.iloc[-1]
    return [c.split(".", 1)[1] for c in table.columns
            if (p := head_column_parts(c)) and p[0] == metric and p[1] == layer and last[c] >= floor]


def formation(table: pd.DataFrame, threshold: float | None = 0.5, metric: str = "induction") -> dict | None:
    """When the induction head formed, from recall.csv: the head whose `metric` score rises
    highest, the first step it exceeds `threshold` (None: half way up its own rise), and the steps
    its score took to climb from 10% to 90% of its rise. None if no head reaches the threshold."""
    cols = [c for c in table.columns if c.startswith(f"{metric}.") and (p := head_column_parts(c)) and p[1] > 0]
    if not cols:  # layer 0 never: an induction head reads what a previous-token head of an earlier layer wrote
        return None
    best = max(cols, key=lambda c: table[c].max())
    s = table[best].to_numpy()
    steps = table.step.to_numpy()
    rise = column_rise(table, best)
    lo = rise["before"]
    if threshold is None:
        threshold = lo + 0.5 * (rise["peak"] - lo)
    if s.max() < threshold:
        return None
    head = best.split(".", 1)[1]  # "L1H2"
    _, layer, h = head_column_parts(best)
    return {"head": head, "layer": layer, "index": h, "step": int(steps[np.argmax(s >= threshold)]),
            "score_before": float(lo), "score_after": float(s[-1]), "rise_from": rise["rise_from"],
            "rise_to": rise["rise_to"]}
