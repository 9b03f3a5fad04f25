"""Say-it-back chats, made of token ids: random tokens of the whole vocabulary, said twice.

    chat frame:  user: say it back: <r1 r2 ... rn>      model: <r1 r2 ... rn>
    bare frame:  <|im_start|> r1 r2 ... rn r1 r2 ... rn <|im_end|>     (a Bi-Induct-style copy segment)

- **Why token ids, not text**: the memory chats' items are words, made of about half the
  vocabulary's tokens, and a head that learns to copy those does not copy any token
  (docs/induction.md). Decoded random ids do not survive a round trip through BPE (neighbours
  merge), so these chats are built from ids after the tokenizer is trained: `r` is n distinct
  ids drawn from every non-special token of the vocabulary.
- **Why two frames**: copying learned in the chat frame alone stayed in it (the copy heads copied
  random tokens swapped into a chat, not the bare repeats after a start token that the standard
  probe is; measured in docs/induction.md). Every other chat is a bare segment: the standard
  probe's frame (`guppy.run.watch_set.repeated_random_tokens`), with its length drawn.
- **What it rewards**: nothing but copying predicts the second copy; each of its tokens is the
  token after the earlier occurrence of the current one, what an induction head attends to.
- **Their text** (`Chat.prompt`, `Chat.reply`) is the ids decoded, for reading only: train
  only, never re-encoded (the eval split has none; `DataConfig.copy_fraction`).
Deterministic for a seed; `guppy.data.dataset.build_dataset` appends them to the train split.
"""

from __future__ import annotations

import numpy as np

COPY_TOPIC = "say_back"  # the topic label of these chats (after the persona's topics and memory kinds)
COPY_PROMPT = "say it back:"  # the user's words before the random tokens, in the chat frame
MIN_TOKENS, MAX_TOKENS = 8, 32  # random tokens per chat, uniform (the standard probe repeats 20)
FRAMES = ("chat", "bare")  # chat i is in frame FRAMES[i % 2]


def copy_chats(tok, n: int, seed: int) -> tuple[list[list[int]], list[int], list[dict]]:
    """`n` say-it-back chats for tokenizer `tok`: (ids per chat, index of each reply's first token:
    in the bare frame, the second copy's), the chats as dicts of `guppy.data.dataset.Chat` fields,
    their text decoded from the ids)."""
    rng = np.random.default_rng([seed, 0x5A7])
    specials = {tok.pad_id, tok.start_id, tok.end_id}
    vocab = np.array([i for i in range(tok.vocab_size) if i not in specials])
    ids, starts, chats = [], [], []
    for i in range(n):
        r = rng.choice(vocab, size=int(rng.integers(MIN_TOKENS, MAX_TOKENS + 1)), replace=False).tolist()
        said = tok.decode(r)
        if FRAMES[i % 2] == "chat":
            x, start = tok.chat_ids(COPY_PROMPT + " ", r, r)
            prompt = f"{COPY_PROMPT} {said}"
        else:
            x, start, prompt = [tok.start_id, *r, *r, tok.end_id], 1 + len(r), said
        ids.append(x)
        starts.append(start)
        chats.append({"topic": COPY_TOPIC, "prompt": prompt, "reply": said})
    return ids, starts, chats
