"""docs/reference.md's "What the reference fish learned" figures, drawn from a recorded run (PNG, matplotlib).

    python experiments/reference_figures.py --run runs/reference-20261126-110000 --out docs/reference

Runs the probe scripts on the run (as subprocesses, with their own defaults otherwise):
logit_lens, topic_probe and head_types on every snapshot, ablate_heads (mean ablation, no
generation) on a few log-spaced snapshots, since each snapshot of the 8.7M model costs ~20 s
there on a busy 2-core machine. Then draws from their CSVs (runs/<name>/probes/) and from the
snapshots' residual norms, into --out:

  resid_norm.png   residual-stream norm at each layer boundary, over training and by position
  logit_lens.png   reply-token loss and top-1 accuracy decoding each layer boundary
  topic_probe.png  topic linear-probe accuracy by layer, shuffled-label control and chance
  head_types.png   the final type of every head; the strongest head score over training
  ablation.png     loss increase under mean ablation of each head / MLP; the top sites over training

and prints the numbers docs/reference.md states. Reads the run through `guppy.open_run` only. Needs
matplotlib (the `figures` extra).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guppy.cli import ArgumentParser, positive_int, run_main  # noqa: E402
from guppy.run import format as R  # noqa: E402
from guppy.run.writer import atomic_write  # noqa: E402

PROG = "reference_figures.py"
FIGURES = ("resid_norm.png", "logit_lens.png", "topic_probe.png", "head_types.png", "ablation.png")
DPI = 90  # ~50-100 KB per figure
ABLATION = "mean"  # the ablation drawn: zero ablation moves the residual off its usual operating point
TOP_SITES = 5  # sites drawn over training in ablation.png


# ---- running the probes -------------------------------------------------------------------------


def log_spaced(steps: list[int], n: int) -> list[int]:
    """About `n` of `steps`, log-spaced between last/100 and the last (the model before ~1% of
    training is near its initialisation: nothing to ablate yet); always the last step."""
    last = steps[-1]
    if last < 1:
        return [last]
    usable = [s for s in steps if s > 0] or [last]
    chosen = {min(usable, key=lambda s: abs(np.log(s) - np.log(t))) for t in np.geomspace(max(last / 100, 1), last, n)}
    return sorted(chosen | {last})


def run_probe(run_dir: Path, name: str, args: list[str]) -> float:
    """probes/<name>.py on the run, in its own process; its error line becomes ours."""
    t0 = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "probes" / f"{name}.py"), "--run", str(run_dir), *args]
    # this checkout's guppy in the probes too (not another one installed in editable mode)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ValueError(f"probes/{name}.py failed: {last}")
    return time.perf_counter() - t0


def run_probes(run, ablate_steps: list[int]) -> None:
    jobs = {"logit_lens": ["--snapshot", "all"], "topic_probe": ["--snapshot", "all"],
            "head_types": ["--snapshot", "all"],
            "ablate_heads": ["--snapshot", ",".join(map(str, ablate_steps)), "--methods", ABLATION, "--eval-prompts", "0"]}
    for name, args in jobs.items():
        print(f"probes/{name}.py {' '.join(args)}: {run_probe(run.path, name, args):.0f} s", flush=True)


def probe_table(run, name: str):
    out = run.probe_outputs().get(name)
    if out is None or "" not in out.tables:
        raise ValueError(f"{run.path}: no probes/{name}.csv (run without --reuse to make it)")
    return out.read()


# ---- figures ------------------------------------------------------------------------------------


def step_colours(steps):
    """Early to late along viridis, by log step (most snapshots are log-spaced)."""
    import matplotlib.pyplot as plt

    where = np.log1p(np.asarray(steps, float))
    where = (where - where.min()) / max(where.max() - where.min(), 1e-9)
    return [plt.cm.viridis(w) for w in where]


def short(point: str) -> str:
    """blocks.3.hook_resid_pre -> 'pre 3'; the last resid_post -> 'out'."""
    layer = R.layer_of(point)
    return f"pre {layer}" if point.endswith("resid_pre") else "out"


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    plt.close(fig)


def resid_norm_figure(run, path: Path) -> dict:
    import matplotlib.pyplot as plt

    steps = list(run.snapshot_files)
    norms = np.stack([run.read(R.RESID_NORM, s) for s in steps])  # (S, points, T)
    points = [str(p) for p in run.read(R.RESID_POINTS, steps[-1])]
    mean = np.nanmean(norms, axis=2)  # (S, points): mean over positions
    labels = [short(p) for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    for s, c, row in zip(steps, step_colours(steps), mean):
        axes[0].plot(labels, row, marker=".", color=c, lw=1, label=f"step {s}" if s in (steps[0], steps[-1]) else None)
    axes[0].set(yscale="log", xlabel="layer boundary (resid_pre of block l; out = last resid_post)",
                ylabel="mean ||resid|| over positions", title="by layer, one line per snapshot")
    axes[0].legend(fontsize=8, frameon=False)
    for i, label in enumerate(labels):
        axes[1].plot(steps, mean[:, i], marker=".", color=plt.cm.plasma(i / len(labels)), label=label)
    axes[1].set(xscale="symlog", xlim=(0, None), yscale="log", xlabel="training step",
                title="each layer boundary over training")
    axes[1].legend(fontsize=7, frameon=False, ncol=2)
    last = norms[-1]  # (points, T)
    for i, label in enumerate(labels):
        axes[2].plot(last[i], color=plt.cm.plasma(i / len(labels)), lw=1, label=label)
    axes[2].set(yscale="log", xlabel="token position", title=f"by position, step {steps[-1]}")
    fig.suptitle("Residual-stream norm (snapshots' resid/norm_by_position: mean over the watch set's inputs)",
                 fontsize=10)
    save(fig, path)
    peak = int(np.nanargmax(last[-1]))
    return {"steps": steps, "labels": labels, "first": mean[0], "last": mean[-1], "peak_pos": peak,
            "max_step": steps[int(np.argmax(mean[:, -1]))], "max": float(mean[:, -1].max()),
            "peak": float(last[-1, peak]), "peak_token": run.tokenizer.decode([int(run.watch.tokens[0, peak])])}


def by_point(df, value: str):
    """(steps, points, (S, P) array of `value`) from a probe table with step and point columns."""
    wide = df.pivot(index="step", columns="point", values=value)
    points = sorted(wide.columns, key=lambda p: (R.layer_of(p), p.endswith("resid_post")))
    return list(wide.index), points, wide[points].to_numpy()


def logit_lens_figure(df, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for ax, value, title in ((axes[0], "loss", "reply-token loss (nats, log)"), (axes[1], "accuracy", "top-1 accuracy")):
        steps, points, v = by_point(df, value)
        for s, c, row in zip(steps, step_colours(steps), v):
            ax.plot([short(p) for p in points], row, marker=".", color=c, lw=1,
                    label=f"step {s}" if s in (steps[0], steps[-1]) else None)
        ax.set(title=title, xlabel="decoded at layer boundary (out = the model's own output)")
    axes[0].set_yscale("log")
    axes[1].set_ylim(0, 1)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle("Logit lens (probes/logit_lens.py): held-out replies decoded from each layer's residual stream, "
                 "one line per snapshot", fontsize=10)
    save(fig, path)


def topic_probe_figure(df, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    steps, points, test = by_point(df, "test_acc")
    _, _, control = by_point(df, "control_test_acc")
    labels = [short(p) for p in points]
    for s, c, row in zip(steps, step_colours(steps), test):
        axes[0].plot(labels, row, marker=".", color=c, lw=1, label=f"step {s}" if s in (steps[0], steps[-1]) else None)
    axes[0].plot(labels, control[-1], "--", color="black", lw=1, label=f"shuffled labels, step {steps[-1]}")
    for i, label in enumerate(labels):
        axes[1].plot(steps, test[:, i], marker=".", color=plt.cm.plasma(i / len(labels)), label=label)
    axes[1].plot(steps, control.max(1), "--", color="black", lw=1, label="shuffled labels (best layer)")
    axes[1].set(xscale="symlog", xlim=(0, None), xlabel="training step")
    chance = float(df.chance.iloc[0])
    for ax in axes:
        ax.axhline(chance, ls=":", color="0.5")
        ax.set(ylim=(0, 1.02), ylabel="held-out test accuracy")
    axes[0].set(xlabel="layer boundary (the last prompt token)", title="by layer, one line per snapshot")
    axes[1].set_title("each layer boundary over training")
    axes[0].legend(fontsize=8, frameon=False)
    axes[1].legend(fontsize=7, frameon=False, ncol=2)
    n = df.iloc[0]
    fig.suptitle(f"Topic linear probe (probes/topic_probe.py): {n.n_topics} topics, {n.n_train} train / {n.n_test} "
                 f"test chats split by prompt; dotted: chance {chance:.3f}", fontsize=10)
    save(fig, path)


def head_types_figure(df, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from guppy.analysis.head_types import HEAD_TYPES

    last = df[df.step == df.step.max()]
    L, H = int(last.layer.max()) + 1, int(last["head"].max()) + 1
    kinds = ["other", *HEAD_TYPES]
    grid = np.zeros((L, H), int)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True, gridspec_kw={"width_ratios": [1, 1.4]})
    for r in last.itertuples():
        grid[r.layer, r.head] = kinds.index(r.type)
        score = HEAD_TYPES[r.type][0] if r.type != "other" else max((s for s, _, _ in HEAD_TYPES.values()),
                                                                       key=lambda s: getattr(r, s))
        axes[0].text(r.head, r.layer, f"{r.type.replace('_', ' ')}\n{score.replace('_', ' ')} {getattr(r, score):.3f}",
                     ha="center", va="center", fontsize=6.5)
    colours = ["#eeeeee", "#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#2ca02c"][:len(kinds)]
    axes[0].imshow(grid, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(kinds) - 0.5, aspect="auto")
    axes[0].set(xticks=range(H), xticklabels=[f"H{h}" for h in range(H)], yticks=range(L),
                yticklabels=[f"L{l}" for l in range(L)],
                title=f"type at step {int(last.step.iloc[0])} (other: its highest score)")
    steps = sorted(df.step.unique())
    for i, (kind, (score, threshold, _)) in enumerate(HEAD_TYPES.items()):
        best = df.groupby("step")[score].max().reindex(steps)
        axes[1].plot(steps, best, marker=".", color=colours[i + 1], label=f"{score} (best head)")
        axes[1].axhline(threshold, ls="--", lw=0.8, color=colours[i + 1])
    axes[1].set(xscale="symlog", xlim=(0, None), ylim=(0, 1), xlabel="training step", ylabel="score (attention mass)",
                title="strongest head per score over training (dashed: the type's threshold)")
    axes[1].legend(fontsize=8, frameon=False)
    fig.suptitle("Head types (probes/head_types.py) on the watch set", fontsize=10)
    save(fig, path)


def ablation_figure(df, n_layers: int, n_heads: int, path: Path) -> list[str]:
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    last = df[df.step == df.step.max()]
    grid = np.zeros((n_layers, n_heads + 1))
    for r in last.itertuples():
        grid[r.layer, r.head if r.kind == "head" else n_heads] = r.delta_loss
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True, gridspec_kw={"width_ratios": [1, 1.3]})
    bound = float(np.abs(grid).max()) or 1.0
    im = axes[0].imshow(grid, cmap="RdBu_r", norm=SymLogNorm(0.01, vmin=-bound, vmax=bound), aspect="auto")
    for (l, h), v in np.ndenumerate(grid):
        axes[0].text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if abs(v) > 1 else "black")
    axes[0].set(xticks=range(n_heads + 1), xticklabels=[f"H{h}" for h in range(n_heads)] + ["MLP"],
                yticks=range(n_layers), yticklabels=[f"L{l}" for l in range(n_layers)],
                title=f"step {int(last.step.iloc[0])}: loss increase (nats, symlog colour)")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    top = list(last.sort_values("delta_loss", ascending=False).site[:TOP_SITES])
    for i, site in enumerate(top):
        s = df[df.site == site].sort_values("step")
        axes[1].plot(s.step, s.delta_loss, marker="o", color=f"C{i}", label=site)
    axes[1].set_yscale("symlog", linthresh=0.01)  # the MLP's 6 nats and the heads' tenths on one axis
    axes[1].set(xscale="log", xlabel="training step (the snapshots ablated)",
                ylabel="loss increase (nats, symlog)", title=f"the {TOP_SITES} most important sites over training")
    axes[1].legend(fontsize=8, frameon=False)
    fig.suptitle(f"{ABLATION.capitalize()} ablation of each head and MLP (probes/ablate_heads.py): increase in "
                 f"held-out reply loss (base {last.base_loss.iloc[0]:.3f})", fontsize=10)
    save(fig, path)
    return top


# ---- the numbers -------------------------------------------------------------------------------


def report(resid, lens, topic, heads, ablation, top) -> None:
    f = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"resid norm, mean over positions, at {', '.join(resid['labels'])}: step {resid['steps'][0]}: "
          f"{f(resid['first'])}; step {resid['steps'][-1]}: {f(resid['last'])}")
    print(f"  {resid['labels'][-1]} largest at step {resid['max_step']}: {resid['max']:.2f}")
    print(f"  step {resid['steps'][-1]}: largest at position {resid['peak_pos']} ({resid['peak_token']!r} in the first "
          f"input): {resid['peak']:.1f} at {resid['labels'][-1]}")
    steps, points, loss = by_point(lens, "loss")
    _, _, acc = by_point(lens, "accuracy")
    print(f"logit lens, step {steps[-1]}, loss / top-1 by boundary: "
          + "; ".join(f"{short(p)} {l:.3f} / {a:.1%}" for p, l, a in zip(points, loss[-1], acc[-1])))
    drops = -np.diff(loss[-1])
    d = int(np.argmax(drops))
    print(f"  largest drop: {short(points[d])} -> {short(points[d + 1])} ({loss[-1, d]:.3f} -> {loss[-1, d + 1]:.3f})")
    steps, points, test = by_point(topic, "test_acc")
    _, _, control = by_point(topic, "control_test_acc")
    n = topic.iloc[0]
    print(f"topic probe, step {steps[-1]}, {n.n_topics} topics, {n.n_train} train / {n.n_test} test chats, test / "
          f"shuffled-label control by boundary (chance {n.chance:.3f}): " + "; ".join(f"{short(p)} {t:.3f} / {c:.3f}"
                                                     for p, t, c in zip(points, test[-1], control[-1])))
    best = test.max(1)
    for level in (0.5, 0.9):
        reached = [s for s, b in zip(steps, best) if b >= level]
        print(f"  first step with a layer >= {level:.0%}: {reached[0] if reached else 'never'}")
    last = heads[heads.step == heads.step.max()]
    typed = last[last.type != "other"]
    first = {r.label: heads[(heads.label == r.label) & (heads.type == r.type)].step.min() for r in typed.itertuples()}
    print(f"head types, step {int(last.step.iloc[0])}: {len(typed)} of {len(last)} heads typed: "
          + (", ".join(f"{r.label} {r.type} (first at step {first[r.label]})" for r in typed.itertuples()) or "none"))
    from guppy.analysis.head_types import HEAD_TYPES

    print("  a type needs: " + ", ".join(f"{s} >= {t}" for s, t, _ in HEAD_TYPES.values()))
    print("  strongest score at the end: " + "; ".join(
        f"{s} {last[s].max():.3f} ({last.loc[last[s].idxmax(), 'label']})" for s, _, _ in HEAD_TYPES.values()))
    final = ablation[ablation.step == ablation.step.max()].set_index("site")
    print(f"ablation ({ABLATION}), step {int(ablation.step.max())}, base loss {final.base_loss.iloc[0]:.3f}, "
          f"snapshots {', '.join(map(str, sorted(ablation.step.unique())))}:")
    for site in top:
        s = ablation[ablation.site == site].sort_values("step")
        effect = final.loc[site, "delta_loss"]
        half = f"half its final effect from step {s[s.delta_loss >= effect / 2].step.min()}" if effect > 0 else "no effect"
        print(f"  {site}: {effect:+.3f} nats; over training "
              + ", ".join(f"{int(a)}: {b:+.3f}" for a, b in zip(s.step, s.delta_loss)) + f"; {half}")
    later = final[final.layer > 0]
    if len(later):
        print("  largest after layer 0: " + "; ".join(f"{k} {later[later.kind == k].delta_loss.idxmax()} "
                                                     f"{later[later.kind == k].delta_loss.max():+.3f}"
                                                     for k in ("head", "mlp") if (later.kind == k).any()))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description="Draw docs/reference.md's figures (PNG) from a recorded run.")
    p.add_argument("--run", required=True, help="a recorded run folder (make reference), e.g. runs/reference-...")
    p.add_argument("--out", default="docs/reference", help="folder for the PNG files (default docs/reference)")
    p.add_argument("--ablate-snapshots", type=positive_int, default=6,
                   help="log-spaced snapshots to ablate (default 6; ~20 s each for the 8.7M model on 2 busy cores)")
    p.add_argument("--reuse", action="store_true", help="draw from the probe outputs already in the run (run no probe)")
    args = p.parse_args(argv)

    def body():
        t0 = time.perf_counter()
        try:
            import matplotlib
        except ImportError:
            raise ValueError("needs matplotlib: pip install 'guppy[figures]'") from None
        matplotlib.use("Agg")  # files only: no display needed
        from guppy.analysis import probe_runner as A

        run = A.open_recorded_run(args.run)
        if not args.reuse:
            run_probes(run, log_spaced(list(run.snapshot_files), args.ablate_snapshots))
        lens, topic, heads = (probe_table(run, n) for n in ("logit_lens", "topic_probe", "head_types"))
        ablation = probe_table(run, "ablate_heads")
        ablation = ablation[ablation.method == ABLATION]
        if ablation.empty:
            raise ValueError(f"{run.path}: probes/ablate_heads.csv has no {ABLATION} ablation")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        resid = resid_norm_figure(run, out / FIGURES[0])
        logit_lens_figure(lens, out / FIGURES[1])
        topic_probe_figure(topic, out / FIGURES[2])
        head_types_figure(heads, out / FIGURES[3])
        cfg = run.model_config
        top = ablation_figure(ablation, cfg.n_layers, cfg.n_heads, out / FIGURES[4])
        print(f"wrote {', '.join(str(out / f) for f in FIGURES)}")
        report(resid, lens, topic, heads, ablation, top)
        print(f"{PROG}: {time.perf_counter() - t0:.0f} s wall")

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
