"""Activation patching: where does the model keep what tells one topic's prompt from another's?

    python probes/patching.py --run runs/demo
    python probes/patching.py --run runs/demo --clean "are you hungry" --corrupt "is the water cold"

Run the corrupted prompt, but with one activation copied from the clean prompt's run, and see
how much of the clean behaviour comes back. The metric is the logit difference at the last
prompt position (where the first reply token is predicted) between the clean run's top token
A and the corrupted run's top token B: LD = logit[A] - logit[B]. Reported as

    recovered = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)    (1 = all of it)

over (a) the residual stream at each layer boundary x each position, plus the whole residual
at once (which recovers exactly 1), and (b) each head's hook_z at every position. Without
--clean/--corrupt the pair is chosen from held-out prompts of two different topics with the
same token length, largest clean-vs-corrupt logit difference first. (B is the corrupted
run's runner-up when both runs put A first.)

Writes runs/<name>/probes/patching_resid.csv, patching_heads.csv and patching.html.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from guppy.analysis import probe_runner as A
from guppy.analysis.heldout import heldout_chats
from guppy.run.format import layer_of, resid_points

PROG = "patching.py"


def logit_diff(logits: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return logits[:, -1, a] - logits[:, -1, b]  # (B,)


def answers(clean_last: torch.Tensor, corrupt_last: torch.Tensor) -> tuple[int, int]:
    """A = the clean run's top token; B = the corrupted run's top token, or its runner-up
    when both runs put A first (an undertrained model often does)."""
    a = int(clean_last.argmax())
    top2 = corrupt_last.topk(2).indices.tolist()
    return a, top2[1] if top2[0] == a else top2[0]


@torch.no_grad()
def patch_resid(model, clean: torch.Tensor, corrupt: torch.Tensor, a: int, b: int):
    """Recovered fraction when patching each residual point at each position, one batched
    forward per point -> (points, T) tensor, point names, (points,) whole-residual recovery."""
    cfg = model.cfg
    T = clean.shape[1]
    points = resid_points(cfg.n_layers)
    clean_logits, cache = model.run_with_cache(clean, names=points)
    ld_clean, ld_corrupt = logit_diff(clean_logits, a, b), logit_diff(model(corrupt), a, b)
    by_pos, whole = [], []
    for name in points:
        def patch(x, hook):  # (T + 1, T, D): copy p < T patches position p, copy T every position
            x = x.clone()
            x[torch.arange(T), torch.arange(T)] = cache[name][0]
            x[T] = cache[name][0]
            return x
        ld = logit_diff(model.run_with_hooks(corrupt.expand(T + 1, T), fwd_hooks=[(name, patch)]), a, b)
        rec = (ld - ld_corrupt) / (ld_clean - ld_corrupt)
        by_pos.append(rec[:T])
        whole.append(rec[T])
    return torch.stack(by_pos), points, torch.stack(whole)


@torch.no_grad()
def patch_heads(model, clean: torch.Tensor, corrupt: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Recovered fraction when patching one head's z at every position -> (L, H), one forward."""
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    clean_logits, cache = model.run_with_cache(clean, names="blocks.*.attn.hook_z")
    ld_clean, ld_corrupt = logit_diff(clean_logits, a, b), logit_diff(model(corrupt), a, b)
    copy = torch.arange(L * H)

    def patch(z, hook):  # (L*H, T, H, E): copy l*H + h takes head h of the clean run
        l = layer_of(hook.name)
        z = z.clone()
        mine = copy[l * H:(l + 1) * H]
        z[mine, :, torch.arange(H)] = cache[hook.name][0, :, torch.arange(H)].transpose(0, 1)
        return z
    ld = logit_diff(model.run_with_hooks(corrupt.expand(L * H, -1), fwd_hooks=[("blocks.*.attn.hook_z", patch)]), a, b)
    return ((ld - ld_corrupt) / (ld_clean - ld_corrupt)).view(L, H)


@torch.no_grad()
def choose_pair(model, tokenizer, chats) -> tuple[str, str]:
    """Two held-out prompts of different topics, same token length, different top first
    reply tokens: the pair with the largest clean-minus-corrupt logit difference."""
    prompts = {}
    for c in chats:
        prompts.setdefault(c.prompt, c.topic)
    by_len: dict[int, list[str]] = {}
    for p in prompts:
        by_len.setdefault(len(tokenizer.encode_prompt(p)), []).append(p)
    best, best_gap = None, 0.0
    for n, group in by_len.items():
        if len({prompts[p] for p in group}) < 2:
            continue
        group = group[:24]
        logits = model(torch.tensor([tokenizer.encode_prompt(p) for p in group]))[:, -1]  # (G, V)
        for i, pi in enumerate(group):
            for j, pj in enumerate(group):
                if prompts[pi] != prompts[pj]:
                    a, b = answers(logits[i], logits[j])
                    gap = float((logits[i, a] - logits[i, b]) - (logits[j, a] - logits[j, b]))
                    if gap > best_gap:
                        best, best_gap = (pi, pj), gap
    if best is None:
        raise ValueError("no two held-out prompts of different topics share a token length and differ in their "
                         "first reply token's logits; pass --clean and --corrupt")
    return best


def figure(resid: pd.DataFrame, heads: pd.DataFrame, title: str):
    import plotly.express as px
    from plotly.subplots import make_subplots

    grid = resid.pivot(index="point", columns="position", values="recovered").reindex(list(dict.fromkeys(resid.point)))
    names = resid.drop_duplicates("position").sort_values("position").token.tolist()
    hgrid = heads.pivot(index="layer", columns="head", values="recovered")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.12,
                        subplot_titles=["residual stream: point x position", "heads (every position)"])
    for i, (z, x, y) in enumerate([(grid.values, [f"{p}:{t}" for p, t in enumerate(names)], grid.index.tolist()),
                                   (hgrid.values, [f"H{h}" for h in hgrid.columns], [f"L{l}" for l in hgrid.index])]):
        trace = px.imshow(z, x=x, y=y, zmin=-1, zmax=1, color_continuous_scale="RdBu_r").data[0]
        fig.add_trace(trace, row=1, col=i + 1)
    fig.update_layout(title=title, coloraxis={"colorscale": "RdBu_r", "cmin": -1, "cmax": 1})
    fig.update_yaxes(autorange="reversed")
    return fig


def compute(run, steps, args):
    if (args.clean is None) != (args.corrupt is None):
        raise ValueError("give both --clean and --corrupt, or neither")
    step = steps[0]
    model, tok = run.model(step), run.tokenizer
    clean_text, corrupt_text = (args.clean, args.corrupt) if args.clean else choose_pair(model, tok, heldout_chats(run))
    clean, corrupt = (torch.tensor([tok.encode_prompt(t)]) for t in (clean_text, corrupt_text))
    if clean.shape != corrupt.shape:
        raise ValueError(f"--clean is {clean.shape[1]} tokens and --corrupt {corrupt.shape[1]}; they must match")
    with torch.no_grad():
        clean_logits, corrupt_logits = model(clean), model(corrupt)
    a, b = answers(clean_logits[0, -1], corrupt_logits[0, -1])
    if not float(logit_diff(clean_logits, a, b) - logit_diff(corrupt_logits, a, b)) > 0:
        raise ValueError("the two prompts give the same logit difference; pick prompts whose replies differ")
    by_pos, points, whole = patch_resid(model, clean, corrupt, a, b)
    tokens = [tok.decode([t], skip_special=False) for t in clean[0].tolist()]
    resid = pd.DataFrame([{"step": step, "point": pt, "position": p, "token": tokens[p],
                           "corrupt_token": tok.decode([int(corrupt[0, p])], skip_special=False),
                           "recovered": float(by_pos[i, p])} for i, pt in enumerate(points) for p in range(len(tokens))])
    resid = pd.concat([resid, pd.DataFrame([{"step": step, "point": pt, "position": -1, "token": "(all)",
                                             "corrupt_token": "(all)", "recovered": float(whole[i])}
                                            for i, pt in enumerate(points)])], ignore_index=True)
    hg = patch_heads(model, clean, corrupt, a, b)
    heads = pd.DataFrame([{"step": step, "layer": l, "head": h, "recovered": float(hg[l, h])}
                          for l in range(hg.shape[0]) for h in range(hg.shape[1])])
    title = f"clean {clean_text!r} -> {tok.decode([a])!r}; corrupt {corrupt_text!r} -> {tok.decode([b])!r}"
    print(f"step {step}: {title}")
    wide = resid[resid.position >= 0].pivot(index="point", columns="position", values="recovered").reindex(points)
    wide.columns = [f"{p}:{t.strip()[:6]}" for p, t in enumerate(tokens)]
    A.print_table("recovered fraction, residual point x position (whole residual: "
                  + ", ".join(f"{v:.2f}" for v in whole.tolist()) + ")", wide.reset_index(), rows=len(points))
    A.print_table("heads (largest first):", heads.sort_values("recovered", ascending=False)[["layer", "head", "recovered"]], rows=5)
    return {"resid": resid, "heads": heads}, figure(resid[resid.position >= 0], heads, title)


def flags(p) -> None:
    p.add_argument("--clean", help="clean prompt text (default: chosen from held-out prompts)")
    p.add_argument("--corrupt", help="corrupted prompt text, same token length as --clean")


def main(argv: list[str] | None = None) -> int:
    return A.run_probe(PROG, "Activation patching between a clean and a corrupted prompt (recovered logit difference).",
                       compute, argv, output="patching", extra_args=flags, allow_all=False)


if __name__ == "__main__":
    sys.exit(main())
