"""Byte-level BPE tokenizer (HF `tokenizers`) and the ChatML-style chat template.

    <|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>

A multi-turn chat is its earlier turns, each `<|im_start|>user\n..<|im_end|>\n<|im_start|>assistant\n..<|im_end|>\n`,
then the last turn as above; the reply that is trained and answered is the last one.

A lowercasing normalizer puts "HI GUPPY" in distribution: the training data is lowercase.
Byte-level means any text encodes (no unknown token); decoding gives back the lowercased text.
Special tokens are inserted by id, never parsed out of text: a user typing "<|im_end|>" gets
those characters, not the end of their turn.

A tokenizer trained elsewhere (GuppyLM's: `<pad>` for padding, no lowercasing) comes with a
`ChatFormat` naming its special tokens and prompt template, stored as chat.json beside its
tokenizer.json; a tokenizer.json alone is read with guppy's format.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from guppy.run.format import CHAT_JSON

PAD, START, END = "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIALS = (PAD, START, END)
USER_PREFIX = f"{START}user\n"
ASSISTANT_PREFIX = f"{END}\n{START}assistant\n"


CHAT_FILE = CHAT_JSON  # beside tokenizer.json: a foreign tokenizer's ChatFormat


@dataclass(frozen=True)
class ChatFormat:
    """The special tokens a tokenizer uses and the template that wraps a prompt.

    `prompt` holds `{prompt}` once. Text between special tokens is encoded piece by piece (as HF
    tokenizers does when it meets a special token in a string), so a template written out as one
    string gives the ids the model was trained on. A reply follows the template and ends with `end`."""

    pad: str = PAD  # padding; never a target
    start: str = START  # opens a turn; the first token of every chat (bos)
    end: str = END  # closes a turn: a reply is over when the model writes it (eos)
    prompt: str = f"{START}user\n{{prompt}}{END}\n{START}assistant\n"
    turn_sep: str = "\n"  # between a reply's end token and the next turn of a multi-turn chat

    def __post_init__(self):
        if self.prompt.count("{prompt}") != 1:
            raise ValueError(f"chat format: the prompt template must hold {{prompt}} once, got {self.prompt!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChatFormat":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown or not all(isinstance(v, str) for v in d.values()):
            raise ValueError(f"chat format: expected string fields {[f.name for f in fields(cls)]}, got {d!r}")
        return cls(**d)


Turns = Sequence[tuple[str, str]]  # earlier (user, assistant) turns of a multi-turn chat


def chat_prefix(prompt: str, history: Turns = ()) -> str:
    """Everything before the reply: what the model is given to answer."""
    earlier = "".join(f"{render_chat(u, a)}\n" for u, a in history)
    return f"{earlier}{USER_PREFIX}{prompt}{ASSISTANT_PREFIX}"


def render_chat(prompt: str, reply: str, history: Turns = ()) -> str:
    return f"{chat_prefix(prompt, history)}{reply}{END}"


class ChatTokenizer:
    """A trained BPE tokenizer plus its chat format (special tokens and prompt template)."""

    def __init__(self, tok: Tokenizer, fmt: ChatFormat = ChatFormat()):
        self.tok, self.format = tok, fmt
        specials = (fmt.pad, fmt.start, fmt.end)
        ids = [tok.token_to_id(s) for s in specials]
        if None in ids:
            missing = [s for s, i in zip(specials, ids) if i is None]
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.pad_id, self.start_id, self.end_id = ids
        tok.encode_special_tokens = True  # text is text: specials come only from the template
        # the template around {prompt}: ids before it, the text joined to the prompt on each side
        # (encoded with it, as one piece), ids after it
        before, after = fmt.prompt.split("{prompt}")
        added = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        pre, self._lead = self._pieces(before, added), ""
        if pre and isinstance(pre[-1], str):
            self._lead = pre.pop()
        post, self._trail = self._pieces(after, added), ""
        if post and isinstance(post[0], str):
            self._trail = post.pop(0)
        self._pre = [i for x in pre for i in ([x] if isinstance(x, int) else self.encode(x))]
        self._post = [i for x in post for i in ([x] if isinstance(x, int) else self.encode(x))]
        self._head = len(self._pre) + len(self.encode(self._lead))  # template ids before the prompt's own
        self._sep = self.encode(fmt.turn_sep)

    @staticmethod
    def _pieces(text: str, specials: dict[str, int]) -> list:
        """`text` cut at special tokens: their ids (int) and the text between them (str)."""
        if not specials:
            return [text] if text else []
        pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
        return [specials.get(p, p) for p in re.split(pattern, text) if p]

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def encode_prompt(self, prompt: str, max_len: int | None = None, history: Turns = ()) -> list[int]:
        """Token ids of the chat prefix for `prompt` (after the `history` turns), ending where the
        reply begins.

        With `max_len`, a prompt too long to fit loses its first tokens, never the template.
        """
        if history:
            ids = self._earlier(history) + self._turn(prompt)
            if max_len and len(ids) > max_len:
                raise ValueError(f"max_len {max_len}: a chat of {len(ids)} tokens does not fit")
            return ids
        ids = self._turn(prompt)
        overflow = len(ids) - max_len if max_len else 0
        if overflow > 0:
            head = self._head  # e.g. <|im_start|> user \n
            if len(ids) - overflow < len(self._prefix(self.encode(self._lead + self._trail))):
                raise ValueError(f"max_len {max_len} leaves no room for the chat template")
            ids = ids[:head] + ids[head + overflow:]
        return ids

    def _prefix(self, user_ids: list[int]) -> list[int]:
        return [*self._pre, *user_ids, *self._post]

    def _turn(self, prompt: str) -> list[int]:
        """One user turn in the template, up to where the reply begins."""
        return self._prefix(self.encode(self._lead + prompt + self._trail))

    def _earlier(self, history: Turns) -> list[int]:
        """Earlier turns, each a whole chat of the template followed by the turn separator."""
        ids = []
        for user, reply in history:
            ids += self._turn(user) + self.encode(reply) + [self.end_id, *self._sep]
        return ids

    def encode_chats(self, prompts: Sequence[str], replies: Sequence[str],
                     histories: Sequence[Turns] | None = None) -> tuple[list[list[int]], list[int]]:
        """Encode whole chats (after their `histories` of earlier turns, if any); returns
        (ids per chat, index of each last reply's first token)."""
        users = self.tok.encode_batch([self._lead + p + self._trail for p in prompts], add_special_tokens=False)
        tails = self.tok.encode_batch(list(replies), add_special_tokens=False)
        heads = [self._prefix(u.ids) for u in users]
        if histories is not None:
            heads = [self._earlier(h) + head if h else head for h, head in zip(histories, heads)]
        return [h + t.ids + [self.end_id] for h, t in zip(heads, tails)], [len(h) for h in heads]

    def chat_ids(self, prompt: str, user_ids: Sequence[int], reply_ids: Sequence[int]) -> tuple[list[int], int]:
        """One chat whose user turn is `prompt`'s text followed by the ids `user_ids`, and whose reply
        is the ids `reply_ids`, taken as they are (not through text: see guppy.data.copy_chats);
        returns (ids, index of the reply's first token)."""
        head = [*self._pre, *self.encode(self._lead + prompt), *user_ids, *self.encode(self._trail), *self._post]
        return [*head, *reply_ids, self.end_id], len(head)

    def save(self, path: str | Path) -> None:
        """Atomic write: a crash leaves the old file or the new one, never half of one. A format
        other than guppy's goes beside it as chat.json."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self.tok.save(str(tmp))
        os.replace(tmp, path)
        if self.format != ChatFormat():
            save_chat_format(path.with_name(CHAT_FILE), self.format)

    @classmethod
    def load(cls, path: str | Path) -> "ChatTokenizer":
        fmt = load_chat_format(Path(path).with_name(CHAT_FILE))
        try:
            return cls(Tokenizer.from_file(str(path)), fmt)
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ValueError(f"{path}: not a guppy tokenizer file ({e})") from None


def save_chat_format(path: Path, fmt: ChatFormat) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fmt.to_dict(), indent=1))
    os.replace(tmp, path)


def load_chat_format(path: Path) -> ChatFormat:
    """The ChatFormat in `path`, or guppy's own where there is no such file."""
    if not path.exists():
        return ChatFormat()
    try:
        return ChatFormat.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: unreadable chat format ({e})") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> ChatTokenizer:
    """Train byte-level BPE on `texts` (the train split), target `vocab_size` entries."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return ChatTokenizer(tok)
