"""Chats: deterministic, balanced, clean text, leak-free splits; token arrays, cache, batching."""

import itertools
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from guppy.data.dataset import (
    ChatFile,
    DataConfig,
    collate,
    count_targets,
    generate_chats,
    load_dataset,
    padding_fraction,
    random_batches,
    sorted_parts,
    step_passes,
)
from guppy.data.persona import list_personas, load_persona

MINI = Path(__file__).parent / "data" / "mini.toml"
MINI_CFG = DataConfig(persona=str(MINI), n_chats=600, vocab_size=400)


@pytest.fixture(scope="session")
def fish(tmp_path_factory):
    """The default fish dataset (60,000 chats), built once for the session."""
    return load_dataset(DataConfig(), cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def shipped_chats():
    return {name: generate_chats(load_persona(name), DataConfig(persona=name, n_chats=6000))
            for name in list_personas()}


def test_deterministic_for_a_seed():
    p = load_persona(MINI)
    a, b = generate_chats(p, MINI_CFG), generate_chats(p, MINI_CFG)
    c = generate_chats(p, DataConfig(persona=str(MINI), n_chats=600, seed=1))
    assert a == b and a.train != c.train


def test_equal_chats_per_topic(fish):
    counts = Counter(c.topic for c in [*fish.chats.train, *fish.chats.eval])
    assert len(counts) == 60 and set(counts.values()) == {1000}
    assert len(fish.chats.train) + len(fish.chats.eval) == 60_000


def test_every_topic_in_both_splits(fish):
    assert {c.topic for c in fish.chats.train} == {c.topic for c in fish.chats.eval} == set(fish.topics)


def test_hundreds_of_distinct_replies_per_topic(fish):
    per_topic = Counter()
    for topic, reply in {(c.topic, c.reply) for c in fish.chats.train}:
        per_topic[topic] += 1
    assert min(per_topic.values()) >= 200, per_topic.most_common()[-5:]


def test_no_eval_pair_in_train_and_heldout_prompts_never_trained(fish):
    train_pairs = {(c.prompt, c.reply) for c in fish.chats.train}
    train_prompts = {c.prompt for c in fish.chats.train}
    assert not [c for c in fish.chats.eval if (c.prompt, c.reply) in train_pairs]
    held = [c for c in fish.chats.eval if c.heldout_prompt]
    assert {c.topic for c in held} == set(fish.topics)  # every topic has never-seen prompts
    assert not {c.prompt for c in held} & train_prompts
    assert fish.stats["eval_pairs_in_train"] == 0 and fish.stats["heldout_prompts_in_train"] == 0


LEAK = re.compile(r"[{}\[\]<>|\\]|pick\(|\$|%s|none|nan|null|\bundefined\b")


@pytest.mark.parametrize("split", ["train", "eval"])
def test_text_is_clean_lowercase_and_on_topic(shipped_chats, split):
    for name, chats in shipped_chats.items():
        persona = load_persona(name)
        for c in getattr(chats, split):
            for text in (c.prompt, c.reply):
                assert text == text.lower() and text.strip() == text and "  " not in text, (name, text)
                assert not LEAK.search(text), (name, text)
            keywords = persona.topics[c.topic].keywords
            assert any(re.search(rf"\b{re.escape(k)}\b", c.reply) for k in keywords), (name, c)


def test_meaning_of_life_is_food(shipped_chats):
    replies = [c.reply for c in shipped_chats["fish"].train if c.topic == "meaning_of_life"]
    assert replies and all("food" in r for r in replies)


def test_token_arrays_match_chats(fish):
    tok, arr = fish.tokenizer, fish.eval
    assert len(arr) == len(fish.chats.eval)
    for i in range(0, len(arr), 97):
        chat, ids = fish.chats.eval[i], arr.chat(i)
        assert tok.decode(ids[arr.reply_start[i]:]) == chat.reply
        assert fish.topics[arr.topic[i]] == chat.topic
    assert fish.stats["chat_tokens_max"] <= 128  # every chat fits the fish's context
    assert fish.stats["vocab_used"] <= fish.stats["vocab_size"] <= 4096


def test_cache_reloads_fast_and_identically(fish, tmp_path):
    t0 = time.perf_counter()
    again = load_dataset(DataConfig(), cache_dir=fish.cache_dir.parent)
    assert time.perf_counter() - t0 < 2.0
    assert again.cache_dir == fish.cache_dir
    assert np.array_equal(again.train.tokens, fish.train.tokens)
    assert again.chats == fish.chats and again.stats == fish.stats


def test_changed_persona_invalidates_cache(tmp_path):
    persona = tmp_path / "mini.toml"
    shutil.copy(MINI, persona)
    cfg = DataConfig(persona=str(persona), n_chats=600, vocab_size=400)
    first = load_dataset(cfg, cache_dir=tmp_path / "cache")
    persona.write_text(MINI.read_text().replace('"i do not move."', '"i do not move at all."'))
    second = load_dataset(cfg, cache_dir=tmp_path / "cache")
    assert first.cache_dir != second.cache_dir
    assert any("at all" in c.reply for c in second.chats.train)


def test_corrupt_cache_is_rebuilt(tmp_path):
    first = load_dataset(MINI_CFG, cache_dir=tmp_path)
    tokens = np.array(first.train.tokens)  # a copy: the cached file is memory-mapped, and is about to be clobbered
    (first.cache_dir / "train.tokens.npy").write_bytes(b"garbage")
    again = load_dataset(MINI_CFG, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(again.train.tokens), tokens)


def test_steps_are_random_draws_cut_into_sorted_parts_that_pad_less(fish):
    lengths = fish.train.lengths
    steps = random_batches(len(lengths), 64, np.random.default_rng(0))
    assert sorted(np.concatenate(steps).tolist()) == list(range(len(lengths)))  # every chat once a pass
    parts = [sorted_parts(idx, lengths, 4) for idx in steps]
    for idx, cut in zip(steps, parts):
        assert sorted(np.concatenate(cut).tolist()) == sorted(idx.tolist())  # a step's chats, no other
        assert [len(p) for p in cut] == [16] * 4 or len(idx) < 64
        assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(cut, cut[1:]))  # shortest first
    # a step is no sample biased by length: its mean length is the data's, give or take its spread
    means = np.array([lengths[idx].mean() for idx in steps[:-1]])
    assert abs(means.mean() - lengths.mean()) < 3 * lengths.std() / np.sqrt(64 * len(means))
    assert means.std() < 1.5 * lengths.std() / np.sqrt(64)
    flat = [p for cut in parts for p in cut]
    assert padding_fraction(lengths, flat) < 0.6 * padding_fraction(lengths, steps)


def cut_cost(lengths, passes, pass_tokens):
    return sum(len(p) * int(lengths[p].max()) + pass_tokens for p in passes)


def test_a_step_is_cut_into_the_forward_passes_that_cost_least(fish):
    """The Trainer's cut of a step: its chats, no other, shortest first, no pass above max_rows, and
    no cut cheaper: not one pass, not any even cut into sorted parts, not an exhaustive search."""
    lengths = fish.train.lengths
    rng = np.random.default_rng(1)
    for idx in random_batches(len(lengths), 64, rng)[:20]:
        for max_rows, pass_tokens in ((64, 128), (16, 128), (64, 0), (64, 10**6)):
            passes = step_passes(idx, lengths, max_rows, pass_tokens)
            assert sorted(np.concatenate(passes).tolist()) == sorted(idx.tolist())
            assert all(0 < len(p) <= max_rows for p in passes)
            assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(passes, passes[1:]))
            cost = cut_cost(lengths, passes, pass_tokens)
            for k in range(-(-len(idx) // max_rows), 9):
                assert cost <= cut_cost(lengths, sorted_parts(idx, lengths, k), pass_tokens)
        assert len(step_passes(idx, lengths, 64, 10**6)) == 1  # a pass dearer than any padding: one pass
        assert padding_fraction(lengths, step_passes(idx, lengths, 64, 0)) == 0.0  # passes free: no padding
    # exhaustive on a small step: every way to cut 8 sorted chats
    small = np.array([5, 0, 7, 3, 1, 6, 2, 4])
    toy = np.array([3, 50, 4, 9, 10, 40, 41, 12])
    best = min(cut_cost(toy, [small[np.argsort(toy[small], kind="stable")][a:b] for a, b in zip((0,) + c, c + (8,))], 20)
               for r in range(8) for c in itertools.combinations(range(1, 8), r))
    assert cut_cost(toy, step_passes(small, toy, 8, 20), 20) == best
    assert step_passes(np.array([], np.int64), toy, 8) == []


def test_collate_masks_reply_and_end_only():
    ds = load_dataset(MINI_CFG, use_cache=False)
    idx = np.arange(8)
    inputs, targets, mask = collate(ds.train, idx, ds.tokenizer.pad_id, n_ctx=128)
    assert inputs.shape == targets.shape == mask.shape
    assert np.array_equal(inputs[:, 1:], targets[:, :-1])
    for row, i in enumerate(idx):
        ids, start = ds.train.chat(i), ds.train.reply_start[i]
        assert np.array_equal(targets[row][mask[row]], ids[start:])  # reply tokens + end token
        assert ds.tokenizer.decode(targets[row][mask[row]]) == ds.chats.train[i].reply
    assert not mask[targets == ds.tokenizer.pad_id].any()
    _, _, all_mask = collate(ds.train, idx, ds.tokenizer.pad_id, n_ctx=128, reply_only=False)
    assert all_mask.sum() == (ds.train.lengths[idx] - 1).sum()


@pytest.mark.parametrize("reply_only", [True, False])
def test_count_targets_is_what_collate_masks(reply_only):
    """Every rank counts the targets of the whole global batch without collating the others' chats."""
    ds = load_dataset(MINI_CFG)
    rng = np.random.default_rng(0)
    for n_ctx in (8, 128):
        idx = rng.choice(len(ds.train), 16, replace=False)
        _, _, mask = collate(ds.train, idx, ds.tokenizer.pad_id, n_ctx, reply_only)
        assert count_targets(ds.train, idx, n_ctx, reply_only) == int(mask.sum())


def test_train_chats_stay_on_disk_until_read():
    ds = load_dataset(MINI_CFG)
    assert isinstance(ds.train.tokens, np.memmap) and isinstance(ds.chats.train, ChatFile)
    chats = list(ds.chats.train)
    assert len(chats) == len(ds.chats.train) == len(ds.train)
    assert ds.chats.train[-1] == chats[-1] and ds.chats.train[3:5] == chats[3:5]
    assert ds.tokenizer.decode(ds.train.chat(7)[ds.train.reply_start[7]:]) == chats[7].reply
