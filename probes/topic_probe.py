"""Linear probe: at which layer can the chat's topic be read off the residual stream?

    python probes/topic_probe.py --run runs/demo --snapshot all

Features: the residual stream at each layer boundary, at the last prompt token (where the
reply is about to start; the token itself is the same chat template for every chat), or with
--position mean, averaged over the prompt's tokens. Data: the run's held-out chats, split by
prompt text (a prompt is never in both halves) into train and test. The probe is multinomial
logistic regression on standardised features (guppy.analysis.linear_probe.train_linear_probes). Control:
the same probe trained on shuffled train labels and scored on the real test labels; its
accuracy is what the probe reaches by memorising, and should sit near chance.

Writes runs/<name>/probes/topic_probe.csv (step, point, accuracies) and topic_probe.html.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from guppy.analysis import probe_runner as A
from guppy.analysis.heldout import ChatBatch, encode_batch, heldout_chats
from guppy.analysis.linear_probe import probe_predict, train_linear_probes
from guppy.cli import positive_int
from guppy.run.format import resid_points

PROG = "topic_probe.py"


@torch.no_grad()
def features(model, batch: ChatBatch, position: str) -> tuple[torch.Tensor, list[str]]:
    """Residual stream at every layer boundary -> ((points, B, D), point names). Only the
    prompts run: the model is causal, so the reply's tokens change nothing before it."""
    names = resid_points(model.cfg.n_layers)
    _, cache = model.run_with_cache(batch.tokens[:, :int(batch.reply_start.max())], names=names)
    resid = torch.stack([cache[n] for n in names])  # (points, B, T, D)
    if position == "last":
        return resid[:, torch.arange(len(batch.topics)), batch.reply_start - 1], names
    t = torch.arange(resid.shape[2])
    prompt = ((t[None] >= 1) & (t[None] < batch.reply_start[:, None])).float()  # (B, T)
    return (resid * prompt[None, :, :, None]).sum(2) / prompt.sum(1)[None, :, None], names


def split_by_prompt(prompts: list[str], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    unique = sorted(set(prompts))
    rng = np.random.default_rng(seed)
    test = set(rng.choice(unique, size=max(1, round(test_fraction * len(unique))), replace=False).tolist())
    is_test = np.array([p in test for p in prompts])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def probe_layers(X: torch.Tensor, y: torch.Tensor, train: np.ndarray, test: np.ndarray, n_classes: int,
                 weight_decay: float, seed: int) -> list[dict]:
    """Train, test and shuffled-label control accuracy at each point of X (points, B, D): the
    2 x points probes (real labels, then shuffled) are fitted in one go."""
    gen = torch.Generator().manual_seed(seed)
    shuffled = y[train][torch.randperm(len(train), generator=gen)]
    P = X.shape[0]
    X_train, X_test = X[:, train].repeat(2, 1, 1), X[:, test].repeat(2, 1, 1)  # (2P, n, D)
    probes = train_linear_probes(X_train, torch.cat([y[train].expand(P, -1), shuffled.expand(P, -1)]),
                                   n_classes, weight_decay)
    train_acc = (probe_predict(probes, X_train) == y[train]).float().mean(1)  # (2P,)
    test_acc = (probe_predict(probes, X_test) == y[test]).float().mean(1)
    return [{"train_acc": float(train_acc[p]), "test_acc": float(test_acc[p]), "control_test_acc": float(test_acc[P + p])}
            for p in range(P)]


def figure(df: pd.DataFrame):
    import plotly.express as px

    long = df.melt(id_vars=["step", "point"], value_vars=["test_acc", "control_test_acc"], var_name="measure")
    fig = px.line(long, x="point", y="value", color=long.step.astype(str), line_dash="measure", markers=True,
                  labels={"color": "step", "value": "accuracy", "point": "residual stream point"}, range_y=[0, 1.02],
                  color_discrete_map=A.step_colours(df.step.unique()))
    fig.add_hline(y=float(df.chance.iloc[0]), line_dash="dot", line_color="grey",
                  annotation_text="chance (the most frequent test topic)")
    fig.update_layout(title="Topic read off the residual stream by a linear probe (held-out prompts; "
                            "dashed: the same probe on shuffled labels)")
    return fig


def compute(run, steps, args):
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    batch = encode_batch(run.tokenizer, heldout_chats(run, args.chats), run.model_config.n_ctx)
    topics = sorted(set(batch.topics))
    if len(topics) < 2:
        raise ValueError(f"{run.path}: the held-out chats cover {len(topics)} topic; a probe needs at least 2")
    y = torch.tensor([topics.index(t) for t in batch.topics])
    train, test = split_by_prompt(batch.prompts, args.test_fraction, args.seed)
    chance = float(np.bincount(y[test].numpy(), minlength=len(topics)).max() / len(test))
    rows = []
    for step in steps:
        X, names = features(run.model(step), batch, args.position)
        for name, r in zip(names, probe_layers(X, y, train, test, len(topics), args.weight_decay, args.seed)):
            rows.append({"step": step, "point": name, "position": args.position, **r, "chance": chance,
                         "n_train": len(train), "n_test": len(test), "n_topics": len(topics)})
    df = pd.DataFrame(rows)
    A.print_table(f"step {steps[-1]}: {len(topics)} topics, {len(train)} train / {len(test)} test chats "
                  f"(split by prompt), chance {chance:.3f}",
                  df[df.step == steps[-1]][["point", "train_acc", "test_acc", "control_test_acc"]])
    return {"": df}, figure(df)


def flags(p) -> None:
    p.add_argument("--position", choices=("last", "mean"), default="last",
                   help="last prompt token (default) or the mean over the prompt's tokens")
    p.add_argument("--chats", type=positive_int, default=600, help="held-out chats to use, at most (default 600)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of distinct prompts held out (default 0.3)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="L2 penalty of the probe (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the label shuffle (default 0)")


def main(argv: list[str] | None = None) -> int:
    return A.run_probe(PROG, "Linear probe of the chat topic from the residual stream at each layer.", compute, argv,
                       output="topic_probe", extra_args=flags)


if __name__ == "__main__":
    sys.exit(main())
