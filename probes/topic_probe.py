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
from guppy.analysis.heldout import encode_batch, heldout_chats
from guppy.analysis.linear_probe import features, probe_layers, split_by_prompt
from guppy.cli import positive_int

PROG = "topic_probe.py"


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
