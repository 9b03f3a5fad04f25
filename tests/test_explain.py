"""guppy.explain: one reply walked through, checked against the probes that compute the same numbers
(probes/attribution.py, probes/logit_lens.py and its CSV), the recorder's stored logit lens, plain
forwards and GuppyLM's own forward; captions follow their numbers; every kind of run explains."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from guppylm_files import TINY, guppylm_forward, series_run  # noqa: F401

import guppy
from guppy.analysis import captions as C
from guppy.analysis.explain import Contribution, Explanation, Guess, Head, Layer, Prediction, explain_model
from guppy.model.generate import generate
from guppy.run import format as R
from guppy.run.reader import RunError

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "hi guppy"


def load_probe(name: str):
    spec = importlib.util.spec_from_file_location(f"probe_{name}", ROOT / "probes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tiny_recorded_run):
    return guppy.open_run(tiny_recorded_run)


@pytest.fixture(scope="module")
def latest(run) -> Explanation:
    return guppy.explain(run, PROMPT)


# ---- the numbers are the probes' numbers ---------------------------------------------------------


def test_explain_agrees_with_the_attribution_and_logit_lens_probes(run, latest):
    e, model = latest, run.model(latest.step)
    seq = torch.tensor(latest.token_ids + latest.reply_ids[:-1])
    N = len(e.predictions)
    positions = torch.tensor([p.position for p in e.predictions])
    targets = torch.tensor(e.reply_ids)
    rows = seq.expand(N, -1)  # one row per reply token: the probe's own batch layout, each its own forward
    attribution, lens = load_probe("attribution"), load_probe("logit_lens")
    for centered, field in ((False, "logit"), (True, "vs_mean")):
        terms, labels, bias, logit = attribution.attribute(model, rows, positions, targets, centered=centered)
        for i, pred in enumerate(e.predictions):
            mine = dict(pred.components())
            assert list(mine) == labels + ["ln bias"]
            got = [getattr(mine[label], field) for label in labels]
            np.testing.assert_allclose(got, terms[i].numpy(), atol=1e-4)
            assert getattr(mine["ln bias"], field) == pytest.approx(float(bias[i]), abs=1e-5)
            assert getattr(pred.total, field) == pytest.approx(float(logit[i]), abs=1e-4)
    _, tops = lens.lens(model, rows, torch.ones(N, seq.numel() - 1, dtype=torch.bool), positions)  # (P, N, 5)
    for i, pred in enumerate(e.predictions):
        mine = [pred.embed_lens] + [layer.lens for layer in pred.layers]
        assert [[g.token for g in guesses] for guesses in mine] == tops[:, i].tolist()


def test_the_logit_lens_matches_the_probes_csv_and_the_recorders_snapshot(run, tmp_path):
    step = max(run.snapshot_files)
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    assert load_probe("logit_lens").main(["--run", str(copy), "--chats", "4", "--show", "2"]) == 0
    top = pd.read_csv(copy / R.PROBE_OUTPUTS_DIR / "logit_lens_top.csv")
    decode = run.tokenizer.decode
    for prompt, rows in top.groupby("prompt", sort=False):
        e = guppy.explain(run, prompt, step=step, max_new_tokens=1)
        mine = [e.predictions[0].embed_lens] + [layer.lens for layer in e.layers]
        assert rows.top.tolist() == [" | ".join(repr(decode([g.token])) for g in guesses) for guesses in mine]
    w = run.watch  # the recorder's own forward on the watch set: lens/top at the last prompt position
    stored = run.read(R.LENS_TOP, step)  # (P, K, T, 5)
    k = next(j for j, i in enumerate(w.subset) if w.kind[i] == "chat")
    i = int(w.subset[k])
    e = guppy.explain(run, _user(w.text[i]), step=step, max_new_tokens=1)
    assert list(e.token_ids) == w.tokens[i, :w.reply_start[i]].tolist()
    mine = [e.predictions[0].embed_lens] + [layer.lens for layer in e.layers]
    assert [[g.token for g in guesses] for guesses in mine] == stored[:, k, w.reply_start[i] - 1].tolist()


def _user(chat_text: str) -> str:
    """The user's words of a chat the watch set holds as text."""
    import re

    return re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", chat_text, flags=re.S).group(1)


def test_the_reply_is_greedy_and_each_token_is_read_where_it_was_predicted(run, latest):
    model, tok = run.model(latest.step), run.tokenizer
    ids = tok.encode_prompt(PROMPT)
    assert list(latest.token_ids) == ids and latest.tokens == tuple(tok.decode([t], skip_special=False) for t in ids)
    assert list(latest.reply_ids) == generate(model, ids, 32, temperature=0.0, stop_token=tok.end_id)
    assert latest.reply == tok.decode(latest.reply_ids)
    start, end = latest.prompt_span
    assert tok.decode(ids[start:end]) == PROMPT
    for i in (0, len(latest.predictions) - 1):
        pred = latest.predictions[i]
        ctx = torch.tensor([latest.context_ids(i)])  # the model on exactly what it had read, alone
        with torch.no_grad():
            logits, cache = model.run_with_cache(ctx, names="blocks.*.attn.hook_pattern")
        probs = logits[0, -1].softmax(-1)
        assert pred.position == ctx.shape[1] - 1
        assert pred.said.token == latest.reply_ids[i] == pred.next_token[0].token == int(probs.argmax())
        assert [g.prob for g in pred.next_token] == pytest.approx(probs.topk(5).values.tolist(), abs=1e-5)
        for layer in pred.layers:
            for head in layer.heads:
                want = cache[f"blocks.{layer.index}.attn.hook_pattern"][0, head.head, -1]
                np.testing.assert_allclose(head.attention, want.numpy(), atol=1e-5)
                assert head.sources[0][0] == int(want.argmax()) and head.sources[0][1] == pytest.approx(float(want.max()))


def test_contributions_add_up_to_the_logit(latest):
    for pred in latest.predictions:
        parts = [c for _, c in pred.components()]
        assert sum(c.logit for c in parts) == pytest.approx(pred.total.logit, abs=1e-3)
        assert sum(c.vs_mean for c in parts) == pytest.approx(pred.total.vs_mean, abs=1e-3)


# ---- captions come from the numbers -----------------------------------------------------------------


def planted(weight: float, push: float, mlp: float, lens_token: int = 7, att=None) -> Explanation:
    """A one-layer, two-head explanation with numbers chosen here: head L0H1 looks from `hungry`
    (position 3) back to `are` (position 1) with `weight` and pushes `food` by `push`."""
    tokens = ("<s>", "are", "you", "hungry")
    food, the = Guess(7, "food", 0.6), Guess(8, "the", 0.2)
    att = np.array(att or [0.05, weight, (0.95 - weight) / 2, (0.95 - weight) / 2], np.float32)
    heads = (Head(0, 0, np.array([1, 0, 0, 0], np.float32), ((0, 1.0),), Contribution(0.05, 0.02)),
             Head(0, 1, att, tuple((int(j), float(att[j])) for j in np.argsort(-att, kind="stable")[:3]),
                  Contribution(push + 1, push)))
    lens = (Guess(lens_token, "food" if lens_token == 7 else "the", 0.3),)
    layer = Layer(0, heads, Contribution(0.0, 0.0), Contribution(mlp + 1, mlp), lens)
    pred = Prediction(3, food, (food, the), (the,), (layer,), Contribution(0.1, 0.01), Contribution(0.0, 0.0),
                      Contribution(0.0, 0.0), Contribution(3.0, 2.0))
    return Explanation("", 5, "are you hungry", (1, 2, 3, 4), tokens, (1, 4), (7,), "food", (pred,), 32, "learned",
                       "pre", 99, None)


def test_a_layer_caption_says_what_its_numbers_say():
    c = C.layer_caption(planted(0.71, 1.2, -0.3), 0, planted(0.71, 1.2, -0.3).layers[0])
    assert c.text == ("Layer 0: head L0H1 looked from `hungry` mostly back to `are` and pushed `food` up. "
                      "The MLP pushed `food` down slightly. If the fish stopped here it would say `food`, already "
                      "what it will say.")
    assert "(0.71)" in c.numbers and "(+1.20)" in c.numbers and "(-0.30)" in c.numbers and "(30%)" in c.numbers
    other = planted(0.4, -2.5, 0.02, lens_token=8)  # other numbers, other words
    c = C.layer_caption(other, 0, other.layers[0])
    assert "partly back to `are`" in c.text and "pushed `food` down strongly" in c.text
    assert "The MLP barely moved it" in c.text and "say `the`" in c.text and "already" not in c.text
    weak = planted(0.26, 0.05, 0.0, att=[0.28, 0.26, 0.24, 0.22])
    assert "spread its attention from `hungry` (most on `<s>`)" in C.layer_caption(weak, 0, weak.layers[0]).text
    assert "no head moved `food` much" in C.layer_caption(weak, 0, weak.layers[0]).text


def test_captions_walk_the_forward_pass_in_order(latest, run):
    L = run.model_config.n_layers
    for i in (0, len(latest.predictions) - 1):
        caps = latest.captions(i)
        assert [c.title for c in caps] == ["Tokens", "Embedding", *[f"Layer {l}" for l in range(L)], "Output", "Reply"]
        assert [c.layer for c in caps[2:2 + L]] == list(range(L))
        said = C.q(latest.predictions[i].said.text)
        assert all(said in c.text for c in caps[2:2 + L])  # each layer says what it did to the said token
        assert all(c.text and len(c.numbers) > len(c.text) for c in caps[1:-1])
    with pytest.raises(IndexError, match="the reply has"):
        latest.captions(len(latest.predictions))


# ---- two steps --------------------------------------------------------------------------------------


def test_compare_splits_the_change_between_components_exactly(run, latest):
    first = guppy.explain(run, PROMPT, step=min(run.checkpoint_steps))
    assert first.reply_ids != latest.reply_ids  # a random fish says something else
    change = first.compare(latest)
    j = change.first_difference
    assert first.reply_ids[:j] == latest.reply_ids[:j] and first.reply_ids[j] != latest.reply_ids[j]
    b, a = latest.reply_ids[j], first.reply_ids[j]

    def margin(step):  # logit(b) - logit(a) from a plain forward of each model
        with torch.no_grad():
            out = run.model(step)(torch.tensor([latest.context_ids(j)]))[0, -1]
        return float(out[b] - out[a])

    assert sum(d for _, d in change.components) == pytest.approx(margin(latest.step) - margin(first.step), abs=1e-3)
    leader = C.component_words(change.components[0][0]) if change.components[0][1] > 0 else None
    assert change.text.startswith(f"At step {first.step} it said ") and f"at step {latest.step}" in change.text
    if leader:
        assert f"the change came from {leader}" in change.text
    same = latest.compare(latest)
    assert same.first_difference is None and "says the same" in same.text


# ---- every kind of run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory):
    from conftest import tiny_train_config

    from guppy.train.trainer import start_run

    out = {}
    for name, flags in {"rotary": dict(positional="rotary"), "post": dict(norm="post", positional="none")}.items():
        cfg = tiny_train_config(tmp_path_factory.mktemp(name), steps=6, run_name=name, eval_prompts=0, record=True,
                                record_inputs=3, **flags)  # recorded: a checkpoint at every snapshot, step 0 too
        trainer = start_run(cfg, show_progress=False)
        assert trainer.fit() == "finished"
        out[name] = trainer.run_dir
    return out


def test_a_post_ln_run_explains_attention_and_lens_and_says_why_not_contributions(variant_runs):
    e = guppy.explain(variant_runs["post"], PROMPT, max_new_tokens=4)
    assert e.attribution and "needs a pre-LN model" in e.attribution
    pred = e.predictions[0]
    assert pred.embed is None and pred.components() == [] and all(l.mlp is None for l in pred.layers)
    assert all(abs(float(h.attention.sum()) - 1) < 1e-4 for l in pred.layers for h in l.heads)
    caps = e.captions()
    assert sum(c.layer is not None for c in caps) == len(pred.layers)
    assert "needs a pre-LN model" in caps[-2].text and "only the causal mask" in caps[1].text
    first = guppy.explain(variant_runs["post"], PROMPT, step=0, max_new_tokens=4)
    assert "cannot be read off" in first.compare(e).text and "logit lens" in first.compare(e).text


def test_a_rotary_run_has_no_position_term_and_says_so(variant_runs):
    e = guppy.explain(variant_runs["rotary"], PROMPT, max_new_tokens=4)
    assert e.attribution is None and e.predictions[0].pos_embed is None
    assert [label for label, _ in e.predictions[0].components()][:2] == ["embed", "L0H0"]
    assert "(rotary)" in e.captions()[1].text and "no contribution of its own" in e.captions()[1].text


def test_an_imported_guppylm_checkpoint_explains_at_every_step_as_guppylm_computes(series_run):
    path, states = series_run
    r = guppy.open_run(path)
    assert not r.snapshot_files and r.checkpoint_steps == sorted(states)  # no guppy-record yet
    for step in r.checkpoint_steps:
        e = guppy.explain(r, "Hi Guppy", step=step, max_new_tokens=3)
        logits = guppylm_forward(states[step], TINY, torch.tensor([e.context_ids(0)]))[0, -1]
        assert [g.prob for g in e.next_token] == pytest.approx(logits.softmax(-1).topk(5).values.tolist(), abs=1e-4)
        assert e.step == step and len(e.layers) == TINY["n_layers"]


def test_a_run_recorded_after_the_fact_explains(tiny_run, tmp_path):
    from guppy.record.posthoc import record_run

    path = tmp_path / "posthoc"
    shutil.copytree(tiny_run, path)
    before = guppy.explain(path, PROMPT, max_new_tokens=4)  # checkpoints only
    record_run(path, full_inputs=3, show_progress=False)
    after = guppy.explain(path, PROMPT, max_new_tokens=4)
    assert guppy.open_run(path).snapshot_files and after.reply_ids == before.reply_ids


# ---- bad input ----------------------------------------------------------------------------------------


def test_bad_input_is_one_clear_error(run, latest):
    with pytest.raises(RunError, match=r"no checkpoint 12345; have steps 0, "):
        guppy.explain(run, PROMPT, step=12345)
    with pytest.raises(ValueError, match=r"this model reads at most 64"):
        guppy.explain(run, "fish " * 100)
    with pytest.raises(ValueError, match="at least 1"):
        explain_model(run.model(latest.step), run.tokenizer, PROMPT, k=0)


# ---- docs/walkthrough.md stays true ---------------------------------------------------------------

PAGE = (ROOT / "docs" / "walkthrough.md").read_text()


def test_the_pages_python_example_runs(tiny_recorded_run, capsys):
    import re

    (code,) = re.findall(r"```python\n(.*?)```", PAGE, re.S)
    assert '"runs/demo"' in code
    exec(compile(code.replace('"runs/demo"', repr(str(tiny_recorded_run))), "docs/walkthrough.md", "exec"), {})
    out = capsys.readouterr().out
    assert "Layer 1:" in out and ("the change came from" in out or "says the same" in out)


def test_the_pages_training_command_runs(tmp_path):
    import shlex

    from guppy.train.trainer import main

    (line,) = [line for line in PAGE.splitlines() if line.startswith(".venv/bin/guppy-train ")]
    args = shlex.split(line)[1:] + ["--steps", "2", "--record-every", "1", "--runs-dir", str(tmp_path), "--quiet"]
    assert main(args) == 0  # the same flags, two steps of them
    assert guppy.open_run(tmp_path / "fish-tiny").checkpoint_steps == [0, 1, 2]
