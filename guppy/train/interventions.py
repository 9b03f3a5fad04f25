"""Changing the model while it trains: sites knocked out, parameters frozen (guppy-train flags).

    guppy-train --preset induction --ablate L0H3                   # head 3 of layer 0 knocked out all along
    guppy-train --ablate L0H3 --ablate L1.mlp --ablate-steps 1000:  # both, from step 1000 on
    guppy-train --ablate L1H2 --ablate-kind mean --ablate-steps 200:800
    guppy-train --freeze 'blocks.0.*' --freeze embed.weight        # these weights never change

Singh et al. 2024 ("What needs to go right for an induction head?") found the subcircuits of
induction heads by clamping activations while training. These flags do that to guppy's sites:

- **the output**: a head's slice of `blocks.l.attn.hook_z` (before W_O), or an MLP's
  `blocks.l.hook_mlp_out`, is replaced by zero or (`--ablate-kind mean`) by its mean over the
  micro-batch's real positions, held constant (no gradient flows through it). A forward outside
  training (evaluation, generation, a snapshot) uses the last training micro-batch's mean.
- **no gradient**: after each backward the gradient of the site's weights (a head's Q, K, V rows
  and biases and its W_O columns; an MLP's W_in, W_out and biases) is zeroed, and so is AdamW's
  first moment of them, so the optimizer moves them by weight decay alone: p <- p (1 - lr wd).
- **when**: `--ablate-steps A:B` ablates the steps taken while A <= steps done < B (`A:` from step
  A on, `:B` until step B; default all). Evaluations and snapshots between steps see the model as
  the step before them trained it.
- **frozen**: a parameter matched by a `--freeze` glob has requires_grad False before the optimizer
  and DDP see it: it gets no gradient, so AdamW skips it (weight decay too): bit-identical.

All of it is the run's TrainConfig (run.json), so `--resume` keeps it and guppy-sweep varies it
(`--vary ablate=none,L0H3`; several sites in one value joined by +: `L0H3+L1.mlp`).
"""

from __future__ import annotations

import fnmatch

import torch

from guppy.config import TrainConfig
from guppy.run.format import act_name, layer_of, parse_sites, parse_steps, site_name


def frozen_names(names: list[str], globs: str) -> list[str]:
    """The parameter names that `globs` (comma-separated fnmatch patterns) match, in model order;
    ValueError for a glob that matches none."""
    for glob in filter(None, globs.split(",")):
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            raise ValueError(f"freeze: {glob!r} matches no parameter; they are named like {', '.join(names[:3])}, "
                             f"blocks.0.attn.qkv.weight (globs: blocks.0.*, *.mlp.*)")
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in filter(None, globs.split(",")))]


def check_interventions(cfg: TrainConfig, model) -> None:
    """ValueError for an --ablate site the model has not, or a --freeze glob that matches nothing
    (`model` may live on the meta device: only its shape and names are read)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for layer, head in parse_sites(cfg.ablate):
        if layer >= L or (head is not None and head >= H):
            raise ValueError(f"ablate: no site {site_name(layer, head)} in a model of {L} layers x {H} heads")
    frozen_names([n for n, _ in model.named_parameters()], cfg.freeze)


class Interventions:
    """The --ablate and --freeze of one run, on its model. The Trainer calls `at_step` before a
    step's forwards, `after_backward` before the optimizer step, and `close` at the end."""

    def __init__(self, model, cfg: TrainConfig, pad_id: int):
        check_interventions(cfg, model)
        self.model, self.kind, self.pad_id = model, cfg.ablate_kind, pad_id
        self.sites = parse_sites(cfg.ablate)
        self.start, self.stop = parse_steps(cfg.ablate_steps)
        params = dict(model.named_parameters())
        self.frozen = frozen_names(list(params), cfg.freeze)
        for name in self.frozen:
            params[name].requires_grad_(False)
        self.heads: dict[int, list[int]] = {}
        for layer, head in self.sites:
            if head is not None:
                self.heads.setdefault(layer, []).append(head)
        self.mlps = sorted({layer for layer, head in self.sites if head is None})
        device = next(model.parameters()).device
        self.off = {l: torch.isin(torch.arange(model.cfg.n_heads), torch.tensor(h))[:, None].float().to(device)
                    for l, h in self.heads.items()}  # (H, 1) per layer
        self.masks = self._gradient_masks()
        self.means: dict[str, torch.Tensor] = {}  # per hook: the last training micro-batch's mean
        self.real: torch.Tensor | None = None  # (B, T) bool: the current forward's real (non-padding) positions
        self.active = False
        self._attached: list = []

    def _gradient_masks(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(parameter, bool mask of its entries that belong to ablated sites, or None: all of it)."""
        H, E = self.model.cfg.n_heads, self.model.cfg.d_head
        masks = []
        for layer, heads in self.heads.items():
            attn = self.model.blocks[layer].attn
            rows = torch.zeros(3, H, E, dtype=torch.bool, device=attn.qkv.weight.device)
            rows[:, heads] = True  # the heads' rows of W_Q, W_K and W_V
            rows = rows.flatten()  # (3 H E,): qkv's output layout
            cols = rows[2 * H * E:]  # (H E,): z's layout, the columns of W_O
            masks += [(attn.qkv.weight, rows[:, None].expand_as(attn.qkv.weight).contiguous()),  # (3 H E, D)
                      (attn.qkv.bias, rows),
                      (attn.out.weight, cols[None, :].expand_as(attn.out.weight).contiguous())]  # (D, H E)
        for layer in self.mlps:
            masks += [(p, None) for p in self.model.blocks[layer].mlp.parameters()]
        return masks

    # ---- the loop's calls ---------------------------------------------------------------------

    def at_step(self, step: int) -> None:
        """Before the forwards of the step taken after `step` steps: the sites ablated inside the window."""
        active = bool(self.sites) and self.start <= step and (self.stop is None or step < self.stop)
        if active and not self.active:
            points = self.model.hook_dict
            self._attached = [(points[act_name("z", l)].fwd, self._head) for l in self.heads]
            self._attached += [(points[act_name("mlp_out", l)].fwd, self._mlp) for l in self.mlps]
            for fns, fn in self._attached:
                fns.append(fn)
            if self.kind == "mean":
                self._attached.append(self.model.register_forward_pre_hook(self._see_tokens))
        elif self.active and not active:
            self.close()
        self.active = active

    def after_backward(self, optimizer: torch.optim.Optimizer) -> None:
        """While ablating: no gradient for the sites' weights, and no momentum left to move them."""
        if not self.active:
            return
        for p, mask in self.masks:
            if not p.requires_grad:  # frozen as well: frozen wins, it never changes
                continue
            if p.grad is None:  # no forward this step used it: give AdamW a zero to decay it by
                p.grad = torch.zeros_like(p)
            for t in (p.grad, optimizer.state.get(p, {}).get("exp_avg")):
                if t is not None:
                    t.zero_() if mask is None else t.masked_fill_(mask, 0.0)

    def close(self) -> None:
        """Detach every hook this object attached."""
        for item in self._attached:
            if isinstance(item, tuple):
                fns, fn = item
                fns.remove(fn)
            else:  # a torch hook handle
                item.remove()
        self._attached, self.active = [], False

    # ---- the hooks ----------------------------------------------------------------------------

    def _see_tokens(self, module, args) -> None:
        self.real = args[0] != self.pad_id  # (B, T)

    def _mean(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x's mean over the real positions (...,) of a training forward; the last one elsewhere."""
        if (self.model.training and torch.is_grad_enabled()) or name not in self.means:
            real = self.real if self.real is not None and self.real.shape == x.shape[:2] else None
            flat = x.detach()[real] if real is not None else x.detach().flatten(0, 1)  # (N, ...)
            self.means[name] = flat.float().mean(0)
        return self.means[name].to(x.dtype)

    # the replaced values are multiplied in, never assigned: the site's weights stay in the graph with
    # a zero gradient (DDP needs every parameter to take part; AdamW then decays them)

    def _head(self, z: torch.Tensor, hook) -> torch.Tensor:  # z (B, T, H, E)
        off = self.off[layer_of(hook.name)].to(z.dtype)  # (H, 1): 1 for an ablated head
        kept = z * (1 - off)
        return kept if self.kind == "zero" else kept + off * self._mean(z, hook.name)  # mean (H, E)

    def _mlp(self, out: torch.Tensor, hook) -> torch.Tensor:  # (B, T, D)
        return out * 0.0 if self.kind == "zero" else out * 0.0 + self._mean(out, hook.name)
