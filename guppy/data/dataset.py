"""The fish's data: synthetic chats from a persona, split, tokenized, batched.

    persona file --iter_topic_chats--> chats, a topic at a time --tokenize--> TokenArrays (on disk)

Splits: a share of every topic's prompt templates is held out entirely (eval only), and no
(prompt, reply) pair of the eval split appears in train. With `memory_fraction`, that share of
the chats are multi-turn memory chats (`guppy.data.memory_chats`), whose eval items never occur in
train. With `copy_fraction`, that share are say-it-back chats made of random token ids
(`guppy.data.copy_chats`, train only). Token arrays live on disk as flat `.npy` files (memory-mapped), keyed by the persona's
content, seed and sizes, so a second run starts instantly and a changed persona invalidates the cache.

Building streams: chats are written to disk as each topic is generated, then tokenized in
chunks and appended to the token files, so memory holds one topic, one chunk and the eval
split, not the dataset (`benchmarks/bench_data.py` measures it at 1x and 10x the default).
Training reads the memory-mapped arrays and the eval chats only; the train chats stay on disk.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from guppy.data.copy_chats import COPY_TOPIC, FRAMES, MAX_TOKENS, MIN_TOKENS, copy_chats
from guppy.data.memory_chats import memory_chats
from guppy.data.persona import Persona, load_persona
from guppy.data.tokenizer import ChatTokenizer, train_tokenizer
from guppy.run.format import TOKENIZER_JSON

CACHE_VERSION = 3  # 3: chats carry history and recall (multi-turn memory chats)
TOKENIZER_SAMPLE = 60_000  # train chats the tokenizer learns from, at most: equal shares of every topic
ENCODE_CHUNK = 5_000  # train chats tokenized at a time while streaming to disk (~40 MB of Python objects)


@dataclass(frozen=True)
class DataConfig:
    persona: str = "fish"  # a shipped persona name or a path to a .toml file
    n_chats: int = 60_000
    seed: int = 0
    eval_fraction: float = 0.05
    heldout_prompt_fraction: float = 0.15  # share of each topic's prompt templates kept out of train
    vocab_size: int = 4096
    memory_fraction: float = 0.0  # share of chats that are multi-turn memory chats (the persona's [memory])
    memory_kinds: str = ""  # comma-separated [memory.<kind>] names to use; "" = all of them
    copy_fraction: float = 0.0  # share of chats that are say-it-back chats of random token ids (train only)

    def __post_init__(self):
        if self.n_chats < 1:
            raise ValueError(f"n_chats must be >= 1, got {self.n_chats}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if not 0 < self.heldout_prompt_fraction < 1:
            raise ValueError(f"heldout_prompt_fraction must be in (0, 1), got {self.heldout_prompt_fraction}")
        if not 0 <= self.memory_fraction < 1:
            raise ValueError(f"memory_fraction must be in [0, 1), got {self.memory_fraction}")
        if not 0 <= self.copy_fraction < 1 - self.memory_fraction:
            raise ValueError(f"copy_fraction must be in [0, 1 - memory_fraction), got {self.copy_fraction}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials + merges), got {self.vocab_size}")


def data_config(cfg) -> DataConfig:
    """The data a TrainConfig trains on (its persona, chats, seed, tokenizer size, memory chats)."""
    from guppy.config import model_preset

    vocab = cfg.vocab_size or model_preset(cfg.preset).d_vocab
    return DataConfig(persona=cfg.persona, n_chats=cfg.n_chats, seed=cfg.data_seed, vocab_size=vocab,
                      memory_fraction=cfg.memory_fraction, memory_kinds=cfg.memory_kinds,
                      copy_fraction=cfg.copy_fraction)


@dataclass(frozen=True)
class Chat:
    topic: str
    prompt: str
    reply: str
    heldout_prompt: bool = False  # the prompt's template never appears in train
    history: tuple[tuple[str, str], ...] = ()  # earlier (user, assistant) turns of a multi-turn chat
    recall: str = ""  # memory chats: the item told earlier that the reply must repeat

    def __post_init__(self):  # JSON gives lists: keep chats comparable and hashable
        object.__setattr__(self, "history", tuple(tuple(turn) for turn in self.history))


@dataclass(frozen=True)
class Chats:
    train: Sequence[Chat]  # a list, or a ChatFile when the dataset comes from disk
    eval: list[Chat]


def iter_topic_chats(persona: Persona, cfg: DataConfig) -> Iterator[tuple[str, list[Chat], list[Chat]]]:
    """(topic, train chats, eval chats) for one topic after another: equal chats per topic,
    deterministic for `cfg.seed`.

    Eval takes, per topic, half its chats from held-out prompt templates and half from
    train templates with replies never paired with that prompt in train.
    """
    topics = list(persona.topics)
    if cfg.memory_fraction and not persona.memory:
        raise ValueError(f"{persona.source}: memory_fraction {cfg.memory_fraction} asks for memory chats, "
                         "but the persona has no [memory.<kind>] tables")
    n_memory = round(cfg.n_chats * cfg.memory_fraction)
    base, extra = divmod(cfg.n_chats - n_memory - n_copy_chats(cfg), len(topics))
    fillers = {}
    for i, name in enumerate(topics):
        n = base + (i < extra)
        n_eval = max(1, round(n * cfg.eval_fraction)) if n > 1 else 0
        train, evals = _topic_chats(persona, name, n - n_eval, n_eval, cfg)
        fillers[name] = _template_split(persona, name, cfg, random.Random(f"{cfg.seed}:{name}"))[1]
        yield name, train, evals
    if not n_memory:
        return
    kinds = memory_kinds(persona, cfg)
    base, extra = divmod(n_memory, len(kinds))
    for i, kind in enumerate(kinds):
        n = base + (i < extra)
        n_eval = max(1, round(n * cfg.eval_fraction)) if n > 1 else 0
        train, evals = memory_chats(persona, kind, n - n_eval, n_eval, cfg.seed, cfg.heldout_prompt_fraction, fillers)
        yield persona.memory[kind].topic, [Chat(**c) for c in train], [Chat(**c) for c in evals]


def memory_kinds(persona: Persona, cfg: DataConfig) -> list[str]:
    """The memory kinds `cfg` asks for, in the persona's order (all of them by default)."""
    asked = [k.strip() for k in cfg.memory_kinds.split(",") if k.strip()]
    unknown = [k for k in asked if k not in persona.memory]
    if unknown:
        raise ValueError(f"memory_kinds: {unknown[0]!r} is not a [memory.<kind>] table of {persona.source}; "
                         f"expected some of: {', '.join(persona.memory) or 'none defined'}")
    return [k for k in persona.memory if not asked or k in asked]


def n_copy_chats(cfg: DataConfig) -> int:
    """How many of `cfg`'s chats are say-it-back chats (`guppy.data.copy_chats`)."""
    return round(cfg.n_chats * cfg.copy_fraction)


def chat_topics(persona: Persona, cfg: DataConfig) -> list[str]:
    """Every topic label the chats carry: the persona's topics, then `recall_<kind>` per memory kind,
    then `say_back` with say-it-back chats."""
    memory = [persona.memory[k].topic for k in memory_kinds(persona, cfg)] if cfg.memory_fraction else []
    return list(persona.topics) + memory + ([COPY_TOPIC] if n_copy_chats(cfg) else [])


def generate_chats(persona: Persona, cfg: DataConfig) -> Chats:
    """Every chat in memory, each split shuffled: for small sets (`load_dataset` streams to disk).
    Say-it-back chats need the tokenizer: only `build_dataset` makes them."""
    train, evals = [], []
    for _, tr, ev in iter_topic_chats(persona, cfg):
        train += tr
        evals += ev
    rng = random.Random(f"{cfg.seed}:order")
    rng.shuffle(train)
    rng.shuffle(evals)
    return Chats(train, evals)


class ChatFile(Sequence):
    """Chats stored as JSON lines, read when asked for: training needs only the token arrays, so
    the train split's text costs no memory. Iterating streams; indexing seeks to the line."""

    def __init__(self, path: Path, n: int):
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such chats file")
        self.path, self.n, self._starts = Path(path), n, None

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Chat]:
        with open(self.path) as f:
            for line in f:
                yield Chat(**json.loads(line))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        i = range(self.n)[i]  # negative indices, IndexError past the end
        if self._starts is None:  # byte offset of every line, 8 bytes a chat
            with open(self.path, "rb") as f:
                self._starts = np.cumsum([0, *(len(line) for line in f)], dtype=np.int64)
        with open(self.path, "rb") as f:
            f.seek(int(self._starts[i]))
            return Chat(**json.loads(f.readline()))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None


def _template_split(persona: Persona, topic: str, cfg: DataConfig, rng: random.Random) -> tuple[list[str], list[str]]:
    """(held-out, kept) prompt templates of a topic, shuffled by `rng`."""
    templates = list(dict.fromkeys(persona.topics[topic].prompts))
    rng.shuffle(templates)
    n_held = max(1, round(len(templates) * cfg.heldout_prompt_fraction))
    if n_held >= len(templates):
        raise ValueError(f"{persona.source}: topics.{topic}.prompts: expected at least 2 distinct prompts to hold one out")
    return templates[:n_held], templates[n_held:]


def _topic_chats(persona: Persona, topic: str, n_train: int, n_eval: int, cfg: DataConfig):
    rng = random.Random(f"{cfg.seed}:{topic}")
    held, kept = _template_split(persona, topic, cfg, rng)

    train = [Chat(topic, persona.sample_prompt(rng.choice(kept), rng), persona.sample_reply(topic, rng))
             for _ in range(n_train)]
    train_prompts = {c.prompt for c in train}
    train_pairs = {(c.prompt, c.reply) for c in train}

    evals, seen = [], set()
    n_held_eval = (n_eval + 1) // 2
    for attempt in range(50 * n_eval + 100):
        if len(evals) == n_eval:
            break
        from_held = len(evals) < n_held_eval
        prompt = persona.sample_prompt(rng.choice(held if from_held else kept), rng)
        pair = (prompt, persona.sample_reply(topic, rng))
        if pair in train_pairs or pair in seen or (from_held and prompt in train_prompts):
            continue
        seen.add(pair)
        evals.append(Chat(topic, *pair, heldout_prompt=from_held))
    else:
        raise ValueError(f"{persona.source}: topics.{topic}: too few distinct prompts/replies to build a held-out split")
    return train, evals


# ---- token arrays ---------------------------------------------------------------------------


@dataclass
class TokenArrays:
    """One split as flat arrays: chat i is tokens[offsets[i]:offsets[i+1]]."""

    tokens: np.ndarray  # (N_tokens,) uint16
    offsets: np.ndarray  # (N_chats + 1,) int64
    reply_start: np.ndarray  # (N_chats,) int32, index within the chat of the reply's first token
    topic: np.ndarray  # (N_chats,) int16, index into the persona's topic list

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @functools.cached_property
    def lengths(self) -> np.ndarray:  # (N_chats,) int64, in memory: batching reads it every step
        return np.diff(self.offsets)

    def chat(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    FIELDS = ("tokens", "offsets", "reply_start", "topic")

    @classmethod
    def load(cls, folder: Path, split: str, mmap: bool = True) -> "TokenArrays":
        mode = "r" if mmap else None
        return cls(*(np.load(folder / f"{split}.{f}.npy", mmap_mode=mode) for f in cls.FIELDS))


def _joined(parts: list[np.ndarray], dtype) -> np.ndarray:
    """Arrays gathered a chunk or topic at a time, as one; an empty array of `dtype` for none."""
    return np.concatenate([np.zeros(0, dtype), *parts])


class TokenWriter:
    """Appends tokenized chats to one split's `.npy` files a chunk at a time: the tokens go
    straight to disk, only the per-chat arrays (14 bytes a chat) wait in memory for `close`."""

    def __init__(self, folder: Path, split: str):
        self.folder, self.split = Path(folder), split
        self.raw_path = self.folder / f".{split}.tokens.raw"
        self.raw = open(self.raw_path, "wb")
        self.lengths, self.reply_start, self.topic = [], [], []

    def append(self, ids: list[list[int]], reply_start: list[int], topic: list[int]) -> None:
        self.raw.write(np.fromiter(itertools.chain.from_iterable(ids), np.uint16).tobytes())
        self.lengths.append(np.fromiter(map(len, ids), np.int64, len(ids)))
        self.reply_start.append(np.asarray(reply_start, np.int32))
        self.topic.append(np.asarray(topic, np.int16))

    def close(self) -> None:
        self.raw.close()
        lengths = _joined(self.lengths, np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        with open(self.folder / f"{self.split}.tokens.npy", "wb") as out, open(self.raw_path, "rb") as raw:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint16)), "fortran_order": False,
                      "shape": (int(offsets[-1]),)}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, 1 << 22)
        self.raw_path.unlink()
        np.save(self.folder / f"{self.split}.offsets.npy", offsets)
        np.save(self.folder / f"{self.split}.reply_start.npy", _joined(self.reply_start, np.int32))
        np.save(self.folder / f"{self.split}.topic.npy", _joined(self.topic, np.int16))


@dataclass
class Dataset:
    """Everything training needs: the persona, chats, tokenizer, token arrays and stats.
    The token arrays are memory-mapped and `chats.train` is read from disk only if asked for."""

    config: DataConfig
    persona: Persona
    chats: Chats
    tokenizer: ChatTokenizer
    train: TokenArrays
    eval: TokenArrays
    stats: dict
    cache_dir: Path | None

    @property
    def topics(self) -> list[str]:
        return chat_topics(self.persona, self.config)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GUPPY_CACHE_DIR", Path.home() / ".cache" / "guppy"))


def cache_key(persona: Persona, cfg: DataConfig) -> str:
    import tokenizers

    d = asdict(cfg) | {"persona": None}
    if not cfg.copy_fraction:  # the caches of before the field keep their keys
        del d["copy_fraction"]
    else:
        d["copy_tokens"] = [MIN_TOKENS, MAX_TOKENS, *FRAMES]
    blob = json.dumps([CACHE_VERSION, persona.digest, d, tokenizers.__version__])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_dataset(cfg: DataConfig = DataConfig(), cache_dir: str | Path | None = None, use_cache: bool = True) -> Dataset:
    """Generate (or load from cache) the chats, tokenizer and token arrays for `cfg`. Without the
    cache the dataset is built in a temporary folder that goes away with the Dataset."""
    persona = load_persona(cfg.persona)
    if not use_cache:
        tmp = Path(tempfile.mkdtemp(prefix="guppy-data-"))
        try:
            build_dataset(persona, cfg, tmp)
            ds = _read_cache(tmp, cfg, persona)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ds.cache_dir = None
        weakref.finalize(ds, shutil.rmtree, tmp, ignore_errors=True)
        return ds
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / f"{persona.name}-{cache_key(persona, cfg)}"
    if (folder / "meta.json").exists():
        try:
            return _read_cache(folder, cfg, persona)
        except (OSError, ValueError, KeyError) as e:  # corrupt cache: rebuild it
            print(f"guppy: rebuilding unreadable data cache {folder} ({e})")
            shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    try:
        build_dataset(persona, cfg, tmp)
        os.rename(tmp, folder)  # whole or not at all: a crash never leaves half a cache
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (isinstance(e, OSError) and (folder / "meta.json").exists()):  # else: another writer won a race
            raise
    return _read_cache(folder, cfg, persona)


def build_dataset(persona: Persona, cfg: DataConfig, folder: Path) -> dict:
    """Generate, tokenize and write the dataset for `cfg` into `folder`; returns its statistics.

    Train chats are written as each topic is generated (in topic order: batching shuffles), then
    tokenized ENCODE_CHUNK at a time; eval chats (a few percent) are shuffled in memory, so the
    first of them, the ones training evaluates on, mix every topic. The tokenizer learns from at
    most TOKENIZER_SAMPLE train chats, the first of every topic in equal shares: from all of them
    up to the default 60,000 chats, from a sample beyond.
    """
    folder = Path(folder)
    t0 = time.perf_counter()
    share = math.ceil(TOKENIZER_SAMPLE / len(chat_topics(persona, cfg)))
    sample, evals, chat_stats = [], [], _ChatStats()
    with open(folder / "train.chats.jsonl", "w") as f:
        for _, train, ev in iter_topic_chats(persona, cfg):
            f.writelines(json.dumps(asdict(c)) + "\n" for c in train)
            sample += [chat_text(c) for c in train[:share]]
            evals += ev
            chat_stats.add(train)
    random.Random(f"{cfg.seed}:order").shuffle(evals)
    t1 = time.perf_counter()
    tok = train_tokenizer(sample, cfg.vocab_size)
    tok.save(folder / TOKENIZER_JSON)
    n_sample = len(sample)
    del sample
    t2 = time.perf_counter()
    topic_index = {t: i for i, t in enumerate(chat_topics(persona, cfg))}

    def encode(split: str, chats: Iterator[Chat]) -> TokenWriter:
        writer = TokenWriter(folder, split)
        for chunk in iter(lambda: list(itertools.islice(chats, ENCODE_CHUNK)), []):
            ids, starts = tok.encode_chats([c.prompt for c in chunk], [c.reply for c in chunk],
                                           [c.history for c in chunk])
            writer.append(ids, starts, [topic_index[c.topic] for c in chunk])
        return writer

    writer = encode("train", iter(ChatFile(folder / "train.chats.jsonl", chat_stats.n_train)))
    if n_copy := n_copy_chats(cfg):  # made of ids, after the text chats: appended as ids, their text for reading
        ids, starts, copies = copy_chats(tok, n_copy, cfg.seed)
        writer.append(ids, starts, [topic_index[COPY_TOPIC]] * n_copy)
        with open(folder / "train.chats.jsonl", "a") as f:
            f.writelines(json.dumps(asdict(Chat(**c))) + "\n" for c in copies)
        chat_stats.add([Chat(**c) for c in copies])
    writer.close()
    encode("eval", iter(evals)).close()
    with open(folder / "eval.chats.jsonl", "w") as f:
        f.writelines(json.dumps(asdict(c)) + "\n" for c in evals)
    t3 = time.perf_counter()
    n_kinds = len(chat_topics(persona, cfg)) - len(persona.topics)
    stats = {"persona": persona.name, "topics": len(persona.topics), "memory_kinds": n_kinds, **chat_stats.result(evals),
             **_token_stats(TokenArrays.load(folder, "train"), TokenArrays.load(folder, "eval"), tok.vocab_size),
             "tokenizer_sample_chats": n_sample,
             "seconds_generate": round(t1 - t0, 3), "seconds_tokenizer": round(t2 - t1, 3),
             "seconds_encode": round(t3 - t2, 3)}
    (folder / "meta.json").write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=1))
    return stats


def chat_text(c: Chat) -> str:
    """A chat's text without special tokens: what the tokenizer learns from."""
    return "\n".join(f"user\n{u}\nassistant\n{a}" for u, a in (*c.history, (c.prompt, c.reply)))


def _read_cache(folder: Path, cfg: DataConfig, persona: Persona) -> Dataset:
    meta = json.loads((folder / "meta.json").read_text())
    with open(folder / "eval.chats.jsonl") as f:
        evals = [Chat(**json.loads(line)) for line in f]
    tok = ChatTokenizer.load(folder / TOKENIZER_JSON)
    train, eval_arrays = TokenArrays.load(folder, "train"), TokenArrays.load(folder, "eval")
    if len(train) != meta["stats"]["chats_train"] or len(eval_arrays) != len(evals):
        raise ValueError("token arrays and chats disagree in length")
    chats = Chats(ChatFile(folder / "train.chats.jsonl", len(train)), evals)
    return Dataset(cfg, persona, chats, tok, train, eval_arrays, meta["stats"], folder)


# ---- batching -------------------------------------------------------------------------------


def random_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One pass over `n` chats in random draws of `batch_size` (the last one shorter): every index
    once. The Trainer's optimizer steps are these draws, so no step is a sample biased by length
    (and with length, by topic and template, as the length-bucketed batches of before were)."""
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def sorted_parts(idx: np.ndarray, lengths: np.ndarray, parts: int) -> list[np.ndarray]:
    """The chats `idx` of one step as `parts` forward passes: sorted by length and cut into parts
    of (nearly) equal size, so each pads only to its own longest chat. The step's gradient is the
    same sum however it is cut."""
    ordered = idx[np.argsort(lengths[idx], kind="stable")]
    return np.array_split(ordered, min(parts, len(ordered)))


# What one more forward and backward pass costs beyond its tokens, in padded tokens: measured on the
# 2-core AMD EPYC (fp32), a step of 32 chats of the induction recipe (55% padding in one pass) took
# 245-260 ms in one pass, 138-176 ms in 3 sorted passes and 142-161 ms cut by this cost (5 passes,
# 11% padding); a step of 64 reference chats 1,649 ms in one pass, 1,324 ms cut (3 passes, 8%)
PASS_TOKENS = 128


def step_passes(idx: np.ndarray, lengths: np.ndarray, max_rows: int, pass_tokens: int = PASS_TOKENS) -> list[np.ndarray]:
    """The chats `idx` of one optimizer step as the forward passes that cost least: sorted by
    length and cut where padding costs more than another pass (`pass_tokens`), each pass at most
    `max_rows` chats (the micro-batch the run asked for: a bound on memory). A pass costs its rows
    times its longest chat, plus `pass_tokens`; the cut is the exact minimum (dynamic programming
    over the sorted lengths). The step's gradient is the same sum however it is cut, so the cut
    changes speed, not what is learned (to float rounding)."""
    ordered = idx[np.argsort(lengths[idx], kind="stable")]
    n = len(ordered)
    if n == 0:
        return []
    longest = lengths[ordered].astype(np.int64)
    cost = np.full(n + 1, np.inf)
    cost[0] = 0.0
    start = np.zeros(n + 1, np.int64)
    for j in range(1, n + 1):  # cost[j]: the cheapest cut of the j shortest chats
        i = np.arange(max(0, j - max_rows), j)
        c = cost[i] + (j - i) * longest[j - 1] + pass_tokens
        k = int(np.argmin(c))
        cost[j], start[j] = c[k], i[k]
    bounds, j = [n], n
    while j > 0:
        j = int(start[j])
        bounds.append(j)
    bounds.reverse()
    return [ordered[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of a padded batch's positions that are padding, over all batches."""
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - float(sum(int(lengths[b].sum()) for b in batches)) / padded


def collate(split: TokenArrays, idx: np.ndarray, pad_id: int, n_ctx: int, reply_only: bool = True):
    """Pad a batch to its longest chat (at most n_ctx + 1 tokens).

    Returns (inputs (B, T) int64, targets (B, T) int64, loss_mask (B, T) bool): targets are
    inputs shifted by one; the mask covers the reply and its end token (or every real token
    when `reply_only` is False) and never padding.
    """
    lengths = np.minimum(split.lengths[idx], n_ctx + 1)
    T = int(lengths.max())
    seq = np.full((len(idx), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(idx), T), dtype=bool)
    for row, (i, n) in enumerate(zip(idx, lengths)):
        seq[row, :n] = split.chat(int(i))[:n]
        first = int(split.reply_start[i]) if reply_only else 1
        mask[row, max(first, 1):n] = True  # positions whose token is predicted
    return seq[:, :-1], seq[:, 1:], mask[:, 1:]


def count_targets(split: TokenArrays, idx: np.ndarray, n_ctx: int, reply_only: bool = True) -> int:
    """How many positions `collate` would put in the loss mask for these chats, without collating
    them: every rank can count the targets of the whole global batch from the arrays alone."""
    lengths = np.minimum(split.lengths[idx], n_ctx + 1)
    first = np.maximum(split.reply_start[idx], 1) if reply_only else 1
    return int(np.maximum(lengths - first, 0).sum())


# ---- statistics -----------------------------------------------------------------------------


class _ChatStats:
    """Chat statistics gathered a topic at a time; prompts and pairs are kept as 64-bit hashes
    (8 bytes a chat), enough to count distinct ones and to check the eval split against train."""

    def __init__(self):
        self.n_train, self.unique_replies, self.prompts, self.pairs = 0, [], [], []
        self.items: set[str] = set()  # memory chats' recalled items (a few thousand strings)

    def add(self, train: list[Chat]) -> None:
        self.n_train += len(train)
        self.unique_replies.append(len({c.reply for c in train}))
        self.prompts.append(np.fromiter((hash(c.prompt) for c in train), np.int64, len(train)))
        self.pairs.append(np.fromiter((hash((c.prompt, c.reply)) for c in train), np.int64, len(train)))
        self.items.update(c.recall for c in train if c.recall)

    def result(self, evals: list[Chat]) -> dict:
        prompts, pairs = (np.unique(_joined(x, np.int64)) for x in (self.prompts, self.pairs))
        held = np.unique(np.array([hash(c.prompt) for c in evals if c.heldout_prompt], np.int64))
        eval_pairs = np.array([hash((c.prompt, c.reply)) for c in evals], np.int64)
        uniq = sorted(self.unique_replies)
        return {
            "chats_train": self.n_train,
            "chats_eval": len(evals),
            "unique_replies_per_topic_min": uniq[0],
            "unique_replies_per_topic_median": uniq[len(uniq) // 2],
            "unique_replies_per_topic_max": uniq[-1],
            "unique_prompts_train": len(prompts),
            "heldout_prompts": len(held),
            "eval_pairs_in_train": int(np.isin(eval_pairs, pairs).sum()),
            "heldout_prompts_in_train": int(np.isin(held, prompts).sum()),
            "memory_chats_eval": sum(bool(c.recall) for c in evals),
            "memory_eval_items_in_train": sum(c.recall in self.items for c in evals if c.recall),
        }


def _token_stats(train: TokenArrays, evals: TokenArrays, vocab_size: int) -> dict:
    lengths = train.lengths
    counts = np.zeros(1 << 16, np.int64)
    for s in range(0, len(train.tokens), 1 << 20):  # a chunk at a time (bincount makes int64 copies)
        counts += np.bincount(train.tokens[s:s + (1 << 20)], minlength=1 << 16)
    rng = np.random.default_rng(0)
    return {
        "tokens_train": int(lengths.sum()),
        "tokens_eval": int(evals.lengths.sum()),
        "chat_tokens_mean": round(float(lengths.mean()), 1),
        "chat_tokens_max": int(max(lengths.max(), evals.lengths.max())),
        "vocab_size": vocab_size,
        "vocab_used": int(np.count_nonzero(counts)),
        # a step of 64 random chats in one forward, and cut into 4 sorted forwards of 16 (the Trainer's draws)
        "padding_64x1": round(padding_fraction(lengths, random_batches(len(lengths), 64, rng)), 4),
        "padding_16x4": round(padding_fraction(lengths, [part for idx in random_batches(len(lengths), 64, rng)
                                                         for part in sorted_parts(idx, lengths, 4)]), 4),
    }
