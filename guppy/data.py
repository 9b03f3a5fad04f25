"""The fish's data: synthetic single-turn chats from a persona, split, tokenized, batched.

    persona file --generate_chats--> Chats (train / eval) --tokenize--> TokenArrays (cached)

Splits: a share of every topic's prompt templates is held out entirely (eval only), and no
(prompt, reply) pair of the eval split appears in train. Token arrays live on disk as flat
`.npy` files (memory-mappable), keyed by the persona's content, seed and sizes, so a second
run starts instantly and a changed persona invalidates the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from guppy.persona import Persona, load_persona
from guppy.tokenizer import ChatTokenizer, train_tokenizer

CACHE_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    persona: str = "fish"  # a shipped persona name or a path to a .toml file
    n_chats: int = 60_000
    seed: int = 0
    eval_fraction: float = 0.05
    heldout_prompt_fraction: float = 0.15  # share of each topic's prompt templates kept out of train
    vocab_size: int = 4096

    def __post_init__(self):
        if self.n_chats < 1:
            raise ValueError(f"n_chats must be >= 1, got {self.n_chats}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if not 0 < self.heldout_prompt_fraction < 1:
            raise ValueError(f"heldout_prompt_fraction must be in (0, 1), got {self.heldout_prompt_fraction}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials + merges), got {self.vocab_size}")


@dataclass(frozen=True)
class Chat:
    topic: str
    prompt: str
    reply: str
    heldout_prompt: bool = False  # the prompt's template never appears in train


@dataclass(frozen=True)
class Chats:
    train: list[Chat]
    eval: list[Chat]


def generate_chats(persona: Persona, cfg: DataConfig) -> Chats:
    """Equal chats per topic, deterministic for `cfg.seed`.

    Eval takes, per topic, half its chats from held-out prompt templates and half from
    train templates with replies never paired with that prompt in train.
    """
    topics = list(persona.topics)
    base, extra = divmod(cfg.n_chats, len(topics))
    train, evals = [], []
    for i, name in enumerate(topics):
        n = base + (i < extra)
        n_eval = max(1, round(n * cfg.eval_fraction)) if n > 1 else 0
        tr, ev = _topic_chats(persona, name, n - n_eval, n_eval, cfg)
        train += tr
        evals += ev
    rng = random.Random(f"{cfg.seed}:order")
    rng.shuffle(train)
    rng.shuffle(evals)
    return Chats(train, evals)


def _topic_chats(persona: Persona, topic: str, n_train: int, n_eval: int, cfg: DataConfig):
    rng = random.Random(f"{cfg.seed}:{topic}")
    templates = list(dict.fromkeys(persona.topics[topic].prompts))
    rng.shuffle(templates)
    n_held = max(1, round(len(templates) * cfg.heldout_prompt_fraction))
    if n_held >= len(templates):
        raise ValueError(f"{persona.source}: topics.{topic}.prompts: expected at least 2 distinct prompts to hold one out")
    held, kept = templates[:n_held], templates[n_held:]

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

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def chat(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def from_lists(cls, ids: list[list[int]], reply_start: list[int], topic: list[int]) -> "TokenArrays":
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        flat = np.fromiter((t for x in ids for t in x), dtype=np.uint16, count=int(offsets[-1]))
        return cls(flat, offsets, np.asarray(reply_start, np.int32), np.asarray(topic, np.int16))

    FIELDS = ("tokens", "offsets", "reply_start", "topic")

    def save(self, folder: Path, split: str) -> None:
        for f in self.FIELDS:
            np.save(folder / f"{split}.{f}.npy", getattr(self, f))

    @classmethod
    def load(cls, folder: Path, split: str, mmap: bool = True) -> "TokenArrays":
        mode = "r" if mmap else None
        return cls(*(np.load(folder / f"{split}.{f}.npy", mmap_mode=mode) for f in cls.FIELDS))


@dataclass
class Dataset:
    """Everything training needs: the persona, chats, tokenizer, token arrays and stats."""

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
        return list(self.persona.topics)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GUPPY_CACHE_DIR", Path.home() / ".cache" / "guppy"))


def cache_key(persona: Persona, cfg: DataConfig) -> str:
    import tokenizers

    blob = json.dumps([CACHE_VERSION, persona.digest, asdict(cfg) | {"persona": None}, tokenizers.__version__])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_dataset(cfg: DataConfig = DataConfig(), cache_dir: str | Path | None = None, use_cache: bool = True) -> Dataset:
    """Generate (or load from cache) the chats, tokenizer and token arrays for `cfg`."""
    persona = load_persona(cfg.persona)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / f"{persona.name}-{cache_key(persona, cfg)}"
    if use_cache and (folder / "meta.json").exists():
        try:
            return _read_cache(folder, cfg, persona)
        except (OSError, ValueError, KeyError) as e:  # corrupt cache: rebuild it
            print(f"guppy: rebuilding unreadable data cache {folder} ({e})")
    ds = build_dataset(persona, cfg)
    if use_cache:
        _write_cache(ds, folder)
    return ds


def build_dataset(persona: Persona, cfg: DataConfig) -> Dataset:
    t0 = time.perf_counter()
    chats = generate_chats(persona, cfg)
    t1 = time.perf_counter()
    tok = train_tokenizer((f"user\n{c.prompt}\nassistant\n{c.reply}" for c in chats.train), cfg.vocab_size)
    t2 = time.perf_counter()
    topic_index = {t: i for i, t in enumerate(persona.topics)}
    splits = {}
    for split, cs in (("train", chats.train), ("eval", chats.eval)):
        ids, starts = tok.encode_chats([c.prompt for c in cs], [c.reply for c in cs])
        splits[split] = TokenArrays.from_lists(ids, starts, [topic_index[c.topic] for c in cs])
    t3 = time.perf_counter()
    ds = Dataset(cfg, persona, chats, tok, splits["train"], splits["eval"], {}, None)
    ds.stats = dataset_stats(ds) | {
        "seconds_generate": round(t1 - t0, 3),
        "seconds_tokenizer": round(t2 - t1, 3),
        "seconds_encode": round(t3 - t2, 3),
    }
    return ds


def _write_cache(ds: Dataset, folder: Path) -> None:
    """Write into a temporary folder, then rename: a crash never leaves half a cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        ds.tokenizer.save(tmp / "tokenizer.json")
        ds.train.save(tmp, "train")
        ds.eval.save(tmp, "eval")
        for split in ("train", "eval"):
            with open(tmp / f"{split}.chats.jsonl", "w") as f:
                for c in getattr(ds.chats, split):
                    f.write(json.dumps(asdict(c)) + "\n")
        (tmp / "meta.json").write_text(json.dumps({"config": asdict(ds.config), "stats": ds.stats}, indent=1))
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").exists():  # lost a race with another writer: fine
            raise
    ds.cache_dir = folder


def _read_cache(folder: Path, cfg: DataConfig, persona: Persona) -> Dataset:
    meta = json.loads((folder / "meta.json").read_text())
    chats = {}
    for split in ("train", "eval"):
        with open(folder / f"{split}.chats.jsonl") as f:
            chats[split] = [Chat(**json.loads(line)) for line in f]
    tok = ChatTokenizer.load(folder / "tokenizer.json")
    train, evals = TokenArrays.load(folder, "train"), TokenArrays.load(folder, "eval")
    if len(train) != len(chats["train"]) or len(evals) != len(chats["eval"]):
        raise ValueError("token arrays and chats disagree in length")
    return Dataset(cfg, persona, Chats(chats["train"], chats["eval"]), tok, train, evals, meta["stats"], folder)


# ---- batching -------------------------------------------------------------------------------


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, window: int = 64) -> list[np.ndarray]:
    """Shuffled batches of chats of similar length, so little of each batch is padding.

    Indices are shuffled, cut into windows of `window` batches, sorted by length inside each
    window and cut into batches; then the batch order is shuffled. Every index appears once.
    """
    order = rng.permutation(len(lengths))
    span = batch_size * window
    batches = []
    for s in range(0, len(order), span):
        chunk = order[s:s + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def random_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


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


# ---- statistics -----------------------------------------------------------------------------


def dataset_stats(ds: Dataset, batch_size: int = 32) -> dict:
    train, evals = ds.chats.train, ds.chats.eval
    per_topic: dict[str, set] = {t: set() for t in ds.persona.topics}
    for c in train:
        per_topic[c.topic].add(c.reply)
    uniq = sorted(len(s) for s in per_topic.values())
    train_pairs = {(c.prompt, c.reply) for c in train}
    train_prompts = {c.prompt for c in train}
    held = {c.prompt for c in evals if c.heldout_prompt}
    lengths = ds.train.lengths
    rng = np.random.default_rng(0)
    return {
        "persona": ds.persona.name,
        "topics": len(ds.persona.topics),
        "chats_train": len(train),
        "chats_eval": len(evals),
        "unique_replies_per_topic_min": uniq[0],
        "unique_replies_per_topic_median": uniq[len(uniq) // 2],
        "unique_replies_per_topic_max": uniq[-1],
        "unique_prompts_train": len(train_prompts),
        "heldout_prompts": len(held),
        "eval_pairs_in_train": sum((c.prompt, c.reply) in train_pairs for c in evals),
        "heldout_prompts_in_train": len(held & train_prompts),
        "tokens_train": int(lengths.sum()),
        "tokens_eval": int(ds.eval.lengths.sum()),
        "chat_tokens_mean": round(float(lengths.mean()), 1),
        "chat_tokens_max": int(max(lengths.max(), ds.eval.lengths.max())),
        "vocab_size": ds.tokenizer.vocab_size,
        "vocab_used": int(len(np.unique(ds.train.tokens))),
        "padding_bucketed": round(padding_fraction(lengths, bucket_batches(lengths, batch_size, rng)), 4),
        "padding_pad_to_longest": round(padding_fraction(lengths, random_batches(len(lengths), batch_size, rng)), 4),
    }
