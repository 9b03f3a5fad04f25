"""Persona files: who the model is, as data.

A persona is a TOML file (see `guppy/data/personas/fish.toml`) with word pools and, per topic,
the prompts a person might say, the keywords a good reply shows, and the reply as a
sequence of parts, each a list of alternatives. `{pool}` slots expand from the pools.
Swapping the character means pointing at another file; nothing here knows about fish.

Optional `[memory.<kind>]` tables describe multi-turn chats in which the model must recall
something the user said earlier: how the remembered `{item}` is drawn (templates over pools,
large enough that it must be copied from context, not memorised), the user turn that tells
it, the model's acknowledgement, the user turn that asks for it back, and the answer, in which
`{item}` must appear. `guppy.data.dataset` builds the chats (`DataConfig.memory_fraction`).

`load_persona` validates strictly: any mistake ends in one `PersonaError` line naming the
file, the place (`topics.food.reply[2][0]`) and what was expected.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PERSONA_DIR = Path(__file__).parent / "personas"
SLOT = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
ITEM = "item"  # the slot of a memory table that holds the remembered thing (never a pool name)
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class PersonaError(ValueError):
    """A persona file is missing, malformed or inconsistent; the message is one line."""


@dataclass(frozen=True)
class Topic:
    name: str
    keywords: tuple[str, ...]
    prompts: tuple[str, ...]
    reply: tuple[tuple[str, ...], ...]  # parts, each a tuple of alternatives ("" = skip)


@dataclass(frozen=True)
class Memory:
    """One kind of thing to remember (`[memory.<kind>]`): a chat tells it, later asks it back."""

    kind: str
    item: tuple[str, ...]  # templates that draw the remembered thing ({pool} slots)
    tell: tuple[str, ...]  # user turns that say it: templates with {item}
    ack: tuple[tuple[str, ...], ...]  # the model's reply to the tell, as parts ({item} allowed)
    ask: tuple[str, ...]  # user turns that ask for it back (no {item}: it must come from context)
    answer: tuple[tuple[str, ...], ...]  # the reply, as parts; one part says {item} in every alternative

    @property
    def topic(self) -> str:
        """The chats' topic label: `recall_<kind>` (kept apart from the persona's own topics)."""
        return f"recall_{self.kind}"


@dataclass(frozen=True)
class Persona:
    name: str
    description: str
    pools: dict[str, tuple[str, ...]]
    topics: dict[str, Topic]
    source: str
    digest: str  # sha256 of the file's bytes: names caches built from this persona
    memory: dict[str, Memory] = field(default_factory=dict)  # kind -> Memory; empty without [memory]

    def expand(self, template: str, rng: random.Random) -> str:
        """Fill every `{pool}` slot (recursively) with a random entry of that pool."""
        return SLOT.sub(lambda m: self.expand(rng.choice(self.pools[m.group(1)]), rng), template)

    def sample_prompt(self, template: str, rng: random.Random) -> str:
        return " ".join(self.expand(template, rng).split()).strip(" ,")

    def sample_reply(self, topic: str, rng: random.Random) -> str:
        parts = (self.expand(rng.choice(alts), rng) for alts in self.topics[topic].reply)
        return " ".join(" ".join(p for p in parts if p).split())

    def fill(self, template: str, item: str, rng: random.Random) -> str:
        """A memory template with `{item}` set to `item` and every other slot expanded."""
        return self.sample_prompt(template.replace("{" + ITEM + "}", item), rng)

    def sample_parts(self, parts: tuple[tuple[str, ...], ...], item: str, rng: random.Random) -> str:
        """One alternative per part (memory replies), `{item}` set, joined by spaces."""
        return " ".join(p for p in (self.fill(rng.choice(alts), item, rng) for alts in parts) if p)

    def item_space(self, kind: str) -> int:
        """How many distinct items a memory kind can draw."""
        return sum(self.count(t) for t in self.memory[kind].item)

    def count(self, template: str) -> int:
        """How many distinct fillings a template has (an upper bound on distinct strings)."""
        return math.prod(sum(self.count(e) for e in self.pools[s]) for s in SLOT.findall(template))

    def reply_space(self, topic: str) -> int:
        """How many replies the topic's parts can compose."""
        return math.prod(sum(self.count(a) for a in alts) for alts in self.topics[topic].reply)


def persona_path(name_or_path: str | Path) -> Path:
    """A shipped persona by name (`fish`) or any `.toml` file by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    shipped = PERSONA_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(f.stem for f in PERSONA_DIR.glob("*.toml")))
    raise PersonaError(f"{name_or_path}: no such persona; expected a .toml path or one of: {names}")


def list_personas() -> list[str]:
    return sorted(f.stem for f in PERSONA_DIR.glob("*.toml"))


def load_persona(name_or_path: str | Path) -> Persona:
    path = persona_path(name_or_path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PersonaError(f"{path}: cannot read persona file ({e.strerror})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PersonaError(f"{path}: bad TOML syntax: {e}") from None
    return _Validator(str(path)).persona(doc, hashlib.sha256(raw).hexdigest())


class _Validator:
    """Turns a parsed TOML document into a Persona, or fails naming the place."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, place: str, expected: str):
        raise PersonaError(f"{self.source}: {place}: {expected}")

    def table(self, doc: dict, key: str, place: str = "") -> dict:
        where = f"{place}.{key}" if place else key
        if key not in doc:
            self.fail(where, "missing; expected a table" if not place else "missing key")
        if not isinstance(doc[key], dict):
            self.fail(where, "expected a table")
        return doc[key]

    def text(self, value, place: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(place, f"expected a string, got {type(value).__name__}")
        if not value.strip() and not allow_empty:
            self.fail(place, "expected non-empty text")
        if value != value.lower():
            self.fail(place, f"expected lowercase text, got {value!r}")
        return value

    def strings(self, value, place: str, allow_empty: bool = False) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            self.fail(place, "expected a non-empty list of strings")
        return tuple(self.text(v, f"{place}[{i}]", allow_empty) for i, v in enumerate(value))

    def template(self, value: str, place: str, pools) -> None:
        for name in SLOT.findall(value):
            if name not in pools:
                known = ", ".join(sorted(pools)) or "none defined"
                self.fail(place, f"unknown pool {{{name}}}; expected one of: {known}")
        if "{" in SLOT.sub("", value) or "}" in SLOT.sub("", value):
            self.fail(place, f"bad template syntax in {value!r}; expected only {{pool_name}} slots")

    def persona(self, doc: dict, digest: str) -> Persona:
        head = self.table(doc, "persona")
        for key in ("name", "description"):
            if key not in head:
                self.fail(f"persona.{key}", "missing key")
        name = self.text(head["name"], "persona.name")
        description = self.text(head["description"], "persona.description")

        raw_pools = doc.get("pools", {})
        if not isinstance(raw_pools, dict):
            self.fail("pools", "expected a table of lists")
        pools = {}
        for pool, entries in raw_pools.items():
            if not _NAME.match(pool):
                self.fail(f"pools.{pool}", "expected a pool name of lowercase letters, digits, _")
            pools[pool] = self.strings(entries, f"pools.{pool}", allow_empty=True)  # "" = optional word
        for pool, entries in pools.items():
            for i, entry in enumerate(entries):
                self.template(entry, f"pools.{pool}[{i}]", pools)
        self.no_cycles(pools)

        raw_topics = self.table(doc, "topics")
        if not raw_topics:
            self.fail("topics", "expected at least one [topics.<name>] table")
        topics = {}
        for tname, t in raw_topics.items():
            place = f"topics.{tname}"
            if not isinstance(t, dict):
                self.fail(place, "expected a table with keywords, prompts and reply")
            for key in ("keywords", "prompts", "reply"):
                if key not in t:
                    self.fail(f"{place}.{key}", "missing key")
            extra = set(t) - {"keywords", "prompts", "reply"}
            if extra:
                self.fail(f"{place}.{sorted(extra)[0]}", "unknown key; expected keywords, prompts, reply")
            keywords = self.strings(t["keywords"], f"{place}.keywords")
            prompts = self.strings(t["prompts"], f"{place}.prompts")
            for i, p in enumerate(prompts):
                self.template(p, f"{place}.prompts[{i}]", pools)
            if not isinstance(t["reply"], list) or not t["reply"]:
                self.fail(f"{place}.reply", "expected a non-empty list of parts (lists of alternatives)")
            parts = []
            for j, alts in enumerate(t["reply"]):
                part = self.strings(alts, f"{place}.reply[{j}]", allow_empty=True)
                for i, a in enumerate(part):
                    self.template(a, f"{place}.reply[{j}][{i}]", pools)
                parts.append(part)
            if all(not a.strip() for part in parts for a in part):
                self.fail(f"{place}.reply", "expected at least one non-empty alternative")
            topics[tname] = Topic(tname, keywords, prompts, tuple(parts))
        memory = self.memory(doc.get("memory", {}), pools, topics)
        return Persona(name, description, pools, topics, self.source, digest, memory)

    def memory(self, raw, pools, topics) -> dict[str, Memory]:
        if not isinstance(raw, dict):
            self.fail("memory", "expected [memory.<kind>] tables")
        if ITEM in pools:
            self.fail(f"pools.{ITEM}", f"{{{ITEM}}} is the remembered thing of [memory] tables; rename the pool")
        with_item = {**pools, ITEM: ()}
        out = {}
        for kind, m in raw.items():
            place = f"memory.{kind}"
            if not _NAME.match(kind) or not isinstance(m, dict):
                self.fail(place, "expected a table named by lowercase letters, digits, _")
            keys = ("item", "tell", "ack", "ask", "answer")
            for key in keys:
                if key not in m:
                    self.fail(f"{place}.{key}", "missing key")
            extra = set(m) - set(keys)
            if extra:
                self.fail(f"{place}.{sorted(extra)[0]}", f"unknown key; expected {', '.join(keys)}")
            if f"recall_{kind}" in topics:
                self.fail(place, f"its chats are labelled recall_{kind}, which is already a topic")
            item = self.strings(m["item"], f"{place}.item")
            for i, t in enumerate(item):
                self.template(t, f"{place}.item[{i}]", pools)  # no {item} inside an item
            tell, ask = self.strings(m["tell"], f"{place}.tell"), self.strings(m["ask"], f"{place}.ask")
            for i, t in enumerate(tell):
                self.template(t, f"{place}.tell[{i}]", with_item)
                if "{item}" not in t:
                    self.fail(f"{place}.tell[{i}]", "expected {item}: the user turn must say what to remember")
            for i, t in enumerate(ask):
                if "{item}" in t:
                    self.fail(f"{place}.ask[{i}]", "must not say {item}: the answer has to come from earlier turns")
                self.template(t, f"{place}.ask[{i}]", pools)
            for key, n in (("tell", len(set(tell))), ("ask", len(set(ask)))):
                if n < 2:
                    self.fail(f"{place}.{key}", "expected at least 2 distinct templates to hold one out")
            ack, answer = (self.parts(m[k], f"{place}.{k}", with_item) for k in ("ack", "answer"))
            if not any(all("{item}" in a for a in part) for part in answer):
                self.fail(f"{place}.answer", "expected a part whose every alternative says {item}")
            out[kind] = Memory(kind, item, tell, ack, ask, answer)
        return out

    def parts(self, value, place: str, pools) -> tuple[tuple[str, ...], ...]:
        if not isinstance(value, list) or not value:
            self.fail(place, "expected a non-empty list of parts (lists of alternatives)")
        parts = []
        for j, alts in enumerate(value):
            part = self.strings(alts, f"{place}[{j}]", allow_empty=True)
            for i, a in enumerate(part):
                self.template(a, f"{place}[{j}][{i}]", pools)
            parts.append(part)
        return tuple(parts)

    def no_cycles(self, pools: dict[str, tuple[str, ...]]) -> None:
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done

        def visit(pool: str, path: list[str]):
            if state.get(pool) == 2:
                return
            if state.get(pool) == 1:
                self.fail(f"pools.{pool}", "pool refers to itself through " + " -> ".join(path + [pool]))
            state[pool] = 1
            for entry in pools[pool]:
                for ref in SLOT.findall(entry):
                    visit(ref, path + [pool])
            state[pool] = 2

        for pool in pools:
            visit(pool, [])
