"""docs/experiments.md, "The article's experiments": each one `guppy-sweep` line, and the figure and
numbers its runs give.

    python experiments/article.py list                    # every experiment's guppy-sweep line, as in docs/experiments.md
    python experiments/article.py run heads               # run one (that line; again = resume)
    python experiments/article.py figure heads            # docs/experiments/heads.png from runs/exp-heads
    python experiments/article.py summary heads           # the numbers docs/experiments.md states, one line per setting

Every figure is two panels: the training loss of each run against tokens seen (seeds of a
setting share its colour), and one thing inside the model that
the change acts on, read from the runs' health.csv or snapshots through `guppy.compare_runs`.
Needs matplotlib (the `figures` extra).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import guppy  # noqa: E402
from guppy.run.compare import EVAL_LOSS, PERSONA_PASS  # noqa: E402
from guppy.run.format import SEED_KEY, axis_keys  # noqa: E402
from guppy.run.writer import atomic_write  # noqa: E402

BASE = ("--preset", "demo", "--steps", "600", "--eval-prompts", "1")  # ~2/3 of an epoch of the demo fish


@dataclass(frozen=True)
class Experiment:
    name: str  # runs/exp-<name>, docs/experiments/<name>.png
    question: str  # what the article asks
    vary: tuple[str, ...]
    inside: str  # the right panel: a key of INSIDE
    base: tuple[str, ...] = BASE
    seeds: str = ""

    @property
    def sweep(self) -> str:
        return f"exp-{self.name}"

    def argv(self, runs_dir: str = "runs", base: tuple[str, ...] | None = None) -> list[str]:
        vary = [a for v in self.vary for a in ("--vary", v)]
        seeds = ["--seeds", self.seeds] if self.seeds else []
        runs = ["--runs-dir", runs_dir] if runs_dir != "runs" else []
        return ["guppy-sweep", "--name", self.sweep, *vary, *seeds, *runs, "--", *(self.base if base is None else base)]

    def line(self) -> str:
        return shlex.join(self.argv())


EXPERIMENTS = {e.name: e for e in (
    Experiment("lr", "drop the learning rate by a factor of ten", ("lr/min_lr=3e-3/3e-4,3e-4/3e-5",), "update_ratio",
               seeds="0,1"),  # the whole schedule /10: min_lr's default (3e-4) would make 3e-4 a constant rate
    Experiment("heads", "change the number of heads", ("n_heads=1,4",), "entropy"),
    Experiment("size", "depth and width against loss", ("n_layers=1,2,4", "d_model=128,256"), "params"),
    Experiment("batch", "batch size and gradient accumulation", ("batch_size/grad_accum=64/1,16/4,16/1",), "grad_norm",
               seeds="0,1"),
    Experiment("init", "sensitivity to the initialisation scale", ("init_std=0.002,0.02,0.2",), "resid_rms"),
    # sinusoidal twice: with the 2017 paper's sqrt(d_model) embedding scale (embed_scale 0: guppy-train's
    # default for it) and without it (1: what this experiment ran before the scale existed)
    Experiment("positional", "an alternative positional encoding",
               ("positional/embed_scale=learned/0,sinusoidal/0,sinusoidal/1,rotary/0,none/0",),
               "prev_token"),
    Experiment("norm", "pre- against post-LayerNorm without warmup", ("norm=pre,post",), "grad_norm",
               base=("--preset", "demo", "--n-layers", "4", "--steps", "600", "--warmup-steps", "0",
                     "--eval-prompts", "1")),
)}


# ---- reading a finished sweep ------------------------------------------------------------------


def label_of(cmp, run: str) -> str:
    """The run's setting without its seed: 'n_heads=1', 'batch_size=16, grad_accum=4'; a sweep's
    own axes only (d_head follows n_heads, but the sweep varied n_heads)."""
    axes = [k for k in axis_keys((cmp.sweep or {}).get("grid", {})) if k != SEED_KEY]
    keys = [k for k in axes if k in cmp.groups] or cmp.groups
    return ", ".join(f"{k}={cmp.settings.at[run, k]}" for k in keys) or run


def by_setting(cmp) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for run in cmp.runs:
        out.setdefault(label_of(cmp, run), []).append(run)
    return out


def summary(cmp) -> list[dict]:
    """Per setting: final eval loss and persona pass rate (mean over seeds), training seconds,
    parameters, status."""
    lasts = {m: cmp.last(m).set_index("run")["value"] for m in (EVAL_LOSS, PERSONA_PASS, "loss", "elapsed_s")}
    rows = []
    for label, runs in by_setting(cmp).items():
        mean = {m: float(v.reindex(runs).mean()) for m, v in lasts.items()}  # over the seeds that logged it
        rows.append({"setting": label, "runs": len(runs), "eval_loss": mean[EVAL_LOSS], "persona_pass": mean[PERSONA_PASS],
                     "loss": mean["loss"], "params": cmp.runs[runs[0]].model_config.num_params(),
                     "train_s": mean["elapsed_s"],
                     "status": ",".join(sorted({cmp.runs[r].meta.get("status", "?") for r in runs}))})
    return rows


# ---- the right panel: what the change acts on ---------------------------------------------------


def _health_lines(ax, cmp, columns: str, title: str, log: bool = True):
    """Mean over layers of a per-layer health.csv signal (`blocks.{l}.<columns>`), per setting."""
    for color, (label, runs) in zip(_colors(cmp), by_setting(cmp).items()):
        for i, r in enumerate(runs):
            h = cmp.runs[r].health
            cols = [c for c in h.columns if c.endswith(f".{columns}")]
            if not cols or h.empty:
                continue
            ax.plot(h.step, h[cols].mean(axis=1), color=color, lw=1.2, label=label if i == 0 else None)
    ax.set(title=title, xlabel="step", yscale="log" if log else "linear")


def _head_lines(ax, cmp, metric: str, reduce: str, title: str):
    hm = cmp.head_metrics((metric,))
    for color, (label, runs) in zip(_colors(cmp), by_setting(cmp).items()):
        for i, r in enumerate(runs):
            d = hm[hm.run == r].groupby("step")["value"].agg(reduce)
            ax.plot(d.index, d.values, color=color, lw=1.2, marker=".", label=label if i == 0 else None)
    ax.set(title=title, xlabel="step", xscale="symlog")


def inside_update_ratio(ax, cmp):
    _health_lines(ax, cmp, "update_ratio", "update / weight norm per step (mean over layers)")


def inside_resid_rms(ax, cmp):
    _health_lines(ax, cmp, "resid_rms", "residual stream RMS after each block (mean over layers)")


def inside_grad_norm(ax, cmp):
    for color, (label, runs) in zip(_colors(cmp), by_setting(cmp).items()):
        for i, r in enumerate(runs):
            m = cmp.runs[r].metrics
            ax.plot(m.step, m.grad_norm, color=color, lw=1.2, label=label if i == 0 else None)
    ax.set(title="global gradient norm before clipping (clip at 1)", xlabel="step", yscale="log")


def inside_entropy(ax, cmp):
    _head_lines(ax, cmp, "entropy", "mean", "attention entropy, mean over heads (nats)")


def inside_prev_token(ax, cmp):
    _head_lines(ax, cmp, "prev_token", "max", "strongest previous-token head (score)")


def inside_params(ax, cmp):
    rows = summary(cmp)
    for color, row in zip(_colors(cmp), rows):
        ax.scatter(row["params"] / 1e6, row["eval_loss"], color=color, s=40, label=row["setting"], zorder=3)
    ax.set(title="final eval loss against parameters", xlabel="parameters (millions)", ylabel="eval loss", xscale="log")


INSIDE = {"update_ratio": inside_update_ratio, "resid_rms": inside_resid_rms, "grad_norm": inside_grad_norm,
          "entropy": inside_entropy, "prev_token": inside_prev_token, "params": inside_params}


def _colors(cmp):
    import matplotlib

    n = len(by_setting(cmp))
    if n <= 10:  # settings are few: colours told apart at a glance
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    return [matplotlib.colormaps["viridis"](0.9 * i / (n - 1)) for i in range(n)]


def draw(exp: Experiment, sweep_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cmp = guppy.compare_runs(sweep_dir)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for color, (label, runs) in zip(_colors(cmp), by_setting(cmp).items()):
        for k, r in enumerate(runs):  # one line per run: seeds of a setting share its colour
            m = cmp.runs[r].metrics.dropna(subset=["loss"])
            left.plot(m.tokens, m.loss, color=color, lw=1.2, alpha=1.0 if len(runs) == 1 else 0.75,
                      label=label + (f" ({len(runs)} seeds)" if len(runs) > 1 else "") if k == 0 else None)
    left.set(title="training loss", xlabel="tokens seen", ylabel="loss", yscale="log")
    left.legend(fontsize=8)
    INSIDE[exp.inside](right, cmp)
    right.legend(fontsize=8)
    for ax in (left, right):
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.suptitle(f"{exp.question}  ({sweep_dir.name}: {len(cmp.runs)} runs)", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))  # never half a PNG where the docs point
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("list", "run", "figure", "summary"))
    p.add_argument("names", nargs="*", help=f"experiments (default: all): {', '.join(EXPERIMENTS)}")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "experiments"), help="where figures go")
    args = p.parse_args(argv)
    bad = [n for n in args.names if n not in EXPERIMENTS]
    if bad:
        p.error(f"unknown experiment {bad[0]!r}; expected one of: {', '.join(EXPERIMENTS)}")
    for exp in [EXPERIMENTS[n] for n in args.names] or list(EXPERIMENTS.values()):
        sweep_dir = Path(args.runs_dir) / exp.sweep
        if args.action == "list":
            print(exp.line())
        elif args.action == "run":
            argv_ = exp.argv(args.runs_dir)
            code = subprocess.call([sys.executable, "-m", "guppy.train.sweep", *argv_[1:]])
            if code:
                return code
        elif args.action == "figure":
            print(draw(exp, sweep_dir, Path(args.out) / f"{exp.name}.png"))
        else:
            for row in summary(guppy.compare_runs(sweep_dir)):
                print(f"{exp.name:<11}{row['setting']:<34} eval loss {row['eval_loss']:.3f}  persona "
                      f"{row['persona_pass']:.0%}  train loss {row['loss']:.3f}  {row['params']:>10,} params  "
                      f"{row['train_s']:.0f} s  {row['status']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
