"""Linear probes: multinomial logistic regressions on activations, many fitted at once.

    W, b, mean, std = train_linear_probe(X, y, n_classes)   # train_linear_probes: P at once
    predicted = probe_predict((W, b, mean, std), X)

    X, names = features(model, batch, "last")               # the residual stream at each layer boundary
    train, test = split_by_prompt(batch.prompts, 0.3, seed=0)
    rows = probe_layers(X, y, train, test, n_classes, 1e-2, seed=0)   # accuracy at each point, and its control

The topic probe (`probes/topic_probe.py`) and the timeline's topic births use the last three.
"""

from __future__ import annotations

import numpy as np
import torch

from guppy.model.precision import torch_threads
from guppy.run.format import resid_points


def train_linear_probes(X: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float = 1e-2,
                        steps: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """P independent multinomial logistic regressions on standardised features, fitted at once
    (full-batch L-BFGS): X (P, N, D), y (P, N) -> (W (P, D, C), b (P, 1, C), mean, std (P, 1, D)).

    The objective is the sum of the P problems' losses; they share no parameter, so each W[p]
    minimises its own loss, and one optimiser run replaces P of them. Run on one thread: the
    matmuls are tiny and a second thread only spins (a 30x slowdown on a busy 2-core machine)."""
    X = X.float()
    mean, std = X.mean(1, keepdim=True), X.std(1, keepdim=True).clamp(min=1e-6)
    Xs = (X - mean) / std
    P, _, D = X.shape
    W = torch.zeros(P, D, n_classes, requires_grad=True)
    b = torch.zeros(P, 1, n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = Xs @ W + b  # (P, N, C)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum()
        loss = loss + weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    with torch_threads(1), torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach(), mean, std


def train_linear_probe(X: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float = 1e-2,
                       steps: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One multinomial logistic regression: X (N, D), y (N,) -> (W (D, C), b (C,), mean, std (D,))."""
    W, b, mean, std = train_linear_probes(X[None], y[None], n_classes, weight_decay, steps)
    return W[0], b[0, 0], mean[0, 0], std[0, 0]


def probe_predict(probe, X: torch.Tensor) -> torch.Tensor:
    """Predicted classes: X (N, D) -> (N,) for one probe, X (P, N, D) -> (P, N) for P probes."""
    W, b, mean, std = probe
    return (((X.float() - mean) / std) @ W + b).argmax(-1)


# ---- the topic probe: features of held-out chats, a split by prompt, probes at every point ----

@torch.no_grad()
def features(model, batch, position: str = "last") -> tuple[torch.Tensor, list[str]]:
    """A `guppy.analysis.heldout.ChatBatch`'s residual stream at every layer boundary -> ((points, B, D),
    point names). Only the prompts run: the model is causal, so the reply's tokens change nothing before it."""
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
