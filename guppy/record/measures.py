"""What a snapshot measures: one small class per measure, each naming the hook points it reads
and the snapshot keys it writes (guppy.run.format). The recorder runs them all in one forward and
backward pass over the watch set (`Recorder.measure`); a new measure is one class here, added
to `MEASURES`.

    class MaxResid(Measure):
        keys = ("resid/max",)                            # declared in guppy.run.format
        def hooks(self, p):                              # forward hooks while the pass runs
            self.top = {}
            return [(n, lambda x, hook: self.top.__setitem__(hook.name, float(x.detach().abs().max())))
                    for n in resid_points(p.cfg.n_layers)]
        def write(self, p, out):                         # after the backward: numpy into `out`
            out["resid/max"] = np.array(list(self.top.values()), np.float32)

Metrics are computed in float32 on every input of the watch set while the forward runs (hooks
reduce each activation as it passes, so nothing large is cached); full tensors are kept for the
watch set's stored subset, trimmed to its real length, as float16.
Shapes: B inputs, T positions, L layers, H heads, E d_head, D d_model, N reply targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from guppy.model.generate import generate
from guppy.record import head_scores as M
from guppy.run import format as R
from guppy.run.watch_set import WatchSet


@dataclass
class Pass:
    """One recording pass over the watch set: its inputs as tensors, and what the forward left."""

    model: torch.nn.Module
    watch: WatchSet
    tokenizer: object  # guppy.data.tokenizer.ChatTokenizer: decodes the sampled replies
    store: list[str]  # hook points whose full tensors are kept for the stored subset
    tokens: torch.Tensor = field(init=False)  # (B, T)
    lengths: torch.Tensor = field(init=False)  # (B,)
    period: torch.Tensor = field(init=False)  # (B,)
    real: torch.Tensor = field(init=False)  # (B, T) float: real (not padding) positions
    reply: torch.Tensor = field(init=False)  # (B, T-1) bool: targets that are reply tokens
    subset: torch.Tensor = field(init=False)  # (K,) rows whose full tensors are stored
    T_sub: int = field(init=False)  # longest stored input
    # set by the forward
    reply_losses: torch.Tensor | None = None  # (N,) loss of every reply target
    mean_loss: torch.Tensor | None = None

    def __post_init__(self):
        W, device = self.watch, next(self.model.parameters()).device
        self.tokens = torch.from_numpy(W.tokens).to(device)
        self.lengths = torch.from_numpy(W.lengths).to(device)
        self.period = torch.from_numpy(W.period).to(device)
        self.subset = torch.from_numpy(W.subset).to(device)
        self.T_sub = int(W.lengths[W.subset].max())
        self.real = M.valid_queries(self.lengths, self.tokens.shape[1]).float()
        self.reply = M.reply_mask(torch.from_numpy(W.reply_start).to(device), self.lengths, self.tokens.shape[1])

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:][self.reply]  # (N,)


class Measure:
    """One thing a snapshot records. `keys`: what it writes; `hooks`: (hook name, fn) forward
    hooks for the pass; `grad_hooks`: backward hooks (the pass backpropagates its mean reply
    loss into the activations, never into the weights); `write`: numpy arrays into `out`."""

    keys: tuple[str, ...] = ()

    def hooks(self, p: Pass) -> list[tuple[str, object]]:
        return []

    def grad_hooks(self, p: Pass) -> list[tuple[str, object]]:
        return []

    def write(self, p: Pass, out: dict) -> None:
        pass


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim) -> torch.Tensor:
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=h5py.string_dtype())


def _per_layer(kind: str, p: Pass) -> list[str]:
    return [R.act_name(kind, l) for l in range(p.cfg.n_layers)]


# ---- in the forward pass --------------------------------------------------------------------


class HeadAttention(Measure):
    """Entropy, previous-token, induction, first- and duplicate-token scores of every head."""

    keys = tuple(R.head_key(m) for m in R.ATTENTION_METRICS)

    def hooks(self, p):
        self.values = {m: np.zeros((p.cfg.n_layers, p.cfg.n_heads), np.float32) for m in R.ATTENTION_METRICS}

        def on_pattern(x, hook):  # (B, H, T, T)
            with torch.no_grad():
                for m, v in M.head_metrics(x.detach(), p.lengths, p.period).items():
                    self.values[m][R.layer_of(hook.name)] = v.cpu().numpy()
        return [(n, on_pattern) for n in _per_layer("pattern", p)]

    def write(self, p, out):
        out.update({R.head_key(m): v for m, v in self.values.items()})


class HeadOutNorm(Measure):
    """Each head's output norm |z_h W_O[h]| per real position, averaged."""

    keys = (R.head_key("out_norm"),)

    def hooks(self, p):
        self.norm = np.zeros((p.cfg.n_layers, p.cfg.n_heads), np.float32)

        def on_z(x, hook):  # (B, T, H, E)
            with torch.no_grad():
                # |z W_O|^2 = z (W_O W_O^T) z^T: a (d_head, d_head) Gram matrix per head instead of
                # a (B, T, H, D) result tensor; float64 keeps the difference of squares exact
                layer = R.layer_of(hook.name)
                W_O = p.model.blocks[layer].attn.W_O.detach().double()  # (H, E, D)
                gram = W_O @ W_O.transpose(1, 2)  # (H, E, E)
                z = x.detach().double()
                sq = torch.einsum("bthe,hef,bthf->bth", z, gram, z)  # (B, T, H)
                res = sq.clamp(min=0).sqrt().float()
                self.norm[layer] = ((res * p.real[..., None]).sum((0, 1)) / p.real.sum()).cpu().numpy()
        return [(n, on_z) for n in _per_layer("z", p)]

    def write(self, p, out):
        out[R.head_key("out_norm")] = self.norm


class MlpStats(Measure):
    """Mean MLP activation per layer, and how often each neuron fires."""

    keys = (R.MLP_MEAN, R.MLP_FRAC_ACTIVE)

    def hooks(self, p):
        self.mean = np.zeros(p.cfg.n_layers, np.float32)
        self.active = np.zeros((p.cfg.n_layers, p.cfg.d_mlp), np.float32)

        def on_post(x, hook):  # (B, T, d_mlp)
            with torch.no_grad():
                layer, real = R.layer_of(hook.name), p.real
                self.mean[layer] = float((x.detach().float() * real[..., None]).sum() / (real.sum() * p.cfg.d_mlp))
                self.active[layer] = ((x.detach() > 0).float() * real[..., None]).sum((0, 1)).cpu().numpy() / float(real.sum())
        return [(n, on_post) for n in _per_layer("post", p)]

    def write(self, p, out):
        out[R.MLP_MEAN], out[R.MLP_FRAC_ACTIVE] = self.mean, self.active.astype(np.float16)


def _trim(x: torch.Tensor, T: int) -> np.ndarray:
    """Keep the first T positions of every position axis (patterns have two); float16."""
    if x.ndim == 4 and x.shape[-1] == x.shape[-2]:  # (K, H, T, T) pattern
        x = x[:, :, :T, :T]
    else:  # (K, T, ...) activation
        x = x[:, :T]
    return x.float().cpu().numpy().astype(np.float16)


class StoredActs(Measure):
    """Full tensors (float16) of the chosen hook points, for the watch set's stored subset."""

    keys = (R.ACTS,)

    def hooks(self, p):
        self.acts = {}

        def keep(x, hook):
            self.acts[R.acts_key(hook.name)] = _trim(x.detach()[p.subset], p.T_sub)
        return [(n, keep) for n in p.store]

    def write(self, p, out):
        out.update(self.acts)


class _Resid(Measure):
    """Keeps a reference to the residual stream at every layer boundary."""

    def hooks(self, p):
        self.resid = {}

        def keep(x, hook):
            self.resid[hook.name] = x.detach()
        return [(n, keep) for n in R.resid_points(p.cfg.n_layers)]


class ResidNorms(_Resid):
    """The residual stream's norm at every layer boundary and position."""

    keys = (R.RESID_NORM, R.RESID_POINTS)

    def write(self, p, out):
        with torch.no_grad():
            norms = [_np(_masked_mean(r.float().norm(dim=-1), p.real, dim=0)) for r in self.resid.values()]
        out[R.RESID_NORM] = np.stack(norms)  # (points, T)
        out[R.RESID_POINTS] = _strings(self.resid)


class LogitLens(_Resid):
    """Each layer boundary decoded as if it were the last: reply loss and top-5 tokens."""

    keys = (R.LENS_LOSS, R.LENS_TOP)

    def write(self, p, out):
        losses, tops = [], []
        last = R.resid_points(p.cfg.n_layers)[-1]
        with torch.no_grad():
            for name, r in self.resid.items():
                if name == last:  # the final residual: its lens is the model's own loss
                    losses.append(float(p.mean_loss))
                else:
                    decoded = M.logit_lens(p.model, r[:, :-1][p.reply])  # (N, V): reply targets only
                    losses.append(float(F.cross_entropy(decoded.float(), p.targets)))
                top = M.logit_lens(p.model, r[p.subset, :p.T_sub]).topk(5, dim=-1).indices  # (K, T_sub, 5)
                tops.append(top.cpu().numpy().astype(np.int16))
        out[R.LENS_LOSS] = np.array(losses, np.float32)
        out[R.LENS_TOP] = np.stack(tops)  # (points, K, T_sub, 5)


class ReplyLosses(Measure):
    """Loss of the reply tokens: mean, by input, by position, by topic."""

    keys = (R.LOSS_MEAN, R.LOSS_BY_INPUT, R.LOSS_BY_POSITION, R.LOSS_BY_TOPIC, R.LOSS_TOPICS)

    def write(self, p, out):
        with torch.no_grad():
            losses = torch.zeros(p.reply.shape, device=p.tokens.device)  # (B, T-1); only reply targets are read
            losses[p.reply] = p.reply_losses.detach()
            mask = p.reply.float()
            topics = sorted({t for t in p.watch.topic if t})
            topic_of = np.array(p.watch.topic)
            out[R.LOSS_BY_INPUT] = _np(_masked_mean(losses, mask, dim=1))
            out[R.LOSS_BY_POSITION] = _np(_masked_mean(losses, mask, dim=0))
            out[R.LOSS_BY_TOPIC] = np.array([float(_masked_mean(losses[rows], mask[rows], dim=(0, 1)))
                                             for rows in (torch.from_numpy(np.flatnonzero(topic_of == t))
                                                          for t in topics)], np.float32)
            out[R.LOSS_TOPICS] = _strings(topics)
            out[R.LOSS_MEAN] = np.float32(p.mean_loss.item())


class ActGradNorms(Measure):
    """How strongly the reply loss pulls on the residual stream and each block's outputs."""

    keys = (R.ACT_GRAD_NAMES, R.ACT_GRAD_NORM)

    def grad_hooks(self, p):
        self.norms = {}

        def grad_norm(g, hook):  # (B, T, D)
            self.norms[hook.name] = float((g.detach().float().norm(dim=-1) * p.real).sum() / p.real.sum())
        points = R.resid_points(p.cfg.n_layers) + [R.act_name(k, l) for l in range(p.cfg.n_layers)
                                                   for k in ("attn_out", "mlp_out")]
        return [(n, grad_norm) for n in points]

    def write(self, p, out):
        out[R.ACT_GRAD_NAMES] = _strings(self.norms)
        out[R.ACT_GRAD_NORM] = np.array(list(self.norms.values()), np.float32)


# ---- outside the pass -----------------------------------------------------------------------


class Replies(Measure):
    """The model's greedy replies to the first few chats of the watch set."""

    keys = (R.REPLIES,)

    def __init__(self, n: int = 3, max_tokens: int = 24):
        self.n, self.max_tokens = n, max_tokens

    def write(self, p, out):
        W, tok = p.watch, p.tokenizer
        chosen = [i for i, k in enumerate(W.kind) if k == "chat"][: self.n]
        replies = []
        for i in chosen:
            prompt = W.tokens[i, : W.reply_start[i]].tolist()
            new = generate(p.model, prompt, max_new_tokens=self.max_tokens, temperature=0.0, stop_token=tok.end_id)
            replies.append(tok.decode(new))
        out[R.REPLIES] = _strings(replies)


class ParamStats(Measure):
    """Weight norms, update-to-weight ratios of the last step, and the RMS gradient norm of
    every parameter over the training steps since the previous snapshot. Training history:
    fed by the recorder after each backward; a snapshot taken after the fact (no training
    seen) writes NaN for what it cannot know, never a made-up value."""

    keys = (R.PARAM_NAMES, R.PARAM_NORM, R.PARAM_UPDATE_RATIO, R.PARAM_GRAD_NORM, R.GRAD_STEPS, R.ABSENT)

    def __init__(self):
        self.grad_sq: torch.Tensor | None = None
        self.steps = 0
        self.before: list[torch.Tensor] | None = None

    def after_backward(self, model, keep_weights: bool) -> None:
        """Add this step's gradient norms; with `keep_weights`, hold the weights to measure the update."""
        grads = [q.grad if q.grad is not None else torch.zeros((), device=q.device) for q in model.parameters()]
        sq = torch.stack(torch._foreach_norm(grads)).float().cpu() ** 2
        self.grad_sq = sq if self.grad_sq is None else self.grad_sq + sq
        self.steps += 1
        if keep_weights:
            self.before = [q.detach().clone() for q in model.parameters()]

    def write(self, p, out):
        names = [n for n, _ in p.model.named_parameters()]
        params = [q.detach() for q in p.model.parameters()]
        norms = torch.stack(torch._foreach_norm(params)).float().cpu()
        nan = np.full(len(params), np.nan, np.float32)
        out[R.PARAM_NAMES], out[R.PARAM_NORM] = _strings(names), _np(norms)
        absent = []
        if self.before is not None:
            deltas = torch._foreach_sub(params, self.before)
            out[R.PARAM_UPDATE_RATIO] = _np(torch.stack(torch._foreach_norm(deltas)).float().cpu() / norms.clamp(min=1e-12))
        else:
            out[R.PARAM_UPDATE_RATIO] = nan
            absent.append(R.PARAM_UPDATE_RATIO)
        if self.steps:
            out[R.PARAM_GRAD_NORM] = _np((self.grad_sq / self.steps).sqrt())
        else:
            out[R.PARAM_GRAD_NORM] = nan
            absent.append(R.PARAM_GRAD_NORM)
        out[R.GRAD_STEPS] = np.int64(self.steps)
        out[R.ABSENT] = _strings(absent)
        self.grad_sq, self.steps, self.before = None, 0, None


def default_measures(n_replies: int = 3, reply_tokens: int = 24) -> list[Measure]:
    """Every measure of a snapshot, in the order they write."""
    return [HeadAttention(), HeadOutNorm(), MlpStats(), StoredActs(), ReplyLosses(), ResidNorms(), LogitLens(),
            ActGradNorms(), ParamStats(), Replies(n_replies, reply_tokens)]


MEASURES = tuple(type(m) for m in default_measures())
