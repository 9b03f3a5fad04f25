"""Where does a copy head copy? The same random tokens, repeated, in different frames.

    python probes/induction_frames.py --run runs/induction-demo              # the latest snapshot
    python probes/induction_frames.py --run runs/induction-demo --snapshot all

An induction head scored on repeated random tokens (a start token, then r, then r again) is
expected to copy whatever the tokens are. A head that learned to copy inside memory chats may
copy only there, or only tokens like the ones it copied. Each row here is one frame and one
pool of random tokens; its columns, every head's copy score (attention from the second copy to
the token after the same token's first occurrence: `guppy.analysis.memory_recall.chat_scores`) and how much of
the second copy the model predicts right (`copy_token_acc`, teacher-forced):

    bare              start token, r, r                      (the usual probe, Olsson et al.)
    user turn         start, "user", newline, r, r
    user turn, again  start, "user", newline, r, ". again:", r
    memory chat       held-out memory chats, the item wherever said swapped for r (guppy.analysis.memory_recall.random_items)

each with r drawn from the whole vocabulary and from the tokens the held-out items are made of.

Writes runs/<name>/probes/induction_frames.csv (step, frame, pool, copy scores, copy_token_acc)
and induction_frames.html (the latest step's scores as bars).
"""

from __future__ import annotations

import sys

import pandas as pd

from guppy.analysis import probe_runner as A
from guppy.cli import positive_int
from guppy.run.format import head_column_parts

PROG = "induction_frames.py"
PERIOD = 20  # random tokens per copy, as in the recorder's repeated sequences


def frames_table(model, tokenizer, chats, period: int = PERIOD) -> pd.DataFrame:
    """One row per (frame, pool): copy scores of every head after layer 0 and the copy's token accuracy."""
    import torch

    from guppy.analysis.memory_recall import chat_scores, item_tokens, random_items, recall_batch, repeated_batch

    batch = recall_batch(tokenizer, chats, model.cfg.n_ctx)
    empty = tokenizer.encode_chats([""], [""])[0][0]
    user = empty[:empty.index(tokenizer.end_id)]  # the user turn's opening: start, "user", newline
    again = tokenizer.tok.encode(". again:", add_special_tokens=False).ids
    pools = {"any token": torch.arange(3, tokenizer.vocab_size), "item tokens": item_tokens(batch)}
    rows = []
    for pool_name, pool in pools.items():
        frames = {"bare": ([tokenizer.start_id], []), "user turn": (user, []), "user turn, again": (user, again)}
        for frame, (prefix, middle) in frames.items():
            b = repeated_batch(prefix, middle, min(period, len(pool)), pool)
            rows.append({"frame": frame, "pool": pool_name, **_scores(chat_scores(model, b, prefix="copy"))})
        b = random_items(batch, tokenizer.vocab_size, pool=None if pool_name == "any token" else pool)
        rows.append({"frame": "memory chat", "pool": pool_name, **_scores(chat_scores(model, b, prefix="copy"))})
    return pd.DataFrame(rows)


def _scores(scores: dict[str, float]) -> dict[str, float]:
    """A chat_scores result as one row: the copy score of every head after layer 0, the copy's accuracy."""
    heads = {k.split(".", 1)[1]: v for k, v in scores.items() if (p := head_column_parts(k)) and p[1] > 0}
    return heads | {"copy_token_acc": scores["copy_token_acc"]}


def figure(df: pd.DataFrame):
    """Each head's copy score per frame, one panel per pool of random tokens."""
    import plotly.express as px

    heads = [c for c in df.columns if c.startswith("L")]
    long = df.melt(id_vars=["frame", "pool"], value_vars=heads, var_name="head", value_name="copy score")
    fig = px.bar(long, x="frame", y="copy score", color="head", barmode="group", facet_col="pool", range_y=[0, 1])
    fig.add_hline(y=0.5, line_dash="dash", line_color="grey")
    fig.update_layout(title=f"The same {PERIOD} random tokens, repeated, in different frames: where does each head copy?")
    return fig


def compute(run, steps, args):
    from guppy.analysis.memory_recall import held_out_memory_chats

    chats = held_out_memory_chats(run.path, args.chats)
    df = A.by_step([frames_table(run.model(s), run.tokenizer, chats).assign(step=s) for s in steps])
    last = df[df.step == steps[-1]]
    A.print_table(f"step {steps[-1]}: copy score of each head after layer 0 on {PERIOD} random tokens, repeated",
                  last.drop(columns=["step"]), rows=len(last))
    return {"": df}, figure(last)


def main(argv: list[str] | None = None) -> int:
    return A.run_probe(PROG, "Copy scores of every head on the same random tokens in different frames.", compute, argv,
                       output="induction_frames",
                       extra_args=lambda p: p.add_argument("--chats", type=positive_int, default=128,
                                                           help="held-out memory chats to use (default 128)"))


if __name__ == "__main__":
    sys.exit(main())
