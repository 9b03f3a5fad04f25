"""Plain-words captions of an Explanation (guppy.analysis.explain), written from its numbers.

    for c in captions(e, i=0): print(c.title, c.text, c.numbers)   # the forward pass, step by step
    change = compare(early, late)         # what changed between two steps, and which components did it
    print(change.text)

Each caption has `text` (plain words: what a learner reads first) and `numbers` (the same sentence
with the numbers behind each word: what the dashboard shows on hover). The words come from fixed
cut-offs on the numbers, listed here once:

| number                                   | word                                            |
|------------------------------------------|-------------------------------------------------|
| a head's weight on its top source        | >= 0.6 "mostly", >= 0.3 "partly", else "spread" |
| a contribution to the logit over the mean| >= 2 "strongly", >= 0.5 plain, >= 0.1 "slightly", else not a push |
| the said token's probability             | >= 0.8 "sure", >= 0.5 "fairly sure", >= 0.2 "unsure", else "barely" |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MOSTLY, PARTLY = 0.6, 0.3  # attention weight on a head's top source
STRONG, PLAIN, SLIGHT = 2.0, 0.5, 0.1  # |contribution| in logits (over the mean); below SLIGHT: no push
SURE = ((0.8, "sure of it"), (0.5, "fairly sure"), (0.2, "unsure"), (0.0, "barely preferring it"))
SHOW_TOKENS = 8  # tokens quoted in a caption before "…"


@dataclass(frozen=True)
class Caption:
    title: str  # the step of the forward pass: "Tokens", "Embedding", "Layer 0", ..., "Output", "Reply"
    text: str  # plain words
    numbers: str  # the same with its numbers
    layer: int | None = None


@dataclass(frozen=True)
class Change:
    """What changed between two explanations of one prompt, and where it came from."""

    text: str
    numbers: str
    steps: tuple[int | None, int | None]
    first_difference: int | None  # the first reply token that differs (None: the same reply)
    components: tuple[tuple[str, float], ...]  # (label, change in its contribution), largest first


class _Num(str):
    """A number inside a sentence: left out of the plain text, shown in parentheses in `numbers`."""


def _render(parts) -> tuple[str, str]:
    """(plain text, text with numbers): spaces collapsed, none before punctuation (token texts have
    none of their own: `visible` shows them as ␣)."""
    text = "".join(p for p in parts if not isinstance(p, _Num))
    numbers = "".join(f" ({p})" if isinstance(p, _Num) else p for p in parts)
    return tuple(re.sub(r" ([.,;:])", r"\1", " ".join(t.split())) for t in (text, numbers))


def _caption(title: str, parts, layer: int | None = None) -> Caption:
    return Caption(title, *_render(parts), layer=layer)


def visible(text: str) -> str:
    """A token's text with whitespace made visible, so a space token is not an empty label."""
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def q(text: str) -> str:
    """A token quoted for a caption (markdown code)."""
    return f"`{visible(text)}`"


def quoted(texts, limit: int = SHOW_TOKENS) -> str:
    texts = list(texts)
    shown = " ".join(q(t) for t in texts[:limit])
    return shown + (" …" if len(texts) > limit else "")


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def component_words(label: str) -> str:
    """'L0 MLP' -> "layer 0's MLP", 'L1H2' -> 'head L1H2', 'embed' -> 'the token embedding', ..."""
    if label.endswith(" MLP"):
        return f"layer {label[1:-4]}'s MLP"
    if label.endswith(" attn bias"):
        return f"layer {label[1:-10]}'s attention bias"
    return {"embed": "the token embedding", "pos_embed": "the position embedding",
            "ln bias": "the final LayerNorm's bias"}.get(label, f"head {label}")


def _push(value: float, target: str, pronoun: bool = False) -> list | None:
    """'pushed `food` up strongly' from a contribution over the mean; None when too small to call a push."""
    size = abs(value)
    if size < SLIGHT:
        return None
    how = " strongly" if size >= STRONG else "" if size >= PLAIN else " slightly"
    return [f"pushed {'it' if pronoun else target} {'up' if value > 0 else 'down'}{how}", _Num(f"{value:+.2f}")]


def _looked(head, ctx, p: int) -> list:
    src, w = head.sources[0]
    frm, to = q(ctx[p]), q(ctx[src])
    if w < PARTLY:
        return [f"spread its attention from {frm} (most on {to}" + (" itself" if src == p else ""), _Num(f"{w:.2f}"), ")"]
    how = "mostly" if w >= MOSTLY else "partly"
    return [f"looked {how} at {frm} itself" if src == p else f"looked from {frm} {how} back to {to}", _Num(f"{w:.2f}")]


def _lens(guesses, said, lead: str = "If the fish stopped here it would say") -> list:
    top = guesses[0]
    parts = [f"{lead} {q(top.text)}", _Num(f"{top.prob:.0%}")]
    if top.token == said.token:
        parts.append(", already what it will say.")
    else:
        rank = next((r for r, g in enumerate(guesses) if g.token == said.token), None)
        parts += [f"; {q(said.text)} is its guess #{rank + 1}.", _Num(f"{guesses[rank].prob:.0%}")] \
            if rank is not None else ["."]
    return parts


def layer_caption(e, i: int, layer) -> Caption:
    pred = e.predictions[i]
    ctx, p, target = e.context(i), pred.position, q(pred.said.text)
    parts = [f"Layer {layer.index}: "]
    if layer.mlp is None:  # no attribution: the head that looked most sharply
        head = max(layer.heads, key=lambda h: h.sources[0][1])
        parts += [f"head {head.name} ", *_looked(head, ctx, p), ". "]
    else:  # the head that moved the said token most, and a second one that moved it at least half as much
        heads = sorted(layer.heads, key=lambda h: -abs(h.contribution.vs_mean))
        top = heads[0].contribution.vs_mean
        parts += [f"head {heads[0].name} ", *_looked(heads[0], ctx, p)]
        first = _push(top, target)
        if first is None:
            parts += [f"; no head moved {target} much", _Num(f"at most {abs(top):.2f}"), ". "]
        else:
            parts += [" and ", *first]
            if len(heads) > 1 and abs(heads[1].contribution.vs_mean) >= 0.5 * abs(top):
                second = _push(heads[1].contribution.vs_mean, target, pronoun=True)
                parts += [f"; {heads[1].name} ", *second] if second else []
            parts.append(". ")
        mlp = _push(layer.mlp.vs_mean, target)
        parts += ["The MLP ", *mlp, ". "] if mlp else ["The MLP barely moved it", _Num(f"{layer.mlp.vs_mean:+.2f}"), ". "]
    return _caption(f"Layer {layer.index}", parts + _lens(layer.lens, pred.said), layer.index)


POSITIONS = {"learned": "a learned vector for its position is added",
             "sinusoidal": "a fixed pattern of waves for its position is added",
             "rotary": "no position is added: each head turns its queries and keys by their positions (rotary), "
                       "so word order acts only inside attention and has no contribution of its own",
             "none": "no position is added at all: only the causal mask (each token sees those before it) carries "
                     "the order"}


def captions(e, i: int = 0) -> list[Caption]:
    """The forward pass that predicted reply token i: tokens, embedding, each layer, output, reply."""
    if not 0 <= i < len(e.predictions):
        raise IndexError(f"reply token {i}: the reply has {len(e.predictions)} tokens")
    pred = e.predictions[i]
    ctx, p, target = e.context(i), pred.position, q(pred.said.text)
    start, end = e.prompt_span
    if i == 0:
        words = e.tokens[start:end]
        parts = [f"The fish reads {len(ctx)} tokens: your words as {len(words)} token{'s' * (len(words) != 1)} "
                 f"({quoted(words)}) inside its chat template. It predicts the first token of its reply from "
                 f"the last one, {q(ctx[p])}."]
    else:
        parts = [f"The fish has read the {len(e.tokens)} prompt tokens and the {i} it has said so far "
                 f"({quoted(e.reply_tokens[max(0, i - SHOW_TOKENS):i])}); it predicts the next from the last, "
                 f"{q(ctx[p])}.", _Num(f"position {p}")]
    out = [_caption("Tokens", parts)]
    parts = [f"Each token becomes a vector of {e.d_model} numbers, its embedding; {POSITIONS[e.positional]}", "."]
    if e.positional == "learned" or e.positional == "sinusoidal":
        parts.insert(1, _Num(f"position {p}"))
    parts += [" ", *_lens(pred.embed_lens, pred.said, "From the embeddings alone, the fish would say")]
    if pred.embed is not None:
        push = _push(pred.embed.vs_mean, target)
        parts += [f" The embedding of {q(ctx[p])} itself ", *(push or ["barely moves " + target, _Num(f"{pred.embed.vs_mean:+.2f}")]),
                  "."]
    out.append(_caption("Embedding", parts))
    out += [layer_caption(e, i, layer) for layer in pred.layers]
    out.append(output_caption(e, i))
    ended = e.predictions[-1].said.token == e.end_id
    out.append(_caption("Reply", [f"The whole reply, one token at a time: {quoted(e.reply_tokens, 24)}",
                                  "; then it stops." if ended else f" (cut at {len(e.predictions)} tokens).",
                                  _Num(f"token {i + 1} of {len(e.predictions)} shown above")]))
    return out


def output_caption(e, i: int) -> Caption:
    pred = e.predictions[i]
    said, rest = pred.said, [g for g in pred.next_token if g.token != pred.said.token][:2]
    word = next(w for cut, w in SURE if said.prob >= cut)
    what = "ends its reply" if said.token == e.end_id else f"says {q(said.text)}"
    parts = [f"Output: the fish {what}, {word}", _Num(f"{said.prob:.0%}")]
    if rest:
        parts += [", ahead of "] + [x for g in rest for x in (q(g.text), _Num(f"{g.prob:.0%}"), " and ")][:-1]
    parts.append(". ")
    comps = pred.components()
    if comps:
        ups = sorted((c for c in comps if c[1].vs_mean >= SLIGHT), key=lambda c: -c[1].vs_mean)[:3]
        if ups:
            parts += ["The biggest direct pushes toward it: "]
            for j, (label, c) in enumerate(ups):
                parts += [", " if j else "", component_words(label), _Num(f"{c.vs_mean:+.2f}")]
            parts += [".", _Num(f"all together {pred.total.vs_mean:+.2f} over the mean logit")]
    else:
        parts.append(f"Which heads and MLPs gave it cannot be read off here: {e.attribution}.")
    return _caption("Output", parts)


# ---- two steps of training side by side ------------------------------------------------------------


def _reply(e, limit: int = 48) -> str:
    text = e.reply.strip() or "(nothing)"
    return f"`{text[:limit]}{'…' if len(text) > limit else ''}`"


def _lens_from(pred, token: int) -> int | None:
    """The first layer after which the logit lens puts `token` on top (None: never)."""
    return next((layer.index for layer in pred.layers if layer.lens[0].token == token), None)


def _margin_terms(model, e, j: int, target: int, other: int):
    """Each component's direct contribution to logit(target) - logit(other) at reply token j of e."""
    import torch  # here: the captions themselves are plain Python, for readers without torch

    from guppy.analysis.attribution import attribution_hooks, logit_attribution

    ctx = list(e.token_ids) + list(e.reply_ids[:j])
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor([ctx]), names=attribution_hooks(model))
        pos = torch.tensor([len(ctx) - 1])
        terms, labels, bias, margin = logit_attribution(model, cache, logits, pos, torch.tensor([target]),
                                                        baseline=torch.tensor([other]))
    return dict(zip(labels + ["ln bias"], terms[0].tolist() + [float(bias[0])])), float(margin[0])


def _leaders(delta: dict[str, float], total: float) -> list[tuple[str, float]]:
    """The components that moved most in the direction of `total`, until they cover half of it (at most 3)."""
    sign = 1 if total >= 0 else -1
    ranked = sorted(delta.items(), key=lambda kv: -sign * kv[1])
    out, covered = [], 0.0
    for label, d in ranked[:3]:
        if sign * d <= 0 or (out and covered >= 0.5 * abs(total)):
            break
        out.append((label, d))
        covered += sign * d
    return out


def compare(a, b, models=None) -> Change:
    """What changed from explanation a to b (one prompt, two steps), and which components it came from.
    `models`: (a's model, b's model), else loaded from their run."""
    if a.token_ids != b.token_ids:
        raise ValueError("compare needs two explanations of the same prompt")
    j = next((n for n, (x, y) in enumerate(zip(a.reply_ids, b.reply_ids)) if x != y), None)
    head = [f"At step {a.step} it said {_reply(a)}, at step {b.step} {_reply(b)}"] if j is not None else \
        [f"At steps {a.step} and {b.step} it says the same, {_reply(b)}"]
    at = j if j is not None else 0
    pa, pb = a.predictions[at], b.predictions[at]
    if a.attribution or b.attribution:
        first = _lens_from(pb, pb.said.token)
        before = _lens_from(pa, pb.said.token)
        parts = head + [f". Which components it came from cannot be read off: {a.attribution or b.attribution}. "
                        f"The logit lens puts {q(pb.said.text)} on top "
                        + (f"from layer {first} at step {b.step}" if first is not None else f"at no layer at step {b.step}")
                        + (f" (from layer {before} at step {a.step})." if before is not None else f" (at none at step {a.step}).")]
        return Change(*_render(parts), (a.step, b.step), j, ())
    if j is None:  # the same reply: what grew behind its first token
        delta = {label: cb.vs_mean - ca.vs_mean for (label, ca), (_, cb) in zip(pa.components(), pb.components())}
        total = pb.total.vs_mean - pa.total.vs_mean
        grew = "more" if pb.said.prob > pa.said.prob + 0.005 else "less" if pb.said.prob < pa.said.prob - 0.005 else None
        parts = head + [f"; it grew {grew} sure of {q(pb.said.text)}" if grew else f"; it is about as sure of {q(pb.said.text)}",
                        _Num(f"{pa.said.prob:.0%} -> {pb.said.prob:.0%}")]
        tail = " over the mean logit at the reply's first token"
    else:
        if models is None:
            if not (a.run and b.run):
                raise ValueError("compare: these explanations name no run to load their models from; pass models=")
            from guppy.run.reader import open_run

            models = [open_run(e.run).model(e.step) for e in (a, b)]
        target, other = pb.said.token, pa.said.token
        ta, ma = _margin_terms(models[0], a, j, target, other)
        tb, mb = _margin_terms(models[1], b, j, target, other)
        delta = {label: tb[label] - ta[label] for label in ta}
        total = mb - ma
        parts = head
        tail = f" of the swing toward {q(pb.said.text)} over {q(pa.said.text)} at reply token {j + 1}"
    leaders = _leaders(delta, total)
    if leaders:
        parts = parts + [": the change came from " if j is not None else ", mostly from ",
                         _and([component_words(label) for label, _ in leaders]),
                         _Num(", ".join(f"{d:+.2f}" for _, d in leaders) + f" of {total:+.2f}{tail}"), "."]
    else:
        parts = parts + ["."]
    ranked = tuple(sorted(delta.items(), key=lambda kv: -abs(kv[1])))
    return Change(*_render(parts), (a.step, b.step), j, ranked)
