"""Say-it-back chats of random token ids: well-formed chats, their share, train only; the in-context loss."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from guppy.analysis.memory_recall import icl_losses
from guppy.data.copy_chats import COPY_PROMPT, COPY_TOPIC, FRAMES, MAX_TOKENS, MIN_TOKENS
from guppy.data.dataset import DataConfig, cache_key, chat_topics, load_dataset
from guppy.data.persona import load_persona

MINI = Path(__file__).parent / "data" / "mini.toml"
CFG = DataConfig(persona=str(MINI), n_chats=900, vocab_size=400, memory_fraction=0.3, copy_fraction=0.2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_dataset(CFG, cache_dir=tmp_path_factory.mktemp("copy"))


def copy_rows(ds):
    topic = ds.topics.index(COPY_TOPIC)
    return [i for i in range(len(ds.train)) if ds.train.topic[i] == topic]


def test_share_and_train_only(data):
    assert data.topics[-1] == COPY_TOPIC == chat_topics(load_persona(MINI), CFG)[-1]
    rows = copy_rows(data)
    assert len(rows) == 180 and data.stats["chats_train"] == len(data.train) == len(data.chats.train)
    assert not [c for c in data.chats.eval if c.topic == COPY_TOPIC]  # never re-encoded from text
    assert sum(bool(c.recall) for c in data.chats.train) == 270 - data.stats["memory_chats_eval"]


def test_reply_says_the_random_tokens_back_in_both_frames(data):
    tok = data.tokenizer
    prompt = tok.encode("user\n" + COPY_PROMPT + " ")  # the template's text joined to the prompt (ChatFormat)
    said, frames = set(), []
    for i in copy_rows(data):
        ids, start = data.train.chat(i).tolist(), int(data.train.reply_start[i])
        reply = ids[start:-1]
        assert ids[0] == tok.start_id and ids[-1] == tok.end_id
        assert MIN_TOKENS <= len(reply) <= MAX_TOKENS and len(set(reply)) == len(reply)
        assert min(reply) > max(tok.pad_id, tok.start_id, tok.end_id)  # never a special token
        if start == 1 + len(reply):  # bare: a start token, r, r, the end token
            assert ids[1:start] == reply
            frames.append("bare")
        else:  # the chat template, the user's words, r, then the reply r
            at = len(prompt)
            user = ids[1:start]
            assert user[:at] == prompt and user[at:at + len(reply)] == reply and tok.end_id in user[at + len(reply):]
            frames.append("chat")
        said |= set(reply)
    assert frames == [FRAMES[i % 2] for i in range(len(frames))]
    assert len(said) > 0.9 * (tok.vocab_size - 3)  # drawn from the whole vocabulary
    chat = data.chats.train[copy_rows(data)[0]]  # the text beside the ids, for reading
    assert chat.topic == COPY_TOPIC and chat.prompt.startswith(COPY_PROMPT) and chat.prompt.endswith(chat.reply)


def test_deterministic_and_keyed(data, tmp_path):
    again = load_dataset(CFG, cache_dir=tmp_path)
    assert np.array_equal(again.train.tokens, data.train.tokens)
    assert cache_key(load_persona(MINI), CFG) != cache_key(load_persona(MINI), DataConfig(**{**CFG.__dict__, "copy_fraction": 0}))


@pytest.mark.parametrize("memory, copy", [(0.0, 1.0), (0.6, 0.4), (0.0, -0.1)])
def test_bad_fraction_refused(memory, copy):
    with pytest.raises(ValueError, match="copy_fraction"):
        DataConfig(memory_fraction=memory, copy_fraction=copy)


def test_icl_losses_read_the_two_copies():
    """A model that knows the second copy (and nothing of the first) gains log V per token."""
    V, P = 50, 5
    r = torch.arange(3, 3 + P)
    tokens = torch.cat([torch.tensor([1]), r, r])[None]  # (1, 1 + 2P)
    logits = torch.zeros(1, tokens.shape[1], V)
    logits[0, torch.arange(P + 1, 2 * P), r[1:]] = 100.0  # positions P+1 .. 2P-1 predict the second copy's 2..P
    out = icl_losses(logits, tokens, P)
    assert out["icl_loss_first"] == pytest.approx(math.log(V))
    assert out["icl_loss_second"] == pytest.approx(0.0, abs=1e-6)
    assert out["icl_drop"] == pytest.approx(math.log(V))


def test_summary_dates_the_births_and_the_drop(tmp_path):
    """A planted run: a previous-token head rises at step 310, an induction head (and a weaker
    second one) at step 600, the in-context loss drops at 610 (33 steps either side for 10%-90%)."""
    import sys

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from experiments.induction import summary

    steps = np.arange(0, 1001, 20)
    rise = lambda at, top: 0.03 + top / (1 + np.exp(-(steps - at) / 15))  # noqa: E731
    table = pd.DataFrame({"step": steps, "tokens": steps * 100, "recall_loss": 3.0, "recall_token_acc": 0.5,
                          "recall_acc": 0.2, "icl_loss_first": 7.0, "icl_loss_second": 7.0 - rise(610, 4.0)})
    table["icl_drop"] = table.icl_loss_first - table.icl_loss_second
    for layer in (0, 1):
        for h in range(4):
            table[f"induction.L{layer}H{h}"] = table[f"prev_token.L{layer}H{h}"] = 0.03
    table["prev_token.L0H3"] = rise(310, 0.6)
    table["induction.L1H1"] = rise(600, 0.7)
    table["induction.L1H2"] = rise(600, 0.15)
    table.to_csv(tmp_path / "recall.csv", index=False)
    text = summary(tmp_path)
    assert "previous-token head L0H3 born at step 320" in text  # half way up: 0.33 at step 310, measured at 320
    assert "induction head L1H1 born at step 620 (first above 0.5)" in text  # 0.5 at step 611
    assert "summed over layer 1's copy heads (those ending >= 0.1: L1H1+L1H2) 0.910" in text
    assert "dropping between steps 580 and 660 (10%-90%), half way at step 620" in text


def test_chat_ids_is_the_template_of_encode_chats(data):
    tok = data.tokenizer
    for prompt, reply in [("is the water cold?", "the water is warm."), ("hello", "hi")]:
        ids, starts = tok.encode_chats([prompt], [reply])
        assert tok.chat_ids(prompt, [], tok.encode(reply)) == (ids[0], starts[0])


def test_the_documented_trials_use_flags_the_recipe_takes(capsys):
    """docs/induction.md's trial commands (too long to run here) name only flags of the command."""
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from experiments.induction import main

    page = (Path(__file__).resolve().parent.parent / "docs" / "induction.md").read_text()
    commands = re.findall(r"^python -m experiments\.induction (.*)$", page, re.M)
    assert len(commands) == 3
    with pytest.raises(SystemExit):
        main(["--help"])
    known = set(re.findall(r"--[a-z-]+", capsys.readouterr().out))
    for line in commands:
        assert set(re.findall(r"--[a-z-]+", line)) <= known, line
