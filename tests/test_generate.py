"""Generation: the KV cache changes nothing but speed; sampling knobs; long prompts."""

import warnings

import pytest
import torch

from guppy.model.generate import generate, sample_next


def test_greedy_is_identical_with_and_without_the_cache(tiny_model):
    prompt = torch.randint(3, 512, (10,)).tolist()
    cached = generate(tiny_model, prompt, max_new_tokens=40, temperature=0)
    plain = generate(tiny_model, prompt, max_new_tokens=40, temperature=0, use_kv_cache=False)
    assert cached == plain and len(cached) == 40


def test_sampling_is_repeatable_with_a_seed(tiny_model):
    prompt = [5, 6, 7]
    a = generate(tiny_model, prompt, 20, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    b = generate(tiny_model, prompt, 20, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    assert a == b


def test_stops_at_the_end_token(tiny_model):
    prompt = [5, 6, 7]
    first = generate(tiny_model, prompt, 5, temperature=0)
    stop = first[2]
    assert generate(tiny_model, prompt, 5, temperature=0, stop_token=stop) == first[:first.index(stop) + 1]


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([5.0, 4.0, 1.0, 0.0])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(200)} == {0, 1}
    # p(0) ~ 0.72: with top_p 0.5 only the first token is kept
    assert {sample_next(logits, 1.0, top_p=0.5, generator=g) for _ in range(50)} == {0}
    assert sample_next(logits, 0.0) == 0


def test_hooks_fire_during_generation(tiny_model):
    seen = []
    with tiny_model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(x.shape))]):
        generate(tiny_model, [5, 6, 7], max_new_tokens=3, temperature=0)
    assert seen[0] == (1, 4, 3, 3) and seen[1] == (1, 4, 1, 4) and len(seen) == 3


def test_long_prompt_keeps_its_end_with_a_warning_and_runs_past_the_context(tiny_model):
    prompt = torch.randint(3, 512, (100,)).tolist()
    with pytest.warns(UserWarning, match="longer than the context"):
        out = generate(tiny_model, prompt, max_new_tokens=10, temperature=0)
    assert len(out) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generate(tiny_model, prompt[-64:], max_new_tokens=10, temperature=0) == out  # fits: no warning
        long = generate(tiny_model, [5], max_new_tokens=100, temperature=0)  # fills 64 positions and slides
    assert len(long) == 100
    assert long == generate(tiny_model, [5], max_new_tokens=100, temperature=0, use_kv_cache=False)


def test_greedy_batch_gives_each_prompt_what_generate_gives_it():
    """Prompts of one length decoded together, others alone, one too long for the context through
    generate's sliding window: every reply as generate(temperature=0) gives it, stop token included."""
    import torch

    from guppy.config import model_preset
    from guppy.model.generate import generate, greedy_batch
    from guppy.model.transformer import GuppyLM

    torch.manual_seed(0)
    model = GuppyLM(model_preset("tiny")).eval()
    prompts = [[1, 5, 9], [2, 7, 3], [4], [8, 8, 8, 8, 8], list(range(10, 70)), [3, 1, 4]]
    stop = int(model(torch.tensor([[1, 5, 9]]))[0, -1].argmax())  # the first prompt stops at once
    got = greedy_batch(model, prompts, max_new_tokens=12, stop_token=stop)
    want = [generate(model, p, max_new_tokens=12, temperature=0.0, stop_token=stop) for p in prompts]
    assert got == want and got[0] == [stop] and max(map(len, got)) == 12
    with pytest.raises(ValueError, match="at least one prompt token"):
        greedy_batch(model, [[1], []])
