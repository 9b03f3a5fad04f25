"""The local learning coefficient (LLC) of a snapshot's weights, estimated with devinterp's SGLD.

    settings = LLCSettings()                       # the calibrated defaults (docs/timeline.md)
    row = estimate_llc(model, batch, settings)     # {"llc": .., "llc_std": .., "init_loss": .., ...}
    table = llc_series(run, steps, settings)       # one row per checkpoint step

The LLC (Lau et al. 2023; Hoogland et al. 2024) measures how degenerate the loss landscape is
around the weights: SGLD samples weights near them at inverse temperature n_beta, pulled back by
`localization`, and LLC = n_beta * (mean sampled loss - loss at the weights). devinterp
(`devinterp.slt.llc`) runs the chains; here are only the data (held-out chats, padded, each row's
loss its mean over its tokens, so padding never counts) and the settings.
Shape legend as in guppy.model.transformer: B batch, T positions.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pandas as pd
import torch

from guppy.record import head_scores as M


@dataclass(frozen=True)
class LLCSettings:
    """devinterp's SGLD settings, calibrated on the induction fish (`benchmarks/bench_timeline.py
    --calibrate`, docs/timeline.md): n_beta 120, about the tokens of a batch over their log
    (devinterp's guidance); at step size 1e-5 the chains' loss still climbs through their last
    quarter (1.62 -> 2.09 nats at step 2,000), at 1e-6 they barely leave the weights; at 3e-6 they
    settle by their second quarter on early and late checkpoints alike. Two chains of 20 draws
    keep the whole series of a 29-snapshot run under 5 minutes on 2 cores."""

    lr: float = 3e-6
    n_beta: float = 120.0
    localization: float = 300.0
    num_chains: int = 2
    num_draws: int = 20
    num_burnin_steps: int = 0
    batch_size: int = 16
    chats: int = 256
    seed: int = 0

    def describe(self) -> str:
        return (f"devinterp SGLD: lr {self.lr:g}, n_beta {self.n_beta:g}, localization {self.localization:g}, "
                f"{self.num_chains} chains x {self.num_draws} draws, batch {self.batch_size}, "
                f"{self.chats} held-out chats")


def _loss_fn(pad_id: int):
    """devinterp's per-token loss (B, T-1), each row holding its mean over its non-pad targets."""

    def loss(model, input_ids: torch.Tensor) -> torch.Tensor:
        # devinterp hands every batch padded to the longest held-out chat; the chats are padded at
        # their end and the model is causal, so the forward runs only to this batch's longest chat
        # (the same losses, at a fraction of the positions: most chats are short)
        longest = max(2, int((input_ids != pad_id).sum(1).max()))
        ids = input_ids[:, :longest]
        per_row = M.mean_loss_per_row(model(ids), ids, ids[:, 1:] != pad_id)  # (B,)
        return per_row[:, None].expand(-1, input_ids.shape[1] - 1)

    return loss


class _Weights(torch.nn.Module):
    """The model without its `cfg`: devinterp takes anything with `cfg.n_heads` for a TransformerLens
    model and calls TransformerLens's `to(device, print_details=False)` on it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)


def estimate_llc(model, batch, settings: LLCSettings = LLCSettings()) -> dict:
    """The LLC at `model`'s weights on a `guppy.analysis.heldout.ChatBatch` -> {llc, llc_std,
    init_loss, final_loss}. The model is copied: its weights are not touched."""
    import copy

    from datasets import Dataset
    from devinterp.slt.llc import llc

    model = _Weights(copy.deepcopy(model).float().train(False))
    data = Dataset.from_dict({"input_ids": batch.tokens.tolist()}).with_format("torch")
    import devinterp.slt.sampler as sampler
    from tqdm import trange

    quiet = functools.partial(trange, disable=True)  # devinterp draws a bar per chain on stderr
    with tempfile.TemporaryDirectory(prefix="guppy-llc-") as tmp, mock.patch.object(sampler, "trange", quiet):
        out = llc(model, data, {}, lr=settings.lr, n_beta=settings.n_beta, localization=settings.localization,
                  num_chains=settings.num_chains, num_draws=settings.num_draws,
                  num_burnin_steps=settings.num_burnin_steps, batch_size=settings.batch_size,
                  num_init_loss_batches=max(1, len(batch.tokens) // settings.batch_size), init_seed=settings.seed,
                  device="cpu", output_path=f"{tmp}/samples.zarr", loss_fn=_loss_fn(batch.pad_id))
        trace = out.loss_trace.values  # (chain, step)
        quarters = [float(q.mean()) for q in np.array_split(trace, 4, axis=1)]  # a chain that settled is flat at the end
        return {"llc": float(out.llc_mean), "llc_std": float(out.llc_std), "init_loss": float(out.init_loss),
                "final_loss": quarters[-1], "trace_quarters": quarters}


def llc_series(run, steps, settings: LLCSettings = LLCSettings(), done: pd.DataFrame | None = None,
               progress=None) -> pd.DataFrame:
    """The LLC at each checkpoint step of `run` in `steps` (rows of `done` measured with the same
    settings are kept, not measured again) -> columns step, llc, llc_std, init_loss, final_loss, settings."""
    from guppy.analysis.heldout import heldout_batch

    batch = heldout_batch(run, settings.chats)
    key = settings.describe()
    kept = {} if done is None or done.empty else {int(r.step): r._asdict() for r in done.itertuples(index=False)
                                                    if r.settings == key}
    rows = []
    for i, step in enumerate(steps):
        if step in kept:
            rows.append(kept[step])
            continue
        est = estimate_llc(run.model(step), batch, settings)
        est.pop("trace_quarters")
        rows.append({"step": int(step), **est, "settings": key})
        if progress:
            progress(i + 1, len(steps))
    return pd.DataFrame(rows, columns=["step", "llc", "llc_std", "init_loss", "final_loss", "settings"])
