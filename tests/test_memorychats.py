"""Memory chats: deterministic, leak-free, the recalled item really told earlier; multi-turn template."""

import re
from pathlib import Path

import pytest
import torch

from guppy.analysis.memory_recall import chat_induction, corrupted, formation, recall_batch, recall_scores
from guppy.data.dataset import DataConfig, chat_topics, generate_chats, load_dataset
from guppy.data.memory_chats import item_heldout
from guppy.data.persona import PersonaError, load_persona
from guppy.data.tokenizer import render_chat, train_tokenizer

MINI = Path(__file__).parent / "data" / "mini.toml"
CFG = DataConfig(persona=str(MINI), n_chats=900, vocab_size=400, memory_fraction=0.5)


@pytest.fixture(scope="module")
def chats():
    return generate_chats(load_persona(MINI), CFG)


def memory(chats_list):
    return [c for c in chats_list if c.recall]


def test_deterministic_for_a_seed(chats):
    p = load_persona(MINI)
    assert generate_chats(p, CFG) == chats
    assert memory(generate_chats(p, DataConfig(**{**CFG.__dict__, "seed": 1})).train) != memory(chats.train)


def test_share_of_memory_chats_and_turns(chats):
    mem = memory([*chats.train, *chats.eval])
    assert len(mem) == 450 and {c.topic for c in mem} == {"recall_name", "recall_number"}
    assert {len(c.history) + 1 for c in mem} == {2, 3, 4}  # 2 to 4 turns
    assert not [c for c in [*chats.train, *chats.eval] if not c.recall and c.history]  # ordinary chats: one turn
    assert chat_topics(load_persona(MINI), CFG)[-2:] == ["recall_name", "recall_number"]


def test_recalled_item_said_earlier_and_in_the_reply(chats):
    for c in memory([*chats.train, *chats.eval]):
        assert c.recall in c.reply
        told = [u for u, _ in c.history if c.recall in u]
        assert told, c  # the user said it in an earlier turn
        assert c.recall not in c.prompt  # the question does not give it away


def test_eval_items_and_held_templates_never_in_train(chats):
    mem_train, mem_eval = memory(chats.train), memory(chats.eval)
    train_text = "\n".join(f"{u}\n{a}\n{c.prompt}\n{c.reply}" for c in chats.train for u, a in c.history)
    for c in mem_eval:
        assert item_heldout(c.recall, CFG.seed, CFG.heldout_prompt_fraction)
        assert not re.search(rf"\b{re.escape(c.recall)}\b", train_text), c  # the item appears in no train chat
    assert not [c for c in mem_train if item_heldout(c.recall, CFG.seed, CFG.heldout_prompt_fraction)]
    # half of eval uses tell/ask templates no train chat uses: their asks never occur in train
    train_asks = {c.prompt for c in mem_train}
    held = [c for c in mem_eval if c.heldout_prompt]
    assert len(held) >= len(mem_eval) // 2 and not [c for c in held if c.prompt in train_asks]


def test_items_must_be_copied_not_memorised():
    """The fish's names and foods come from pools far larger than the chats that use them: most
    train items occur once, so recalling them means copying from the chat."""
    fish = load_persona("fish")
    mem = memory(generate_chats(fish, DataConfig(n_chats=3000, memory_fraction=0.5)).train)
    for kind in ("recall_name", "recall_food", "recall_words", "recall_code", "recall_twice", "recall_echo"):
        items = [c.recall for c in mem if c.topic == kind]
        assert items and len(set(items)) > 0.75 * len(items), kind
    for c in mem:  # twice and echo: the user says the item twice in one turn (echo: nothing but it)
        if c.topic in ("recall_twice", "recall_echo"):
            (tell,) = [u for u, _ in c.history if c.recall in u]
            assert tell.count(c.recall) == 2, c
            if c.topic == "recall_echo":
                assert not tell.replace(c.recall, "").strip(" ,.!"), c


def test_no_memory_without_the_option_and_same_ordinary_chats():
    p = load_persona(MINI)
    plain = generate_chats(p, DataConfig(persona=str(MINI), n_chats=450, vocab_size=400))
    assert not memory([*plain.train, *plain.eval])
    with pytest.raises(ValueError, match="no \\[memory"):
        generate_chats(load_persona("fern"), DataConfig(persona="fern", n_chats=300, memory_fraction=0.2))


def test_multi_turn_template_round_trips(chats):
    tok = train_tokenizer([f"{u} {a} {c.prompt} {c.reply}" for c in chats.train[:300] for u, a in c.history or [("", "")]],
                          400)
    mem = memory(chats.eval)[:20]
    ids, starts = tok.encode_chats([c.prompt for c in mem], [c.reply for c in mem], [c.history for c in mem])
    for x, s, c in zip(ids, starts, mem):
        assert tok.decode(x, skip_special=False) == render_chat(c.prompt, c.reply, c.history)
        assert x[:s] == tok.encode_prompt(c.prompt, history=c.history)
        assert x.count(tok.start_id) == 2 * (len(c.history) + 1)


def test_recall_batch_marks_the_item_tokens(chats):
    tok = train_tokenizer([f"{u} {a} {c.prompt} {c.reply}" for c in chats.train[:300] for u, a in c.history or [("", "")]],
                          400)
    batch = recall_batch(tok, memory(chats.eval), n_ctx=256)
    for row, c in enumerate(batch.chats):
        targets = batch.tokens[row, 1:][batch.item_mask[row]]
        assert c.recall in tok.decode(targets.tolist())
    pairs = batch.copy_pairs
    assert len(pairs) > len(batch.chats)  # most item tokens were said before
    for row, q, k in pairs.tolist():  # key k follows an earlier copy of the query's token
        assert k < q and batch.item_mask[row, q] and batch.tokens[row, k - 1] == batch.tokens[row, q]
    model = _model(tok)
    _, cache = model.run_with_cache(batch.tokens[:, :-1], names="blocks.1.attn.hook_pattern")
    direct = cache["blocks.1.attn.hook_pattern"][pairs[:, 0], :, pairs[:, 1], pairs[:, 2]].mean(0)  # (H,)
    ours = chat_induction(model, batch)
    assert torch.allclose(torch.tensor([ours[f"chat_induction.L1H{h}"] for h in range(4)]), direct, atol=1e-6)
    scores = recall_scores(model, batch)
    assert 0 <= scores["recall_acc"] <= scores["recall_token_acc"] <= 1 and scores["recall_loss"] > 0
    swapped = corrupted(batch.chats)
    assert all(c.recall not in "".join(u for u, _ in s.history) for c, s in zip(batch.chats, swapped))


def _model(tok):
    from guppy.config import model_preset
    from guppy.model.transformer import GuppyLM

    torch.manual_seed(0)
    return GuppyLM(model_preset("tiny").replace(n_ctx=256, d_vocab=tok.vocab_size)).eval()


def test_formation_dates_the_rise():
    import pandas as pd

    steps = list(range(0, 200, 10))
    rising = [0.02] * 8 + [0.15, 0.4, 0.7, 0.8] + [0.85] * 8  # crosses 0.5 at step 100
    table = pd.DataFrame({"step": steps, "induction.L1H0": rising, "induction.L0H1": [0.05] * 20})
    f = formation(table)
    assert f["head"] == "L1H0" and (f["layer"], f["index"]) == (1, 0) and f["step"] == 100
    assert f["rise_from"] == 80 and f["rise_to"] == 110
    assert formation(table.assign(**{"induction.L1H0": [0.1] * 20})) is None
    half = formation(table, threshold=None)  # half way up its own rise: 0.02 + 0.5 * 0.83 = 0.435
    assert half["step"] == 100 and half["rise_from"] == 80
    layer0 = pd.DataFrame({"step": steps, "induction.L0H0": rising})  # no earlier layer to compose with
    assert formation(layer0) is None


@pytest.mark.parametrize("bad, message", [
    ('tell = ["hello", "hi"]', "expected \\{item\\}"),
    ('ask = ["is it {item}?", "what?"]', "must not say \\{item\\}"),
    ('answer = [["i remember.", "yes {item}."]]', "every alternative says \\{item\\}"),
    ('tell = ["i am {item}."]', "at least 2 distinct"),
    ('colour = ["red"]', "unknown key"),
])
def test_bad_memory_tables_fail_in_one_line(tmp_path, bad, message):
    text = MINI.read_text()
    start = text.index("[memory.name]")
    end = text.index("[memory.number]")
    section = text[start:end]
    key = bad.split(" =")[0]
    lines = [ln for ln in section.splitlines() if not ln.startswith(f"{key} =")]
    path = tmp_path / "bad.toml"
    path.write_text(text[:start] + "\n".join(lines + [bad, ""]) + text[end:])
    with pytest.raises(PersonaError, match=message) as e:
        load_persona(path)
    assert "\n" not in str(e.value) and "memory.name" in str(e.value)


def test_fish_memory_pools_are_large():
    fish = load_persona("fish")
    assert {k: fish.item_space(k) >= 900 for k in fish.memory} == {"name": True, "food": True, "flakes": True,
                                                                    "words": True, "poem": True, "code": True, "twice": True, "echo": True}


def test_cached_dataset_keeps_history(tmp_path):
    ds = load_dataset(CFG, cache_dir=tmp_path)
    again = load_dataset(CFG, cache_dir=tmp_path)
    mem = memory(again.chats.eval)
    assert mem and mem == memory(ds.chats.eval) and all(isinstance(c.history[0], tuple) for c in mem)
    assert memory(list(again.chats.train))[0].history  # the train chats read back from disk
    i = next(i for i, c in enumerate(ds.chats.train) if c.recall)
    c = ds.chats.train[i]  # the trained reply is the last one, after the earlier turns
    assert int(ds.train.reply_start[i]) == len(ds.tokenizer.encode_prompt(c.prompt, history=c.history))


def test_memory_kinds_pick_some_tables():
    p = load_persona(MINI)
    only = generate_chats(p, DataConfig(**{**CFG.__dict__, "memory_kinds": "number"}))
    assert {c.topic for c in memory([*only.train, *only.eval])} == {"recall_number"}
    assert chat_topics(p, DataConfig(**{**CFG.__dict__, "memory_kinds": "number"}))[-1] == "recall_number"
    with pytest.raises(ValueError, match="'colour' is not a \\[memory"):
        generate_chats(p, DataConfig(**{**CFG.__dict__, "memory_kinds": "name,colour"}))
