"""Divergence forensics: what the last steps looked like, and which tensor broke first.

Three pieces the Watchdog (guppy.health.watchdog) uses during training:

    StepRing        per-parameter gradient norms, update norms and weight norms of the last
                    steps, kept in memory (on the parameters' device) and written on a break
    SpikeDetector   a loss above k x the median of the recent steps
    replay()        a float32 forward and backward of the broken batch with every hook point
                    reporting max |x|, RMS and the share of non-finite values, in the order
                    the pass reached them (gradients too, in the order the backward did)

`first_bad()` names the first hook point, in forward order, whose output went non-finite;
failing that the first whose gradient did (in backward order: where the backward broke);
failing both the one whose max |x| grew fastest against an earlier model on the same batch.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import torch
import torch.nn.functional as F

from guppy.cli import torch_threads
from guppy.run.format import layer_of

SCORES = "hook_attn_scores"  # its future entries are -inf by design: left out of its numbers


class Diverged(RuntimeError):
    """The loss or a gradient became non-finite; training stops after writing forensics."""


# ---- the last steps ---------------------------------------------------------------------------


class StepRing:
    """Per-parameter norms of the last `size` steps: rows (size, P) on the parameters' device,
    so recording a step costs a few fused passes over the weights and no host sync."""

    def __init__(self, named_params: list[tuple[str, torch.Tensor]], size: int = 16):
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        device = self.params[0].device
        self.layers = torch.tensor([-1 if layer_of(n) is None else layer_of(n) for n in self.names])
        self.grad, self.update, self.weight = (torch.full((size, len(self.params)), float("nan"), device=device)
                                               for _ in range(3))
        self.steps = [-1] * size
        self.size, self.n = size, 0
        self._before = [p.detach().clone() for p in self.params]  # reused every step: no allocation

    @property
    def row(self) -> int:
        return self.n % self.size

    def record_grads(self, step: int) -> torch.Tensor:
        """After backward, before the update: this step's gradient norms (P,); keeps the weights."""
        grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in self.params]
        with torch_threads(1):  # foreach norms over ~30 tensors: one thread beats a descheduled second
            norms = torch.stack(torch._foreach_norm(grads)).float()
        i = self.row
        self.steps[i] = step
        self.grad[i], self.update[i], self.weight[i] = norms, float("nan"), float("nan")
        # the copy (and the sub below) stream every weight and do scale with threads, the norms do not
        # (benchmarks/bench_train.py prints the Watchdog's share of a step)
        torch._foreach_copy_(self._before, [p.detach() for p in self.params])
        return norms

    def record_update(self) -> None:
        """After the optimizer step: |w_after - w_before| and |w_before| per parameter."""
        i = self.row
        with torch_threads(1):
            self.weight[i] = torch.stack(torch._foreach_norm(self._before)).float()
        torch._foreach_sub_(self._before, [p.detach() for p in self.params])  # before - after, in place
        with torch_threads(1):
            self.update[i] = torch.stack(torch._foreach_norm(self._before)).float()
        self.n += 1

    def latest(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(grad, update, weight) norms (P,) of the last completed step."""
        i = (self.n - 1) % self.size
        return self.grad[i].cpu(), self.update[i].cpu(), self.weight[i].cpu()

    def table(self) -> list[dict]:
        """Long rows, oldest step first: step, param, grad_norm, update_ratio (NaN if not stepped)."""
        grad, update, weight = self.grad.cpu(), self.update.cpu(), self.weight.cpu()
        rows = []
        for i in sorted((i for i in range(self.size) if self.steps[i] >= 0), key=lambda i: self.steps[i]):
            # a weight that starts at zero (biases) has no ratio on its first step: NaN, not 1e12
            ratio = torch.where(weight[i] > 0, update[i] / weight[i].clamp(min=1e-30), float("nan"))
            rows += [{"step": self.steps[i], "param": n, "grad_norm": float(grad[i, j]), "update_ratio": float(ratio[j])}
                     for j, n in enumerate(self.names)]
        return rows


class SpikeDetector:
    """A step's loss above `factor` x the median of the last `window` steps (off with factor 0).
    Judged once `min_history` steps are seen, so the first steps' steep fall is no spike."""

    def __init__(self, factor: float, window: int = 50, min_history: int = 10):
        self.factor, self.min_history = factor, min_history
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, loss: float) -> float | None:
        """The recent median when `loss` is a spike, else None; the loss joins the history."""
        spike = None
        if self.factor > 0 and len(self.recent) >= self.min_history:
            median = statistics.median(self.recent)
            if loss > self.factor * median:
                spike = median
        self.recent.append(loss)
        return spike


# ---- the replay of the broken batch ----------------------------------------------------------


def _stats(x: torch.Tensor, causal: bool) -> tuple[float, float, float]:
    """(largest finite |x|, RMS of the finite values, share non-finite) in float32."""
    x = x.detach().float()
    if causal:  # attention scores (B, H, Tq, Tk): the entries softmax sees, not the masked future
        Tq, Tk = x.shape[-2:]
        x = x[..., ~torch.ones(Tq, Tk, dtype=torch.bool, device=x.device).triu(Tk - Tq + 1)]
    finite = torch.isfinite(x)
    n, good = x.numel(), int(finite.sum())
    vals = x[finite]
    if not good:
        return float("nan"), float("nan"), 1.0
    return float(vals.abs().max()), float(vals.pow(2).mean().sqrt()), 1 - good / max(n, 1)


def replay(model, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, backward: bool = True):
    """Forward (and backward) of one batch in float32, eval mode, every hook point watched.

    Returns (hook rows in forward order, {hook: gradient numbers} in backward order, loss,
    per-parameter gradient norms {name: norm}). The model's gradients are cleared after."""
    forward: dict[str, dict] = {}
    grads: dict[str, dict] = {}

    def on_fwd(x, hook):
        m, r, bad = _stats(x, hook.name.endswith(SCORES))
        forward[hook.name] = {"hook": hook.name, "max_abs": m, "rms": r, "nonfinite": bad}

    def on_bwd(g, hook):
        m, r, bad = _stats(g, hook.name.endswith(SCORES))
        grads[hook.name] = {"grad_max_abs": m, "grad_rms": r, "grad_nonfinite": bad}

    was_training = model.training
    model.eval()  # no dropout: the replay is the batch's numbers, not a new draw
    model.zero_grad(set_to_none=True)
    try:
        with torch.autocast(inputs.device.type, enabled=False), torch.set_grad_enabled(backward), \
                model.hooks(fwd_hooks=[(lambda n: True, on_fwd)], bwd_hooks=[(lambda n: True, on_bwd)] if backward else ()):
            logits = model(inputs)  # (B, T, V): the whole model, hook_logits included
            loss = F.cross_entropy(logits[mask].float(), targets[mask])
            if backward:
                loss.backward()
        param_grads = {n: float(p.grad.float().norm()) if p.grad is not None else float("nan")
                       for n, p in model.named_parameters()} if backward else {}
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return list(forward.values()), grads, float(loss.detach()), param_grads


def hook_table(rows: list[dict], grads: dict[str, dict],
               baseline: dict[str, float] | None) -> list[dict]:
    """Join forward rows, gradients and the baseline's max |x| into one row per hook point."""
    out = []
    for i, r in enumerate(rows):
        base = (baseline or {}).get(r["hook"], float("nan"))
        growth = r["max_abs"] / base if base and math.isfinite(base) and base > 0 else float("nan")
        g = grads.get(r["hook"], {"grad_max_abs": float("nan"), "grad_rms": float("nan"), "grad_nonfinite": float("nan")})
        out.append({"order": i, **r, "baseline_max_abs": base, "growth": growth, **g, "first_bad": False})
    return out


def first_bad(table: list[dict], grad_order: list[str]) -> tuple[str | None, str]:
    """(hook name, why): the first non-finite output in forward order, else the first non-finite
    gradient in backward order, else the fastest-growing max |x| (None if nothing to go by)."""
    for r in table:
        if r["nonfinite"] > 0:
            return r["hook"], "non-finite"
    by_name = {r["hook"]: r for r in table}
    for name in grad_order:
        if by_name.get(name, {}).get("grad_nonfinite", 0) > 0:
            return name, "non-finite gradient"
    grown = [r for r in table if math.isfinite(r["growth"])]
    if grown:
        return max(grown, key=lambda r: r["growth"])["hook"], "fastest growth"
    return None, "nothing measurable"
