"""Hook points: every activation of the model passes one, by a TransformerLens name.

    logits, cache = model.run_with_cache(tokens, names="blocks.*.attn.hook_pattern")
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))  # TL's keyword
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", fn)])
    with model.hooks(fwd_hooks=[...], bwd_hooks=[...]):   # spans .backward() too
        loss = model(tokens)...; loss.backward()

A hook function is `fn(tensor, hook) -> tensor | None`, called as TransformerLens calls it,
`fn(tensor, hook=hook_point)`, so a hook written for TransformerLens (`def f(x, *, hook)`) works
unchanged; returning a tensor replaces the activation (or, for a backward hook, the gradient). An idle HookPoint is a plain object whose
call is one attribute check, so an unhooked model runs at full speed. Backward hooks attach
to the activation tensor itself (`Tensor.register_hook`), so they fire for the forward they
were attached in, whenever its backward runs.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

from guppy.run.format import act_name

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]
Names = "str | Iterable[str] | Callable[[str], bool] | None"


class HookPoint:
    """An identity on the forward path that hook functions can read or replace."""

    __slots__ = ("name", "fwd", "bwd")

    def __init__(self) -> None:
        self.name = ""  # set by the model once the module tree is built
        self.fwd: list[HookFn] = []
        self.bwd: list[HookFn] = []

    @property
    def active(self) -> bool:
        return bool(self.fwd or self.bwd)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fwd or self.bwd):
            return x
        for fn in self.fwd:
            out = fn(x, hook=self)
            if out is not None:
                x = out
        if self.bwd and x.requires_grad:
            for fn in self.bwd:
                x.register_hook(partial(_backward, fn, self))
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, fwd={len(self.fwd)}, bwd={len(self.bwd)})"


def _backward(fn: HookFn, hook: HookPoint, grad: torch.Tensor):
    return fn(grad, hook=hook)


def name_hook_points(root: torch.nn.Module) -> dict[str, HookPoint]:
    """Find every HookPoint attribute in the module tree and name it by its path."""
    points = {}
    for path, module in root.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, HookPoint):
                value.name = f"{path}.{attr}" if path else attr
                points[value.name] = value
    return points


def select(all_names: list[str], names: Names) -> list[str]:
    """Resolve a name, glob, list of names/globs or predicate to hook names, in model order.
    An exact name or glob that matches nothing is an error listing close valid names."""
    if names is None:
        return list(all_names)
    if callable(names):
        return [n for n in all_names if names(n)]
    patterns = [names] if isinstance(names, str) else list(names)
    known = set(all_names)
    chosen = set()
    for pat in patterns:
        if pat in known:
            chosen.add(pat)
            continue
        hits = [n for n in all_names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            close = difflib.get_close_matches(pat, all_names, n=5, cutoff=0.5)
            hint = f"; close: {', '.join(close)}" if close else f"; e.g. {', '.join(all_names[:3])}"
            raise KeyError(f"no hook point matches {pat!r}{hint}")
        chosen.update(hits)
    return [n for n in all_names if n in chosen]


class ActivationCache(Mapping):
    """Activations by hook name, with the usual views across layers and heads."""

    def __init__(self, acts: dict[str, torch.Tensor], model=None):
        self._acts = acts
        self.model = model

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._acts:
            close = difflib.get_close_matches(name, list(self._acts), n=5, cutoff=0.5)
            raise KeyError(f"{name!r} is not in the cache; cached close names: {', '.join(close) or 'none'}")
        return self._acts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hook points)"

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ActivationCache":
        """A copy moved to `device` and/or cast (floating tensors only) to `dtype`."""
        def move(t):
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)
        return ActivationCache({k: move(v) for k, v in self._acts.items()}, self.model)

    def cpu(self) -> "ActivationCache":
        return self.to("cpu")

    def half(self) -> "ActivationCache":
        return self.to(dtype=torch.float16)

    def _layers(self) -> int:
        return self.model.cfg.n_layers

    def stack(self, suffix: str, layers: Iterable[int] | None = None) -> torch.Tensor:
        """Stack `blocks.{l}.{suffix}` over layers -> (L, ...), e.g. stack('attn.hook_pattern')."""
        layers = range(self._layers()) if layers is None else layers
        return torch.stack([self[f"blocks.{l}.{suffix}"] for l in layers])

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          return_labels: bool = False):
        """The residual stream at each layer boundary -> (points, B, T, D), as TransformerLens:
        resid_pre of layers 0..layer (all, plus the final resid_post, when `layer` is None, -1
        or n_layers), with resid_mid of each earlier layer if `incl_mid`. `apply_ln` runs
        ln_final on every point with its own statistics, as the logit lens does."""
        n = self._layers()
        layer = n if layer is None or layer == -1 else layer
        if not 0 <= layer <= n:
            raise ValueError(f"accumulated_resid: layer {layer} is not in 0..{n}")
        names = []
        for l in range(min(layer + 1, n)):
            names.append(act_name("resid_pre", l))
            if incl_mid and l < layer:
                names.append(act_name("resid_mid", l))
        if layer == n:
            names.append(act_name("resid_post", n - 1))
        resid = torch.stack([self[name] for name in names])
        if apply_ln:
            ln = self.model.ln_final  # its weights only: hooks on ln_final must not fire here
            w, b = (t.detach().to(resid.device, resid.dtype) for t in (ln.w, ln.b))
            resid = F.layer_norm(resid, resid.shape[-1:], w, b, ln.eps)
        return (resid, names) if return_labels else resid

    def head_results(self, layer: int) -> torch.Tensor:
        """Each head's contribution to blocks.{layer}.hook_attn_out -> (B, T, H, D).
        Their sum over heads plus b_O is the attention output. Needs hook_z cached."""
        z = self[act_name("z", layer)]  # (B, T, H, d_head)
        W_O = self.model.blocks[layer].attn.W_O.detach().to(z.device, z.dtype)  # (H, d_head, D)
        return torch.einsum("bthe,hed->bthd", z, W_O)

    def stack_head_results(self, layers: Iterable[int] | None = None) -> tuple[torch.Tensor, list[str]]:
        """Every head's output over layers -> ((L*H, B, T, D), labels like 'L0H3')."""
        layers = list(range(self._layers()) if layers is None else layers)
        parts, labels = [], []
        for l in layers:
            r = self.head_results(l)  # (B, T, H, D)
            parts.append(r.permute(2, 0, 1, 3))
            labels += [f"L{l}H{h}" for h in range(r.shape[2])]
        return torch.cat(parts), labels


class HookedMixin:
    """run_with_cache / run_with_hooks / hooks() for a module whose HookPoints are named."""

    hook_dict: dict[str, HookPoint]

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def hook_points(self) -> dict[str, HookPoint]:
        return dict(self.hook_dict)

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple] = (), bwd_hooks: Iterable[tuple] = ()):
        """Attach hooks for the duration of the block; removes exactly what it added, even on error.
        Each entry is (name | glob | predicate, fn)."""
        added: list[tuple[list, HookFn]] = []
        try:
            for kind, entries in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for names, fn in entries:
                    for name in select(self.hook_names, names):
                        lst = getattr(self.hook_dict[name], kind)
                        lst.append(fn)
                        added.append((lst, fn))
            yield self
        finally:
            for lst, fn in reversed(added):
                lst.remove(fn)

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks=(), bwd_hooks=(), **forward_kwargs) -> torch.Tensor:
        """Forward with hooks attached; backward hooks stay on this forward's graph."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(tokens, **forward_kwargs)

    def run_with_cache(self, tokens: torch.Tensor, names: Names = None, device=None, dtype=None,
                       fwd_hooks=(), names_filter: Names = None, **forward_kwargs) -> tuple[torch.Tensor, ActivationCache]:
        """Forward that stores the selected activations (by reference, detached). Cache hooks
        run after any `fwd_hooks`, so the cache sees patched values. `names_filter` is
        TransformerLens's name for `names` (a name, a list, a glob or a predicate), so TL call sites
        work unchanged."""
        if names is not None and names_filter is not None:
            raise TypeError("run_with_cache: give names or names_filter (the same thing), not both")
        names = names if names_filter is None else names_filter
        store: dict[str, torch.Tensor] = {}

        def save(x, hook):
            store[hook.name] = x.detach() if device is None and dtype is None else \
                x.detach().to(device=device, dtype=dtype if x.is_floating_point() else None)

        chosen = select(self.hook_names, names)
        with self.hooks(list(fwd_hooks) + ([(chosen, save)] if chosen else [])):
            logits = self(tokens, **forward_kwargs)
        return logits, ActivationCache({n: store[n] for n in chosen if n in store}, self)
