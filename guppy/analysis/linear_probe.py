"""Linear probes: multinomial logistic regressions on activations, many fitted at once.

    W, b, mean, std = train_linear_probe(X, y, n_classes)   # train_linear_probes: P at once
    predicted = probe_predict((W, b, mean, std), X)
"""

from __future__ import annotations

import torch

from guppy.cli import torch_threads


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
