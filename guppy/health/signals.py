"""Health signals of a training run: per-layer numbers cheap enough to leave on.

On every logged step (and only there) the forward pass is watched through hook points:

    blocks.L.attn_logit_max   largest |q.k / sqrt(d_head)| over the causal entries (what softmax sees)
    blocks.L.resid_rms        root mean square of blocks.L.hook_resid_post

and every step the per-parameter gradient norms, update norms and weight norms land in a
small ring buffer (guppy.health.forensics.StepRing); a logged step's row sums them by layer:

    blocks.L.grad_norm        gradient norm of the block's parameters (unclipped, unscaled)
    blocks.L.update_ratio     |w_after - w_before| / |w_before| over the block's parameters

The attention logit is recomputed from hook_q and hook_k: hooking hook_attn_scores would push
attention off the fused path (on GPUs) on the steps it watches, which changes the numbers the
run is made of; hook_q/hook_k leave the path alone. The extra QK^T runs on logged steps only.
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch

from guppy.run.format import layer_of

Q, K, RESID = "attn.hook_q", "attn.hook_k", "hook_resid_post"


def is_logged(step: int, total_steps: int, log_every: int) -> bool:
    """Whether the trainer writes a metrics row after `step` (the same rule as guppy.train.trainer)."""
    return step % log_every == 0 or step == total_steps


class ForwardSignals:
    """Watches one step's forward passes (every micro-batch of it) through hook points."""

    def __init__(self, model):
        self.model = model
        self.n_layers = model.cfg.n_layers
        self._stack: ExitStack | None = None
        self.last: dict[str, float] = {}  # the values of the step watched last ({} while watching)

    @property
    def watching(self) -> bool:
        return self._stack is not None

    def start(self) -> None:
        L = self.n_layers
        self.logit_max = [torch.zeros(()) for _ in range(L)]
        self.sumsq = [0.0] * L
        self.count = [0] * L
        self._q: dict[int, torch.Tensor] = {}
        self.last = {}
        hooks = [(f"blocks.{l}.{Q}", self._on_q) for l in range(L)]
        hooks += [(f"blocks.{l}.{K}", self._on_k) for l in range(L)]
        hooks += [(f"blocks.{l}.{RESID}", self._on_resid) for l in range(L)]
        self._stack = ExitStack()
        self._stack.enter_context(self.model.hooks(fwd_hooks=hooks))

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack, self._q = None, {}
            self.last = self._values()

    def _on_q(self, x, hook):
        # the watch opens after the previous step, so evaluation and generation (eval mode) can
        # pass before this step's forward does: only training forwards count
        if self.model.training:
            self._q[layer_of(hook.name)] = x.detach()

    @torch.no_grad()
    def _on_k(self, k, hook):
        layer = layer_of(hook.name)
        if layer not in self._q:  # an eval-mode forward
            return
        q = self._q.pop(layer).float()  # (B, T, H, E)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k.detach().float()) / math.sqrt(q.shape[-1])  # (B, H, T, T)
        T = scores.shape[-1]
        future = torch.ones(T, T, dtype=torch.bool, device=scores.device).triu(1)
        scores.masked_fill_(future, 0)  # in place, and max |s| as max(max s, -min s): no copy of the scores
        top = torch.maximum(scores.amax(), -scores.amin())
        self.logit_max[layer] = torch.maximum(self.logit_max[layer].to(top.device), top)

    @torch.no_grad()
    def _on_resid(self, x, hook):
        if not self.model.training:
            return
        layer = layer_of(hook.name)
        self.sumsq[layer] = self.sumsq[layer] + torch.linalg.vector_norm(x.detach(), dtype=torch.float32) ** 2
        self.count[layer] += x.numel()

    def _values(self) -> dict[str, float]:
        out = {}
        for l in range(self.n_layers):
            out[f"blocks.{l}.attn_logit_max"] = float(self.logit_max[l])
            out[f"blocks.{l}.resid_rms"] = math.sqrt(float(self.sumsq[l]) / max(self.count[l], 1))
        return out




def layer_sums(values: torch.Tensor, layers: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Per-parameter norms (P,) -> per-layer norms (L,): the root of the summed squares.
    `layers` (P,) holds each parameter's layer, -1 for those outside the blocks (dropped)."""
    sq = torch.zeros(n_layers + 1, dtype=torch.float64)
    sq.index_add_(0, layers.clamp(min=-1) + 1, values.double().cpu() ** 2)
    return sq[1:].sqrt()


def health_row(step: int, loss: float, grad_norm: float, loss_scale: float | None, forward: dict[str, float],
               grads: torch.Tensor, updates: torch.Tensor, weights: torch.Tensor, layers: torch.Tensor,
               n_layers: int) -> dict:
    """One health.csv row from the forward signals and the step's per-parameter norms (P,)."""
    g, u, w = (layer_sums(v, layers, n_layers) for v in (grads, updates, weights))
    row = {"step": step, "loss": loss, "grad_norm": grad_norm, "loss_scale": "" if loss_scale is None else loss_scale}
    row.update(forward)
    for l in range(n_layers):
        row[f"blocks.{l}.grad_norm"] = float(g[l])
        row[f"blocks.{l}.update_ratio"] = float(u[l] / w[l]) if w[l] > 0 else float("nan")
    return row
