"""guppy-chat and guppy-eval on a tiny trained run: edge cases of real use."""

import os
import signal
import subprocess
import sys
import time

import pytest

from guppy.chat import Chatter
from guppy.data.dataset import data_config, load_dataset
from guppy.evaluate import judge, persona_eval
from guppy.run.reader import load_eval_data, load_for_inference
from guppy.run.writer import read_train_config


def chat_cli(*args, input=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "guppy.chat", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, env=os.environ | {"PYTHONPATH": os.getcwd()})


@pytest.fixture(scope="module")
def bot(tiny_run):
    model, tok, _ = load_for_inference(tiny_run)
    return Chatter(model, tok, temperature=0.0, max_tokens=16)


def test_uppercase_prompt_answers_like_lowercase(bot):
    assert bot.reply("HELLO PEBBLE") == bot.reply("hello pebble")


def test_very_long_input_is_truncated_not_fatal(bot):
    text = "tell me about the river " * 200
    answer = bot.reply(text)
    assert bot.truncated > 0 and isinstance(answer, str)
    assert len(bot.prompt_ids(text)) + bot.max_tokens <= bot.model.cfg.n_ctx


def test_one_shot_prompts(tiny_run):
    r = chat_cli("--run", str(tiny_run), "-p", "hello pebble", "-p", "", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("you: ") == 2 and "pebble: ..." in r.stdout  # the run's persona answers


def test_interactive_skips_empty_lines_and_ends_on_eof(tiny_run):
    r = chat_cli("--run", str(tiny_run), "--temperature", "0", input="\n   \nHI THERE\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("pebble: ") == 2  # one answer, then the goodbye on EOF
    assert "bye" in r.stdout and "Traceback" not in r.stderr


def test_ctrl_c_at_the_prompt_leaves_cleanly(tiny_run):
    proc = subprocess.Popen([sys.executable, "-m", "guppy.chat", "--run", str(tiny_run)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": os.getcwd()})
    deadline = time.time() + 60
    out = ""
    while "talking to" not in out and time.time() < deadline:  # wait until it is at the prompt
        out += os.read(proc.stdout.fileno(), 4096).decode()
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "bye" in out + rest and "Traceback" not in err


@pytest.mark.parametrize("args, expected", [
    (["--run", "/nonexistent/run"], "no such run folder"),
    (["--checkpoint", "999"], "no checkpoint '999'"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--max-tokens", "0"], "positive integer"),
])
def test_bad_input_is_one_line(tiny_run, args, expected):
    if "--run" not in args:
        args = ["--run", str(tiny_run), *args]
    r = chat_cli(*args, "-p", "hi")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and expected in r.stderr, r.stderr


def test_never_unpickles(tiny_run, monkeypatch):
    import pickle

    import torch

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, tok, _ = load_for_inference(tiny_run)
    assert Chatter(model, tok, temperature=0).reply("hi") is not None


def test_judge_checks_each_rule():
    kw = ("food",)
    assert judge("is it food?", True, kw)["passed"]
    assert not judge("is it food?", False, kw)["passed"]
    assert not judge("Is it food?", True, kw)["lowercase"]
    assert not judge("is it foodie?", True, kw)["on_topic"]
    assert not judge(" ".join(["food"] * 41), True, kw)["short"]
    assert not judge("", True, kw)["short"]


def test_persona_eval_covers_every_topic_with_heldout_prompts(tiny_run):
    model, tok, _ = load_for_inference(tiny_run)
    persona, chats = load_eval_data(tiny_run)
    result = persona_eval(model, tok, persona, chats, per_topic=2, max_new_tokens=24)
    assert set(result.per_topic()) == set(persona.topics)  # the mini persona holds out one prompt per topic
    assert len(result.rows) == len({(c.topic, c.prompt) for c in chats if c.heldout_prompt})
    data = load_dataset(data_config(read_train_config(tiny_run)))
    assert not {r["prompt"] for r in result.rows} & {c.prompt for c in data.chats.train}
    # the eval at snapshots asks a few topics spread over all, the same ones each time, as the full eval
    few = persona_eval(model, tok, persona, chats, per_topic=2, max_new_tokens=24, topics=2)
    names = sorted(persona.topics)
    assert sorted(few.per_topic()) == [names[0], names[round(len(names) / 2)]]
    assert [r for r in result.rows if r["topic"] in few.per_topic()] == few.rows
