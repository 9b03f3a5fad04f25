"""Byte-level BPE tokenizer (HF `tokenizers`) and the ChatML-style chat template.

    <|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>

A multi-turn chat is its earlier turns, each `<|im_start|>user\n..<|im_end|>\n<|im_start|>assistant\n..<|im_end|>\n`,
then the last turn as above; the reply that is trained and answered is the last one.

A lowercasing normalizer puts "HI GUPPY" in distribution: the training data is lowercase.
Byte-level means any text encodes (no unknown token); decoding gives back the lowercased text.
Special tokens are inserted by id, never parsed out of text: a user typing "<|im_end|>" gets
those characters, not the end of their turn.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, START, END = "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIALS = (PAD, START, END)
USER_PREFIX = f"{START}user\n"
ASSISTANT_PREFIX = f"{END}\n{START}assistant\n"


Turns = Sequence[tuple[str, str]]  # earlier (user, assistant) turns of a multi-turn chat


def chat_prefix(prompt: str, history: Turns = ()) -> str:
    """Everything before the reply: what the model is given to answer."""
    earlier = "".join(f"{render_chat(u, a)}\n" for u, a in history)
    return f"{earlier}{USER_PREFIX}{prompt}{ASSISTANT_PREFIX}"


def render_chat(prompt: str, reply: str, history: Turns = ()) -> str:
    return f"{chat_prefix(prompt, history)}{reply}{END}"


class ChatTokenizer:
    """A trained BPE tokenizer plus the chat template's special tokens."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        ids = [tok.token_to_id(s) for s in SPECIALS]
        if None in ids:
            missing = [s for s, i in zip(SPECIALS, ids) if i is None]
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.pad_id, self.start_id, self.end_id = ids
        tok.encode_special_tokens = True  # text is text: specials come only from the template
        self._newline, self._assistant = self.encode("\n"), self.encode("assistant\n")
        self._user = self.encode("user\n")

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
            ids = self._earlier(history) + self._prefix(self.encode(f"user\n{prompt}"))
            if max_len and len(ids) > max_len:
                raise ValueError(f"max_len {max_len}: a chat of {len(ids)} tokens does not fit")
            return ids
        ids = self._prefix(self.encode(f"user\n{prompt}"))
        overflow = len(ids) - max_len if max_len else 0
        if overflow > 0:
            head = 1 + len(self._user)  # <|im_start|> user \n
            if len(ids) - overflow < head + len(self._prefix([])) - 1:
                raise ValueError(f"max_len {max_len} leaves no room for the chat template")
            ids = ids[:head] + ids[head + overflow:]
        return ids

    def _prefix(self, user_ids: list[int]) -> list[int]:
        return [self.start_id, *user_ids, self.end_id, *self._newline, self.start_id, *self._assistant]

    def _earlier(self, history: Turns) -> list[int]:
        """Earlier turns, each a whole chat of the template followed by a newline."""
        ids = []
        for user, reply in history:
            ids += self._prefix(self.encode(f"user\n{user}")) + self.encode(reply) + [self.end_id, *self._newline]
        return ids

    def encode_chats(self, prompts: Sequence[str], replies: Sequence[str],
                     histories: Sequence[Turns] | None = None) -> tuple[list[list[int]], list[int]]:
        """Encode whole chats (after their `histories` of earlier turns, if any); returns
        (ids per chat, index of each last reply's first token)."""
        users = self.tok.encode_batch([f"user\n{p}" for p in prompts], add_special_tokens=False)
        tails = self.tok.encode_batch(list(replies), add_special_tokens=False)
        heads = [self._prefix(u.ids) for u in users]
        if histories is not None:
            heads = [self._earlier(h) + head if h else head for h, head in zip(histories, heads)]
        return [h + t.ids + [self.end_id] for h, t in zip(heads, tails)], [len(h) for h in heads]

    def save(self, path: str | Path) -> None:
        """Atomic write: a crash leaves the old file or the new one, never half of one."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self.tok.save(str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "ChatTokenizer":
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ValueError(f"{path}: not a guppy tokenizer file ({e})") from None


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
