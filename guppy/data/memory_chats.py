"""Multi-turn memory chats: the user tells the model something, talks of other things, asks it back.

    user: my name is bokelu.          model: hello bokelu. i am guppy.
    user: is the water cold?          model: the water is warm today. ...     (0 to 2 such turns)
    user: what is my name?            model: your name is bokelu. i remember.

A persona's `[memory.<kind>]` tables (see `guppy.data.persona.Memory`) say how the remembered item
is drawn and phrased. The item is drawn once per chat from pools of thousands (65,600 names,
2,976 foods, 990 numbers of flakes in the fish), so the last reply can only be right by copying
it from earlier in the chat: the task that rewards an induction head.

Splits without leaks, as for topics: a share of every kind's items is held out by a hash of the
item (an eval chat always recalls an item no train chat contains, anywhere in the chat), and a
share of the tell and ask templates is held out too (half of eval uses them). The filler turns
come from the ordinary topics' train templates only, so no held-out topic prompt is ever trained on.
Torch-free and deterministic for a seed; `guppy.data.dataset` turns these into `Chat`s.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from guppy.data.persona import Persona

MIN_TURNS, MAX_TURNS = 2, 4  # turns per memory chat: tell, 0-2 fillers, ask


def item_heldout(item: str, seed: int, fraction: float) -> bool:
    """Whether `item` belongs to the eval split: a hash of (seed, item), so the same for every
    chat, kind and process, and independent of how often the item is drawn."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{item}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _template_split(templates: Sequence[str], rng: random.Random, fraction: float) -> tuple[list[str], list[str]]:
    """(held out, kept): at least one of each."""
    t = list(dict.fromkeys(templates))
    rng.shuffle(t)
    n_held = min(max(1, round(len(t) * fraction)), len(t) - 1)
    return t[:n_held], t[n_held:]


def memory_chats(persona: Persona, kind: str, n_train: int, n_eval: int, seed: int, fraction: float,
                 fillers: dict[str, list[str]]) -> tuple[list[dict], list[dict]]:
    """(train, eval) chats of one memory kind, as dicts of `guppy.data.dataset.Chat` fields.

    `fillers` maps each ordinary topic to its train prompt templates: the turns between tell and
    ask are drawn from those (and the topic's replies). `fraction` is held out of the items and
    of the tell and ask templates."""
    m = persona.memory[kind]
    rng = random.Random(f"{seed}:memory:{kind}")
    held_tell, kept_tell = _template_split(m.tell, rng, fraction)
    held_ask, kept_ask = _template_split(m.ask, rng, fraction)
    topics = sorted(fillers)

    def draw_item(heldout: bool) -> str:
        for _ in range(10_000):
            item = persona.expand(rng.choice(m.item), rng)
            if item_heldout(item, seed, fraction) == heldout:
                return item
        raise ValueError(f"{persona.source}: memory.{kind}.item: too few distinct items to hold some out")

    def chat(heldout_item: bool, heldout_template: bool) -> dict:
        item = draw_item(heldout_item)
        tell = rng.choice(held_tell if heldout_template else kept_tell)
        ask = rng.choice(held_ask if heldout_template else kept_ask)
        turns = [(persona.fill(tell, item, rng), persona.sample_parts(m.ack, item, rng))]
        for _ in range(rng.randint(MIN_TURNS, MAX_TURNS) - 2):
            topic = rng.choice(topics)
            turns.append((persona.sample_prompt(rng.choice(fillers[topic]), rng), persona.sample_reply(topic, rng)))
        first = turns.pop(0)  # the tell goes anywhere before the ask: recall distance varies
        turns.insert(rng.randint(0, len(turns)), first)
        return {"topic": m.topic, "prompt": persona.fill(ask, item, rng),
                "reply": persona.sample_parts(m.answer, item, rng), "heldout_prompt": heldout_template,
                "history": tuple(turns), "recall": item}

    train = [chat(False, False) for _ in range(n_train)]
    evals = [chat(True, i < (n_eval + 1) // 2) for i in range(n_eval)]
    return train, evals
