"""Walk through one reply: how the model turned a prompt into its greedy reply, at one training step.

    e = guppy.explain("runs/demo", "hi guppy", step=64)      # step: a checkpoint step or "latest"
    e.tokens, e.reply                 # the prompt as the model sees it (template included); what it said
    e.next_token                      # top-k guesses for the reply's first token, with probabilities
    e.layers[1].heads[2].sources      # where head L1H2 looked from the last prompt token, and how much
    e.layers[1].mlp.vs_mean           # what layer 1's MLP added to that token's logit (over the mean)
    e.predictions[3]                  # the same for the reply's fourth token
    for c in e.captions(): print(c.title, c.text)      # the forward pass in plain words
    print(e.compare(guppy.explain(run, "hi guppy", step=891)).sentence)   # what changed, and where from

Notable:
- One greedy reply (temperature 0, as `guppy-chat --temperature 0`), then one forward of prompt +
  reply with the hooks cached. A causal model's output at position p sees only tokens <= p, so
  every reply token is read off that one forward at the position that predicted it.
- The numbers are the probes' own code: direct logit attribution from guppy.analysis.attribution
  (to the said token's logit, and to its logit over the vocabulary's mean, `vs_mean`, which
  ignores what raises every token alike: the captions use it), the logit lens from
  guppy.analysis.logit_lens, attention from `attn.hook_pattern`.
- A post-LN model's logit is not a sum of its parts: contributions are None there and
  `Explanation.attribution` says why; attention, the lens and the reply are all there.
- Captions (guppy.analysis.captions) are written from these numbers, never canned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from guppy.analysis.attribution import attribution_hooks, attribution_limit, logit_attribution
from guppy.analysis.captions import Caption, Change, captions, compare
from guppy.analysis.logit_lens import lens_points, lens_top
from guppy.model.generate import generate

SOURCES = 3  # top source positions kept per head


@dataclass(frozen=True)
class Guess:
    """A token the model could say next, with its probability."""

    token: int
    text: str
    prob: float


@dataclass(frozen=True)
class Contribution:
    """A component's direct contribution to the said token: to its logit, and to its logit minus
    the mean logit over the vocabulary."""

    logit: float
    vs_mean: float


@dataclass(frozen=True)
class Head:
    layer: int
    head: int
    attention: np.ndarray  # (p + 1,) float32: from the predicting position p to each position 0..p
    sources: tuple[tuple[int, float], ...]  # the top positions it looked at and their weights, strongest first
    contribution: Contribution | None  # None: a model attribution cannot split (Explanation.attribution)

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass(frozen=True)
class Layer:
    index: int
    heads: tuple[Head, ...]
    attn_bias: Contribution | None  # the attention output's bias b_O
    mlp: Contribution | None
    lens: tuple[Guess, ...]  # the logit lens after this layer: what the model would say if it stopped here


@dataclass(frozen=True)
class Prediction:
    """How one token of the reply was computed, at the position that predicted it."""

    position: int  # index into Explanation.context(i) of the token whose output predicts this one
    said: Guess  # the token the model said (greedy: its top guess)
    next_token: tuple[Guess, ...]  # the top-k of the real output
    embed_lens: tuple[Guess, ...]  # the logit lens before layer 0: the embeddings alone
    layers: tuple[Layer, ...]
    embed: Contribution | None  # the predicting token's own embedding
    pos_embed: Contribution | None  # its position vector (learned or sinusoidal positions only)
    ln_bias: Contribution | None  # ln_final's bias (a constant)
    total: Contribution  # the said token's logit (and over the mean): the sum of the above

    def components(self) -> list[tuple[str, Contribution]]:
        """Every attributed component with its label ('embed', 'L0H3', 'L0 attn bias', 'L0 MLP', 'ln bias'),
        in forward order; empty for a model attribution cannot split."""
        if self.embed is None:
            return []
        out = [("embed", self.embed)] + ([("pos_embed", self.pos_embed)] if self.pos_embed else [])
        for layer in self.layers:
            out += [(h.name, h.contribution) for h in layer.heads]
            out += [(f"L{layer.index} attn bias", layer.attn_bias), (f"L{layer.index} MLP", layer.mlp)]
        return out + [("ln bias", self.ln_bias)]


@dataclass(frozen=True)
class Explanation:
    """One prompt through one snapshot's model: its tokens, its greedy reply, and for every reply
    token what each layer's heads and MLP did (`predictions`; `layers` and `next_token` are the
    first reply token's)."""

    run: str  # the run folder ('' for a bare model)
    step: int | None
    prompt: str
    token_ids: tuple[int, ...]  # the prompt as the model sees it, chat template included
    tokens: tuple[str, ...]  # their text (special tokens included)
    prompt_span: tuple[int, int]  # where the user's own words are in `tokens` (start, end)
    reply_ids: tuple[int, ...]  # the greedy reply, ending with the end token if it came
    reply: str  # its text
    predictions: tuple[Prediction, ...]  # one per reply token
    d_model: int
    positional: str  # how positions enter: learned, sinusoidal, rotary, none
    norm: str
    end_id: int  # the token that ends a reply
    attribution: str | None  # why contributions are missing (a post-LN model), else None

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.predictions[0].layers

    @property
    def next_token(self) -> tuple[Guess, ...]:
        return self.predictions[0].next_token

    @property
    def reply_tokens(self) -> tuple[str, ...]:
        return tuple(p.said.text for p in self.predictions)

    def context(self, i: int = 0) -> tuple[str, ...]:
        """The tokens the model had read when it predicted reply token i: the prompt, then what it had said."""
        return self.tokens + self.reply_tokens[:i]

    def context_ids(self, i: int = 0) -> tuple[int, ...]:
        return self.token_ids + self.reply_ids[:i]

    def captions(self, i: int = 0) -> list[Caption]:
        """The forward pass that predicted reply token i, in plain words (guppy.analysis.captions)."""
        return captions(self, i)

    def compare(self, later: "Explanation", models=None) -> Change:
        """What changed between this explanation and one of the same prompt at another step, and
        which components it came from; `models` (this one's, later's) saves loading them."""
        return compare(self, later, models)


def _prompt_span(tokenizer, ids: list[int], history) -> tuple[int, int]:
    """The user's words among the prompt's ids: what the template of an empty prompt does not share."""
    bare = tokenizer.encode_prompt("", history=history)
    start = _shared(ids, bare)
    tail = min(_shared(ids[::-1], bare[::-1]), len(ids) - start, len(bare) - start)
    return start, len(ids) - tail


def _shared(a: list[int], b: list[int]) -> int:
    """How many leading ids a and b share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _guesses(ids: torch.Tensor, probs: torch.Tensor, text) -> tuple[Guess, ...]:
    return tuple(Guess(int(i), text(int(i)), float(p)) for i, p in zip(ids, probs))


@torch.no_grad()
def explain_model(model, tokenizer, prompt: str, *, step: int | None = None, run: str = "", k: int = 5,
                  max_new_tokens: int = 32, history=()) -> Explanation:
    """`explain` for a loaded model and its tokenizer."""
    cfg = model.cfg
    ids = tokenizer.encode_prompt(prompt, history=history)
    if len(ids) >= cfg.n_ctx:
        raise ValueError(f"the prompt is {len(ids)} tokens with the chat template; this model reads at most "
                         f"{cfg.n_ctx}, and needs room for a reply")
    if k < 1 or max_new_tokens < 1:
        raise ValueError(f"k and max_new_tokens must be at least 1, got {k} and {max_new_tokens}")
    reply = generate(model, ids, max_new_tokens=min(max_new_tokens, cfg.n_ctx - len(ids)), temperature=0.0,
                     stop_token=tokenizer.end_id)
    seq, device = ids + reply, next(model.parameters()).device
    tokens = torch.tensor([seq[:-1]], device=device)  # the last reply token is only predicted, never read
    positions = torch.arange(len(ids) - 1, len(seq) - 1, device=device)  # (N,): where each reply token was predicted
    rows, targets = torch.zeros_like(positions), torch.tensor(reply, device=device)
    limit = attribution_limit(cfg)
    names = [*lens_points(cfg), "blocks.*.attn.hook_pattern", *([] if limit else attribution_hooks(model))]
    logits, cache = model.run_with_cache(tokens, names=names)
    text = _texts(tokenizer, cfg.d_vocab)
    top = logits[0, positions].float().softmax(-1).topk(k, -1)  # (N, k)
    lens_ids, lens_probs = (t.cpu() for t in lens_top(model, cache, positions, k, rows))  # (P, N, k)
    patterns = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, :, positions] for l in range(cfg.n_layers)])
    patterns = patterns.float().cpu().numpy()  # (L, H, N, T)
    patterns.setflags(write=False)  # each head's attention is a view of it; the dashboard shares one Explanation
    if limit:
        raw = vs = None
    else:
        raw, labels, raw_bias, _ = logit_attribution(model, cache, logits, positions, targets, rows)
        vs, _, vs_bias, _ = logit_attribution(model, cache, logits, positions, targets, rows, baseline="mean")
        raw, raw_bias, vs, vs_bias = (t.cpu() for t in (raw, raw_bias, vs, vs_bias))
        where = {label: j for j, label in enumerate(labels)}
    logits, top = logits[0].float().cpu(), (top.indices.cpu(), top.values.cpu())  # (T, V); (N, k) each

    def part(i: int, label: str) -> Contribution | None:
        if raw is None or label not in where:
            return None
        return Contribution(float(raw[i, where[label]]), float(vs[i, where[label]]))

    predictions = []
    for i, p in enumerate(positions.tolist()):
        layers = []
        for l in range(cfg.n_layers):
            heads = []
            for h in range(cfg.n_heads):
                att = patterns[l, h, i, :p + 1]
                order = np.argsort(-att, kind="stable")[:SOURCES]
                heads.append(Head(l, h, att, tuple((int(j), float(att[j])) for j in order), part(i, f"L{l}H{h}")))
            layers.append(Layer(l, tuple(heads), part(i, f"L{l} attn bias"), part(i, f"L{l} MLP"),
                                _guesses(lens_ids[l + 1, i], lens_probs[l + 1, i], text)))
        said = Guess(reply[i], text(reply[i]), float(logits[p].softmax(-1)[reply[i]]))
        total = Contribution(float(logits[p, reply[i]]), float(logits[p, reply[i]] - logits[p].mean()))
        predictions.append(Prediction(
            p, said, _guesses(top[0][i], top[1][i], text), _guesses(lens_ids[0, i], lens_probs[0, i], text),
            tuple(layers), part(i, "embed"), part(i, "pos_embed"),
            None if raw is None else Contribution(float(raw_bias[i]), float(vs_bias[i])), total))
    return Explanation(run, step, prompt, tuple(ids), tuple(text(t) for t in ids), _prompt_span(tokenizer, ids, history),
                       tuple(reply), tokenizer.decode(reply), tuple(predictions), cfg.d_model, cfg.positional,
                       cfg.norm, tokenizer.end_id, limit)


def _texts(tokenizer, d_vocab: int):
    """Token id -> its text, special tokens included; ids past the tokenizer's vocabulary as ⟨id⟩."""
    n = tokenizer.vocab_size

    def text(i: int) -> str:
        return tokenizer.decode([i], skip_special=False) if i < n else f"⟨{i}⟩"
    return text


def explain(run, prompt: str, step: int | str = "latest", *, k: int = 5, max_new_tokens: int = 32,
            history=()) -> Explanation:
    """How the model of `run` (a run folder or `guppy.open_run`'s Run) at checkpoint `step` (any
    checkpoint step, or 'latest') turns `prompt` into its greedy reply. `k` guesses are kept at each
    point; `history` is earlier (user, reply) turns, as guppy-chat keeps them."""
    from guppy.run.reader import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    if step == "latest":
        step = max(run.checkpoint_steps, default="latest")  # no checkpoint: run.model says so
    model = run.model(step)
    return explain_model(model, run.tokenizer, prompt, step=int(step), run=str(run.path), k=k,
                         max_new_tokens=max_new_tokens, history=history)
