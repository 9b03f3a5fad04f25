"""Recording: snapshots of the model's insides on a fixed probe set, written to HDF5.

The Recorder is a training `Callback`. It observes the model through hook names only.

    runs/<name>/probes.h5                  the probe set, stored once
    runs/<name>/snapshots/step-000064.h5   one file per snapshot, renamed into place when whole
    runs/<name>/checkpoints/step-000064.safetensors   the weights of every snapshot

Metrics are computed in float32 on every probe while the forward runs (hooks reduce each
activation as it passes, so nothing large is cached); full tensors (attention patterns,
residual stream) are kept for a small subset of probes, trimmed to their real length, as
float16. A snapshot file appears only once complete (temp name, fsync, rename), so a reader
never sees half of one and a killed process loses nothing that was finished.
"""

from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from guppy import metrics as M
from guppy.checkpoint import atomic_write, checkpoint_path, save_weights
from guppy.generate import generate
from guppy.probeset import SCHEMA_VERSION, ProbeSet, build_probe_set, resid_alias  # noqa: F401 (re-exported)
from guppy.train import Callback

DEFAULT_HOOKS = "blocks.*.attn.hook_pattern,blocks.*.hook_resid_pre,blocks.*.hook_resid_post"
COMPRESS = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


# ---- the schedule ---------------------------------------------------------------------------


def snapshot_schedule(total_steps: int, every: int = 0, log_spaced: bool = True) -> set[int]:
    """Step 0, every `every` steps (default: total/10) and the last step; with `log_spaced`,
    also powers of two below the first linear step, where structure forms fastest.
    Epoch ends are added by the recorder as they happen."""
    every = every or max(1, total_steps // 10)
    steps = {0, total_steps} | set(range(every, total_steps - every // 2 + 1, every))  # none just before the end
    if log_spaced:
        steps |= {2**i for i in range(int(math.log2(every)) + 1) if 2**i < every}
    return {s for s in steps if 0 <= s <= total_steps}


# ---- the recorder ---------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self, every: int = 0, hooks: str = DEFAULT_HOOKS, full_probes: int = 12, log_spaced: bool = True,
                 n_replies: int = 3, reply_tokens: int = 24):
        self.every, self.hook_globs = every, [h.strip() for h in hooks.split(",") if h.strip()]
        self.full_probes, self.log_spaced = full_probes, log_spaced
        self.n_replies, self.reply_tokens = n_replies, reply_tokens
        self.seconds = 0.0  # time spent recording, for the overhead figure

    # -- callback interface --

    def on_train_start(self, trainer) -> None:
        t0 = time.perf_counter()
        self.run_dir = Path(trainer.run_dir)
        (self.run_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        model = trainer.model
        self.store = self._resolve(model.hook_names)
        probes_file = self.run_dir / "probes.h5"
        if probes_file.exists():  # a resumed run keeps its probe set
            self.probes = ProbeSet.load(probes_file)
        else:
            self.probes = build_probe_set(trainer.data, model.cfg.n_ctx, self.full_probes)
            self.probes.save(probes_file)
        self.schedule = snapshot_schedule(trainer.total_steps, self.every, self.log_spaced)
        self.param_names = [n for n, _ in model.named_parameters()]
        self._grad_sq = torch.zeros(len(self.param_names))
        self._grad_steps = 0
        self._before: list[torch.Tensor] | None = None
        self.seconds += time.perf_counter() - t0
        if trainer.step == 0 and not (self.run_dir / "snapshots" / "step-000000.h5").exists():
            self.snapshot(trainer)

    def _due(self, trainer, step: int) -> bool:
        return step in self.schedule or trainer.batch_index == trainer.batches_per_epoch

    def on_after_backward(self, trainer) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in trainer.model.parameters()]
        self._grad_sq += torch.stack(torch._foreach_norm(grads)).float().cpu() ** 2
        self._grad_steps += 1
        if self._due(trainer, trainer.step + 1):  # keep the weights to measure this step's update
            self._before = [p.detach().clone() for p in trainer.model.parameters()]

    def on_step_end(self, trainer) -> None:
        if self._due(trainer, trainer.step):
            self.snapshot(trainer)

    # -- taking a snapshot --

    def _resolve(self, names: list[str]) -> list[str]:
        """Hook names to store. blocks.l.hook_resid_post is the very tensor blocks.l+1.hook_resid_pre
        holds, so it is stored once, under the latter name (`Run.acts` reads either name)."""
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in self.hook_globs)]
        bad = [g for g in self.hook_globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]
        if bad:
            raise ValueError(f"--record-hooks: {bad[0]!r} matches no hook point (e.g. blocks.*.attn.hook_pattern)")
        return [n for n in chosen if resid_alias(n) not in chosen]

    def snapshot(self, trainer) -> Path:
        t0 = time.perf_counter()
        model, step = trainer.model, trainer.step
        out = self.run_dir / "snapshots" / f"step-{step:06d}.h5"
        was_training = model.training
        model.eval()
        arrays = self.measure(model)
        arrays.update(self.param_stats(model))
        arrays["samples/replies"] = self.sample_replies(model, trainer.data.tokenizer)
        model.train(was_training)
        attrs = {"schema_version": SCHEMA_VERSION, "step": step, "epoch": trainer.epoch_progress,
                 "tokens": trainer.tokens, "time": trainer.elapsed, "wall_time": time.time()}
        atomic_write(out, lambda tmp: write_snapshot(tmp, arrays, attrs))
        weights = checkpoint_path(self.run_dir, step)
        if not weights.exists():
            save_weights(model, weights, step, {"epoch": str(trainer.epoch_progress), "tokens": str(trainer.tokens)})
        self.seconds += time.perf_counter() - t0
        return out

    def measure(self, model) -> dict[str, np.ndarray]:
        """One forward + backward over every probe; hooks reduce activations as they pass."""
        P = self.probes
        cfg = model.cfg
        device = next(model.parameters()).device
        tokens = torch.from_numpy(P.tokens).to(device)
        lengths = torch.from_numpy(P.lengths).to(device)
        period = torch.from_numpy(P.period).to(device)
        sub = torch.from_numpy(P.subset).to(device)
        T_sub = int(P.lengths[P.subset].max())
        real = M.valid_queries(lengths, tokens.shape[1]).float()  # (B, T)
        out: dict[str, np.ndarray] = {}
        head = {m: np.zeros((cfg.n_layers, cfg.n_heads), np.float32) for m in M.HEAD_METRICS}
        head_norm = np.zeros((cfg.n_layers, cfg.n_heads), np.float32)
        mlp_mean = np.zeros(cfg.n_layers, np.float32)
        mlp_active = np.zeros((cfg.n_layers, cfg.d_mlp), np.float32)
        resid_names = [f"blocks.{i}.hook_resid_pre" for i in range(cfg.n_layers)] + [f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
        resid: dict[str, torch.Tensor] = {}
        act_grads: dict[str, float] = {}

        def layer(name):
            return int(name.split(".")[1])

        def on_pattern(x, hook):
            with torch.no_grad():
                for m, v in M.head_metrics(x.detach(), lengths, period).items():
                    head[m][layer(hook.name)] = v.cpu().numpy()

        def on_z(x, hook):  # per-head output norm |z_h W_O[h]| per real position, averaged
            with torch.no_grad():
                # |z W_O|^2 = z (W_O W_O^T) z^T: a (d_head, d_head) Gram matrix per head instead of
                # a (B, T, H, D) result tensor; float64 keeps the difference of squares exact
                W_O = model.blocks[layer(hook.name)].attn.W_O.detach().double()  # (H, E, D)
                gram = W_O @ W_O.transpose(1, 2)  # (H, E, E)
                z = x.detach().double()  # (B, T, H, E)
                sq = torch.einsum("bthe,hef,bthf->bth", z, gram, z)  # (B, T, H)
                res = sq.clamp(min=0).sqrt().float()
                head_norm[layer(hook.name)] = ((res * real[..., None]).sum((0, 1)) / real.sum()).cpu().numpy()

        def on_mlp(x, hook):
            with torch.no_grad():
                a = x.detach().float() * real[..., None]
                mlp_mean[layer(hook.name)] = float(a.sum() / (real.sum() * cfg.d_mlp))
                mlp_active[layer(hook.name)] = ((x.detach() > 0).float() * real[..., None]).sum((0, 1)).cpu().numpy() / float(real.sum())

        def keep(x, hook):
            if hook.name in resid_names:
                resid[hook.name] = x
            if hook.name in self.store:
                out[f"acts/{hook.name}"] = _trim(x.detach()[sub], P.lengths[P.subset], T_sub)

        def grad_norm(g, hook):
            act_grads[hook.name] = float((g.detach().float().norm(dim=-1) * real).sum() / real.sum())

        fwd = [(f"blocks.{i}.attn.hook_pattern", on_pattern) for i in range(cfg.n_layers)]
        fwd += [(f"blocks.{i}.attn.hook_z", on_z) for i in range(cfg.n_layers)]
        fwd += [(f"blocks.{i}.mlp.hook_post", on_mlp) for i in range(cfg.n_layers)]
        fwd += [(n, keep) for n in sorted(set(self.store) | set(resid_names))]
        grad_points = resid_names + [f"blocks.{i}.hook_{k}_out" for i in range(cfg.n_layers) for k in ("attn", "mlp")]
        bwd = [(n, grad_norm) for n in grad_points]

        reply_mask = self._reply_mask(tokens.shape[1]).to(device)  # (B, T-1): targets that are reply tokens

        def leaf(x, hook):  # gradients flow from here: activations only, no weight gradients
            return x.detach().requires_grad_(True)

        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                final = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", leaf)] + fwd, bwd_hooks=bwd,
                                             stop_at_layer=cfg.n_layers)  # (B, T, D), before ln_final
                # every recorded loss is of a reply token: decode those positions only (N, V)
                at = reply_mask.bool()
                targets = tokens[:, 1:][at]
                reply_losses = torch.nn.functional.cross_entropy(
                    model.unembed(model.ln_final(final[:, :-1][at])).float(), targets, reduction="none")  # (N,)
                mean_loss = reply_losses.mean()
                mean_loss.backward()
        finally:
            for p in params:
                p.requires_grad_(True)

        with torch.no_grad():
            losses = torch.zeros(at.shape, device=device)  # (B, T-1); only reply positions are read
            losses[at] = reply_losses.detach()
            out["loss/by_probe"] = _np(_masked_mean(losses, reply_mask, dim=1))
            out["loss/by_position"] = _np(_masked_mean(losses, reply_mask, dim=0))
            topics = sorted({t for t in P.topic if t})
            topic_of = np.array(P.topic)
            out["loss/by_topic"] = np.array([float(_masked_mean(losses[rows], reply_mask[rows], dim=(0, 1)))
                                             for rows in (torch.from_numpy(np.flatnonzero(topic_of == t))
                                                          for t in topics)], np.float32)
            out["loss/topics"] = np.array(topics, dtype=h5py.string_dtype())
            out["loss/mean"] = np.float32(mean_loss.item())
            # logit lens: decode each layer boundary through the final norm and unembedding
            lens_loss, lens_top, norms = [], [], []
            for name in resid_names:
                r = resid[name].detach()
                if name == resid_names[-1]:  # the final residual: its lens is the model's own loss
                    lens_loss.append(float(mean_loss))
                else:
                    decoded = model.unembed(model.ln_final(r[:, :-1][at]))  # (N, V), reply positions only
                    lens_loss.append(float(torch.nn.functional.cross_entropy(decoded.float(), targets)))
                top = model.unembed(model.ln_final(r[sub, :T_sub])).topk(5, dim=-1).indices  # (K, T_sub, 5)
                lens_top.append(top.cpu().numpy().astype(np.int16))
                norms.append(_np(_masked_mean(r.float().norm(dim=-1), real, dim=0)))
        out["resid/norm_by_position"] = np.stack(norms)  # (points, T)
        out["resid/points"] = np.array(resid_names, dtype=h5py.string_dtype())
        out["lens/loss"] = np.array(lens_loss, np.float32)
        out["lens/top_tokens"] = np.stack(lens_top)  # (points, K, T_sub, 5)
        for m, v in head.items():
            out[f"heads/{m}"] = v
        out["heads/out_norm"] = head_norm
        out["mlp/mean"], out["mlp/frac_active"] = mlp_mean, mlp_active.astype(np.float16)
        out["grads/act_names"] = np.array(list(act_grads), dtype=h5py.string_dtype())
        out["grads/act_norm"] = np.array(list(act_grads.values()), np.float32)
        return out

    def _reply_mask(self, T: int) -> torch.Tensor:
        P = self.probes
        pos = torch.arange(1, T)  # position of each target token
        start = torch.from_numpy(P.reply_start)[:, None]
        return ((pos[None, :] >= start) & (pos[None, :] < torch.from_numpy(P.lengths)[:, None])).float()

    def param_stats(self, model) -> dict[str, np.ndarray]:
        params = [p.detach() for p in model.parameters()]
        norms = torch.stack(torch._foreach_norm(params)).float().cpu()
        out = {"params/names": np.array(self.param_names, dtype=h5py.string_dtype()),
               "params/norm": _np(norms)}
        if self._before is not None:
            deltas = torch._foreach_sub(params, self._before)
            out["params/update_ratio"] = _np(torch.stack(torch._foreach_norm(deltas)).float().cpu() / norms.clamp(min=1e-12))
            self._before = None
        else:
            out["params/update_ratio"] = np.full(len(params), np.nan, np.float32)
        steps = max(self._grad_steps, 1)
        out["grads/param_norm"] = _np((self._grad_sq / steps).sqrt()) if self._grad_steps else \
            np.full(len(params), np.nan, np.float32)
        out["grads/steps"] = np.int64(self._grad_steps)
        self._grad_sq.zero_()
        self._grad_steps = 0
        return out

    def sample_replies(self, model, tok) -> np.ndarray:
        P = self.probes
        chosen = [i for i, k in enumerate(P.kind) if k == "chat"][: self.n_replies]
        replies = []
        for i in chosen:
            prompt = P.tokens[i, : P.reply_start[i]].tolist()
            new = generate(model, prompt, max_new_tokens=self.reply_tokens, temperature=0.0, stop_token=tok.end_id)
            replies.append(tok.decode(new))
        return np.array(replies, dtype=h5py.string_dtype())


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def _trim(x: torch.Tensor, lengths: np.ndarray, T: int) -> np.ndarray:
    """Keep the first T positions of every position axis (patterns have two); float16."""
    if x.ndim == 4 and x.shape[-1] == x.shape[-2]:  # (K, H, T, T) pattern
        x = x[:, :, :T, :T]
    else:  # (K, T, ...) activation
        x = x[:, :T]
    return x.float().cpu().numpy().astype(np.float16)


def write_snapshot(path: Path, arrays: dict, attrs: dict) -> None:
    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        for name, value in arrays.items():
            value = np.asarray(value)
            big = value.ndim >= 2 and value.size >= 4096 and value.dtype.kind == "f"
            f.create_dataset(name, data=value, **(COMPRESS | {"chunks": True} if big else {}))
